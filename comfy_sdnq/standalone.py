"""The standalone runtime: SDNQ diffusers / transformers models and pipelines, run by
comfy_sdnq's ops, without sdnq.

    from comfy_sdnq import standalone, offload
    model = standalone.load_model("FLUX.1-dev-SDNQ-uint4-svd-r32/transformer", offload="layer")
    pipe = standalone.load_pipeline("FLUX.1-dev-SDNQ-uint4-svd-r32", offload="model")
    image = pipe("a cat", num_inference_steps=28).images[0]
    offload.stats(pipe)            # bytes moved, transfers, copy waits, peak memory

A component folder (config.json naming the class: `_class_name` for diffusers,
`architectures` for transformers) becomes that class, built on the meta device (no
weight initialization), with the file's tensors assigned as its weights: SDNQ layers as
SDNQ QuantizedTensors (their forward runs torch.ops.sdnq), the rest as plain tensors.
Folders without a quantization_config load the same way. A pipeline folder
(model_index.json) gets its SDNQ components from load_model and the others (tokenizers,
schedulers, plain models) from their library's own from_pretrained.

offload: "none" (everything on the device), "model" (components take turns on the
device) or "layer" (transformer blocks streamed compressed); see comfy_sdnq.offload.
diffusers / transformers are imported only when needed.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import re

import torch

from . import files, layout, offload as _offload
from .errors import SdnqError, SdnqFormatError, SdnqUnsupportedError
from .safetensors_io import SafetensorsFile

_KINDS = ((torch.nn.Linear, "linear"), (torch.nn.modules.conv._ConvTransposeNd, "conv_transpose"),
          (torch.nn.modules.conv._ConvNd, "conv"), (torch.nn.Embedding, "embedding"))


def _library(name: str):
    if name not in ("diffusers", "transformers"):
        raise SdnqUnsupportedError(f"components from library {name!r} are not supported (diffusers, transformers)")
    try:
        return __import__(name)
    except ImportError as exc:
        raise SdnqError(f"comfy_sdnq.standalone needs {name} to build this model ({exc})") from None


def _class(library: str, name, where: str):
    lib = _library(library)
    cls = getattr(lib, name, None) if isinstance(name, str) else None
    if not isinstance(cls, type):
        raise SdnqUnsupportedError(f"{where}: unknown class {name!r} (not in {library} {lib.__version__})")
    return cls


def _config(path: str) -> dict:
    cpath = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise SdnqFormatError(f"{path}: not a folder")
    if not os.path.isfile(cpath):
        hint = "; it is a pipeline folder, use load_pipeline" if os.path.isfile(
            os.path.join(path, "model_index.json")) else ""
        raise SdnqFormatError(f"{path}: no config.json, not a diffusers/transformers model folder{hint}")
    cfg = files._read_json(cpath)
    if not isinstance(cfg, dict):
        raise SdnqFormatError(f"{cpath}: must be a JSON object")
    return cfg


def model_class(path) -> tuple[type, str]:
    """(class, library) a component folder's config.json names"""
    path = os.fspath(path)
    cfg = _config(path)
    where = os.path.join(path, "config.json")
    if "_class_name" in cfg:
        return _class("diffusers", cfg["_class_name"], where), "diffusers"
    arch = cfg.get("architectures")
    if isinstance(arch, list) and arch:
        return _class("transformers", arch[0], where), "transformers"
    raise SdnqFormatError(f"{where}: names no model class (no _class_name, no architectures)")


@contextlib.contextmanager
def _meta_parameters(limit: int | None = None, too_many=None):
    """parameters created on the meta device (buffers stay real: some are computed in
    __init__ and not saved); the weights come from the files. More than `limit`
    parameters raise too_many(count): a config that describes a far larger model than its
    files hold fails before building it (a million layers would take gigabytes on meta)."""
    register = torch.nn.Module.register_parameter
    count = 0

    def on_meta(module, name, param):
        nonlocal count
        if param is not None:
            count += 1
            if limit is not None and count > limit:
                raise too_many(count)
            if param.device.type != "meta":
                param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _instantiate(cls, library: str, cfg: dict, path: str, n_tensors: int | None = None) -> torch.nn.Module:
    """the model class built from config.json on the meta device. A config its class cannot
    build, or one describing far more parameters than the files' n_tensors tensors, raises
    SdnqFormatError naming config.json."""
    cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    where = os.path.join(path, "config.json")
    limit = None if n_tensors is None else 2 * n_tensors + 1024  # tied weights count twice; buffers are free

    def too_many(count):
        return SdnqFormatError(f"{where}: {getattr(cls, '__name__', cls)} built from this config has more than "
                               f"{count - 1} parameters, the model's files hold {n_tensors} tensors")

    try:
        with _meta_parameters(limit, too_many):
            if library == "diffusers":
                return cls.from_config(cfg)
            config = cls.config_class.from_dict(cfg)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            return cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    except (SdnqError, ImportError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the class's own complaint about its arguments, whatever its type
        raise SdnqFormatError(f"{where}: {getattr(cls, '__name__', cls)} cannot be built from this config "
                              f"({type(exc).__name__}: {exc})") from exc


def _plain_state_dict(path: str) -> dict:
    """every tensor of a folder's .safetensors files (memory-mapped)"""
    names = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not names:
        other = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        raise SdnqFormatError(f"{path}: no .safetensors files" + (f" (only {', '.join(other)}: pickled checkpoints "
                                                                   "are not read)" if other else ""))
    sd = {}
    for n in names:
        f = SafetensorsFile(os.path.join(path, n))
        for k in f.keys():
            if k in sd:
                raise SdnqFormatError(f"{f.path}, key {k!r}: also in another file of {path}")
            sd[k] = f.get(k)
    return sd


def _is_sdnq_folder(path: str) -> bool:
    if os.path.isfile(os.path.join(path, "quantization_config.json")):
        return True
    cpath = os.path.join(path, "config.json")
    if not os.path.isfile(cpath):
        return False
    qc = files._read_json(cpath).get("quantization_config")
    return isinstance(qc, dict) and qc.get("quant_method", "sdnq") == "sdnq"


def _kinds(model) -> tuple[dict, dict]:
    """weight shapes and layer kinds by key, for the layouts files alone do not pin down"""
    shapes, kinds = {}, {}
    for name, m in model.named_modules():
        w = m._parameters.get("weight")
        kind = next((k for c, k in _KINDS if isinstance(m, c)), None)
        if w is not None and kind is not None:
            key = f"{name}.weight" if name else "weight"
            shapes[key], kinds[key] = tuple(w.shape), kind
    return shapes, kinds


def _fp32_modules(model, library: str, dtype) -> list[str]:
    """module names kept in float32 at this dtype, by each library's rule"""
    if dtype is None or dtype == torch.float32:
        return []
    if library == "diffusers":
        names = getattr(model, "_keep_in_fp32_modules", None) or []
    else:
        names = list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
        if dtype == torch.float16:
            names += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    return [names] if isinstance(names, str) else list(names)


def _tied(model) -> dict:
    """{target key: source key} of tied weights (transformers)"""
    for get in (lambda: model.get_expanded_tied_weights_keys(all_submodels=True),
                lambda: model.all_tied_weights_keys, lambda: model._tied_weights_keys):
        try:
            ties = get()
        except Exception:  # noqa: BLE001 - other transformers versions keep them elsewhere
            continue
        if isinstance(ties, dict):
            return dict(ties)
    return {}


def _assign(model, sd: dict, path: str, library: str, dtype) -> None:
    """the state dict's tensors as the model's parameters and buffers, without copies
    (plain floating tensors cast to dtype, except float32-kept modules)"""
    expected = model.state_dict(keep_vars=True)
    for target, source in _tied(model).items():
        if target not in sd and source in sd:
            sd[target] = sd[source]
        elif source not in sd and target in sd:
            sd[source] = sd[target]
    ignore = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    unexpected = sorted(k for k in sd if k not in expected and not any(p.search(k) for p in ignore))
    missing = sorted(k for k, t in expected.items() if k not in sd and t.device.type == "meta")
    if missing or unexpected:
        def few(keys):
            return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")

        parts = ([f"missing {len(missing)} key(s) of {type(model).__name__}: {few(missing)}"] if missing else []) + \
            ([f"{len(unexpected)} unexpected key(s): {few(unexpected)}"] if unexpected else [])
        raise SdnqFormatError(f"{path}: " + "; ".join(parts))
    keep32 = _fp32_modules(model, library, dtype)
    done = {}  # id(file tensor) -> the tensor as assigned (tied keys share it)
    for key, want in expected.items():
        t = sd.get(key)
        if t is None:
            continue  # a buffer computed in __init__ that the file does not hold
        if tuple(t.shape) != tuple(want.shape):
            raise SdnqFormatError(f"{path}, key {key!r}: shape {tuple(t.shape)} in the file, "
                                  f"{type(model).__name__} expects {tuple(want.shape)}")
        prefix, _, leaf = key.rpartition(".")
        module = model.get_submodule(prefix)
        is_param = leaf in module._parameters
        value = done.get(id(t))
        if value is None:
            value = t
            if not layout.is_sdnq(t) and t.is_floating_point() and dtype is not None:
                target = torch.float32 if any(m in key.split(".") for m in keep32) else dtype
                value = t.to(target)
            if is_param:
                value = _offload.as_param(value)
            done[id(t)] = value
        if is_param:
            module._parameters[leaf] = value if isinstance(value, torch.nn.Parameter) else _offload.as_param(value)
        else:
            module._buffers[leaf] = value.data if isinstance(value, torch.nn.Parameter) else value


def load_model(path, dtype: torch.dtype | None = None, device=None, offload: str = "none", *, model_cls=None,
               **offload_options) -> torch.nn.Module:
    """An (SDNQ) diffusers/transformers component folder as its model class, eval mode.

    dtype: compute dtype (default: the config's torch_dtype, else bfloat16 for SDNQ
    layers and the stored dtype for plain tensors). device: where it runs (default: cuda
    if available). offload: "none", "model" or "layer" (comfy_sdnq.offload.apply; its
    keyword options pass through). model_cls: a ConfigMixin / PreTrainedModel class to
    build instead of the one config.json names."""
    path = os.fspath(path)
    if offload not in _offload.MODES:
        raise SdnqError(f"offload must be one of {', '.join(_offload.MODES)}, got {offload!r}")
    cfg = _config(path)
    if model_cls is not None:
        cls, library = model_cls, "diffusers" if hasattr(model_cls, "from_config") else "transformers"
    else:
        cls, library = model_class(path)
    # the files' headers first (validated, nothing read): their tensor count bounds the model
    src = files.Source(path) if _is_sdnq_folder(path) else None
    plain = _plain_state_dict(path) if src is None else None
    model = _instantiate(cls, library, cfg, path, len(src.keys()) if src is not None else len(plain))
    if src is not None:
        shapes, kinds = _kinds(model)
        sd = files.state_dict(src, dtype, shapes=shapes, kinds=kinds)
        plain_dtype = dtype or src.dtype
    else:
        sd = plain
        plain_dtype = dtype or files._dtype_from(cfg)
    mapping = getattr(model, "_checkpoint_conversion_mapping", None)
    if isinstance(mapping, dict) and mapping:
        renamed = {}
        for k, v in sd.items():
            for pattern, repl in mapping.items():
                k2, n = re.subn(pattern, repl, k)
                if n:
                    k = k2
                    break
            renamed[k] = v
        sd = renamed
    _assign(model, sd, path, library, plain_dtype)
    model.eval()
    model.requires_grad_(False)
    _offload.apply(model, offload, device, **offload_options)
    return model


def _component_folder(root: str, name: str) -> str:
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
        raise SdnqFormatError(f"{root}: model_index.json lists {name!r}, but there is no {name}/ folder")
    return folder


def load_pipeline(path, dtype: torch.dtype | None = None, device=None, offload: str = "none"):
    """A diffusers pipeline folder (model_index.json): SDNQ components through
    load_model, the others through their own from_pretrained; offloading applied to every
    model component (one OffloadGroup in "model" mode, shared OffloadStats)."""
    path = os.fspath(path)
    ipath = os.path.join(path, "model_index.json")
    if not os.path.isfile(ipath):
        hint = "; it is a component folder, use load_model" if os.path.isfile(os.path.join(path, "config.json")) \
            else ""
        raise SdnqFormatError(f"{path}: no model_index.json, not a diffusers pipeline folder{hint}")
    if offload not in _offload.MODES:
        raise SdnqError(f"offload must be one of {', '.join(_offload.MODES)}, got {offload!r}")
    index = files._read_json(ipath)
    if not isinstance(index, dict):
        raise SdnqFormatError(f"{ipath}: must be a JSON object")
    pipe_cls = _class("diffusers", index.get("_class_name"), ipath)
    accepted = inspect.signature(pipe_cls.__init__).parameters
    components = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2:
            continue
        if name not in accepted:
            raise SdnqFormatError(f"{ipath}: {pipe_cls.__name__} takes no component {name!r}")
        library, cname = spec
        if library is None or cname is None:
            components[name] = None
            continue
        cls = _class(library, cname, f"{ipath}, component {name!r}")
        folder = _component_folder(path, name)
        if issubclass(cls, torch.nn.Module):
            if _is_sdnq_folder(folder):
                comp = load_model(folder, dtype, device="cpu")
            else:
                kw = {} if dtype is None else {"torch_dtype" if library == "diffusers" else "dtype": dtype}
                comp = cls.from_pretrained(folder, **kw).eval()
        else:
            comp = cls.from_pretrained(folder)
        components[name] = comp
    try:
        pipe = pipe_cls(**components)
    except TypeError as exc:
        raise SdnqFormatError(f"{ipath}: cannot build {pipe_cls.__name__}: {exc}") from None
    device = torch.device(device) if device is not None else _offload.default_device()
    stats = _offload.OffloadStats(device=str(device))
    group = _offload.OffloadGroup() if offload == "model" else None
    for comp in components.values():
        if isinstance(comp, torch.nn.Module):
            _offload.apply(comp, offload, device, stats=stats, group=group, hint=offload == "model")
    return pipe
