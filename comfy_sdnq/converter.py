"""Convert dense models to SDNQ, one layer at a time.

    report = comfy_sdnq.convert("FLUX.1-dev/", "FLUX.1-dev-SDNQ-uint4/", weights_dtype="uint4", use_svd=True)
    report = comfy_sdnq.convert("flux1-dev.safetensors", "flux1-dev-sdnq.safetensors", weights_dtype="int8")

Inputs: a diffusers pipeline folder (model_index.json), one component folder (config.json +
*.safetensors, sharded or not), or a single .safetensors file (a ComfyUI checkpoint,
diffusion model or text encoder, or a diffusers component's weights). Outputs: a folder
sdnq, diffusers and comfy_sdnq read (folder input, folder output), or one .safetensors
file with the config in __metadata__["sdnq_config"] (output path ending in .safetensors).

Which layers are quantized follows sdnq 0.2.8's post-load quantization: Linear layers
(Conv and Embedding only with quant_conv / quant_embedding) with float weights, at least
minimum_allowed_numel elements and minimum_allowed_channel_size input channels, not in
modules_to_not_convert, which by default (add_skip_keys) also holds sdnq's per-model skip
list (input/output projections, embedders, norms). With use_dynamic_quantization each
layer takes the first type, from weights_dtype up sdnq's type order, whose relative
error (MSE / variance) is within dynamic_loss_threshold; a layer no type reaches stays dense.

Peak memory is one layer beyond the mapped input: tensors are read from the memory-mapped
files, quantized (on the GPU when there is one) and streamed to a temporary file, which is
renamed into place when complete. A failure leaves no output behind.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import torch

from . import dtypes, layout
from .config import OPTION_NAMES, QuantConfig, match_module
from .errors import SdnqError, SdnqFormatError, SdnqUnsupportedError
from .files import CONFIG_KEY, SDNQ_VERSION, _read_json
from .format import plan_layer
from .quantizer import quantize_plan
from .safetensors_io import SafetensorsFile
from .stream_writer import StreamWriter

# sdnq 0.2.8 common_skip_keys: used for models without a per-class list
COMMON_SKIP = (
    ".time_embed", ".context_embedder", ".condition_embedder", ".x_embedder", ".t_embedder", ".y_embedder",
    ".proj_in", ".emb_in", ".txt_in", ".img_in", ".vid_in", ".proj_out", ".norm_out", ".emb_out", ".txt_out",
    ".img_out", ".vid_out", ".final_layer", "multi_modal_projector", "time_text_embed", "patch_embedding",
    "patch_embed", "patch_emb", "lm_head", "wte",
)
# sdnq 0.2.8 module_skip_keys_dict, for the model classes comfy_sdnq targets
CLASS_SKIP = {
    "FluxTransformer2DModel": ("single_transformer_blocks.0.norm.linear.weight", "time_text_embed", "time_embed",
                               "context_embedder", "x_embedder", ".proj_out", "norm_out"),
    "Flux2Transformer2DModel": ("double_stream_modulation_img", "double_stream_modulation_txt",
                                "single_stream_modulation", "time_guidance_embed", "context_embedder", "x_embedder",
                                ".proj_out", "norm_out"),
    "ChromaTransformer2DModel": ("distilled_guidance_layer", "time_text_embed", "context_embedder", "x_embedder",
                                 ".proj_out", "norm_out"),
    "QwenImageTransformer2DModel": ("transformer_blocks.0.img_mod.1.weight", "time_text_embed", "txt_in", "img_in",
                                    "proj_out", "norm_out"),
    "WanTransformer3DModel": ("scale_shift_table", "patch_embedding", "condition_embedder", "proj_out", "norm_out"),
    "Lumina2Transformer2DModel": ("layers.0.norm1.linear.weight", "time_caption_embed", "x_embedder", "norm_out"),
    "ZImageTransformer2DModel": ("layers.0.adaLN_modulation.0.weight", "t_embedder", "cap_embedder",
                                 "siglip_embedder", "all_x_embedder", "all_final_layer"),
}
CLASS_SKIP["LongCatImageTransformer2DModel"] = CLASS_SKIP["FluxTransformer2DModel"]
CLASS_SKIP["ChronoEditTransformer3DModel"] = CLASS_SKIP["WanTransformer3DModel"]
# the same layers under ComfyUI's key names (Flux, Chroma, Flux.2, Qwen-Image, Wan, Lumina/Z-Image)
COMFY_SKIP = (
    "img_in", "txt_in", "time_in", "vector_in", "guidance_in", "final_layer", "distilled_guidance_layer",
    "double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation", "time_text_embed",
    "txt_norm", "patch_embedding", "text_embedding", "time_embedding", "time_projection", "head", "img_emb",
    "x_embedder", "t_embedder", "cap_embedder", "norm_out", "proj_out",
)
# ComfyUI checkpoint sections: (key prefix, role); VAEs are never quantized
COMFY_SECTIONS = (("model.diffusion_model.", "model"), ("first_stage_model.", "vae"), ("vae.", "vae"),
                  ("cond_stage_model.", "text"), ("conditioner.embedders.", "text"), ("text_encoders.", "text"))
# the last module-name part of an embedding table in a file without a model class
EMBEDDING_NAMES = {"embed", "embed_tokens", "wte", "wpe", "shared", "token_embedding", "position_embedding", "word_embeddings",
                   "position_embeddings", "token_type_embeddings", "tok_embeddings", "embedding", "embeddings"}
_CONV = {3: "Conv1d", 4: "Conv2d", 5: "Conv3d"}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_VAE_CLASSES = ("Autoencoder", "VQModel", "AsymmetricAutoencoder", "ConsistencyDecoder")


# types dynamic quantization never picks (32-bit, bfloat16, and fp8 variants without an sdnq order)
_NOT_DYNAMIC = {"bfloat16", "float32", "int32", "uint32", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"}


def weights_dtype_order() -> list[str]:
    """sdnq's dynamic-quantization order: by bits; at each width the signed family (int,
    then signed floats) before the unsigned one (uint, then unsigned floats)"""
    def key(t):
        return (t.bits, t.is_unsigned, not t.is_integer, t.id)
    return [t.name for t in sorted(dtypes.TYPES, key=key) if t.name not in _NOT_DYNAMIC]


@dataclass
class LayerReport:
    key: str
    shape: tuple
    dtype: str            # SDNQ type name, or "dense"
    group_size: int       # > 0 grouped, -1 row-wise, -2 tensor-wise, 0 dense
    svd_rank: int
    nbytes: int           # bytes written for this layer (codes and side tensors)
    dense_nbytes: int     # bytes of the same weight in bf16
    error: float          # ||dequantized - source|| / ||source||, 0 for dense layers
    reason: str = ""      # why a layer stayed dense


@dataclass
class ConvertReport:
    source: str
    output: str
    layers: list[LayerReport] = field(default_factory=list)
    other_nbytes: int = 0     # tensors copied as they are
    seconds: float = 0.0
    device: str = "cpu"

    @property
    def quantized(self) -> list[LayerReport]:
        return [r for r in self.layers if r.dtype != "dense"]

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.layers) + self.other_nbytes

    @property
    def dense_nbytes(self) -> int:
        return sum(r.dense_nbytes for r in self.layers) + self.other_nbytes


# ---------------------------------------------------------------------------
# what each weight is


@dataclass
class _Model:
    """what the converter knows of one model: layer classes by weight key, skip patterns"""
    classes: dict = field(default_factory=dict)   # "<module>.weight" -> class name ("" when unknown)
    skips: list = field(default_factory=list)
    class_name: str = ""


def _module_classes(folder: str, config: dict) -> _Model | None:
    """instantiate the model class of a diffusers / transformers component on the meta
    device to learn its layer classes and sdnq's skip list; None when the library or
    class is not available (the converter then goes by tensor shapes and names)"""
    try:
        if "_class_name" in config:
            import diffusers
            cls = getattr(diffusers, config["_class_name"], None)
            if cls is None:
                return None
            with torch.device("meta"):
                model = cls.from_config(config)
        elif config.get("architectures"):
            import transformers
            cls = getattr(transformers, config["architectures"][0], None)
            if cls is None:
                return None
            cfg = transformers.AutoConfig.from_pretrained(folder)
            with torch.device("meta"):
                model = cls._from_config(cfg)
        else:
            return None
    except ImportError:
        return None
    except Exception as exc:  # a config the library rejects: report, do not guess
        raise SdnqFormatError(f"{folder}: cannot build {config.get('_class_name') or config.get('architectures')} "
                              f"from config.json: {exc}") from None
    out = _Model(class_name=type(model).__name__)
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor):
            out.classes[f"{name}.weight" if name else "weight"] = type(mod).__name__
    out.skips = _class_skips(model)
    return out


def _class_skips(model) -> list[str]:
    """sdnq's add_module_skip_keys for a model instance"""
    skips = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    tied = getattr(model, "_tied_weights_keys", None)
    if isinstance(tied, dict):
        skips += list(tied.keys()) + list(tied.values())
    elif tied:
        skips += list(tied)
    listed = CLASS_SKIP.get(type(model).__name__)
    if listed is not None:
        skips += list(listed)
    else:
        skips += list(COMMON_SKIP)
        skips += list(getattr(model, "_skip_layerwise_casting_patterns", None) or [])
    return skips


def _guess_class(key: str, shape: tuple) -> str:
    """layer class from a weight's shape and name, for files without a model class"""
    if len(shape) == 2:
        parts = key.split(".")
        return "Embedding" if len(parts) >= 2 and parts[-2] in EMBEDDING_NAMES else "Linear"
    return _CONV.get(len(shape), "")


_KIND = {"Linear": "linear", "Embedding": "embedding", "Conv1d": "conv", "Conv2d": "conv", "Conv3d": "conv",
         "ConvTranspose1d": "conv_transpose", "ConvTranspose2d": "conv_transpose", "ConvTranspose3d": "conv_transpose"}
_KIND_OF = {"Gemma4TextScaledWordEmbedding": "embedding"}


def _layer_kind(cls: str) -> str | None:
    if cls in _KIND:
        return _KIND[cls]
    if cls in _KIND_OF:
        return _KIND_OF[cls]
    for base, kind in _KIND.items():  # sdnq wrapper classes: SDNQLinear, ...
        if cls == "SDNQ" + base:
            return kind
    return None


# ---------------------------------------------------------------------------
# converting one set of tensors


class _Converter:
    def __init__(self, qc: QuantConfig, device: torch.device, torch_dtype: torch.dtype | None, progress, report):
        self.qc = qc
        self.device = device
        self.torch_dtype = torch_dtype
        self.progress = progress
        self.report = report
        self.not_convert: list[str] = []   # layers left dense (sdnq records them for its loader)
        self.dtype_dict: dict[str, list[str]] = {}
        self.not_use_matmul: list[str] = []
        self.done = 0
        self.total = 0

    def decide(self, key: str, rel: str, shape: tuple, dtype, cls: str, skips: list[str]) -> str | None:
        """None to quantize, else why the weight stays dense"""
        v = self.qc.values
        kind = _layer_kind(cls)
        if kind is None:
            return f"layer class {cls or 'unknown'}"
        if kind == "embedding" and not v["quant_embedding"]:
            return "embedding (quant_embedding off)"
        if kind in ("conv", "conv_transpose") and not v["quant_conv"]:
            return "convolution (quant_conv off)"
        if dtype not in _FLOATS:
            return f"dtype {dtype}"
        if match_module(rel, self.qc.not_convert) is not None or match_module(rel, skips) is not None:
            return "skip list"
        channels = shape[1] if kind == "conv" else shape[0] if kind == "conv_transpose" else shape[-1]
        if channels < v["minimum_allowed_channel_size"] or math.prod(shape) < v["minimum_allowed_numel"]:
            return "below sdnq's size minimums"
        return None

    def quantize(self, key: str, rel: str, w: torch.Tensor, cls: str):
        """-> (tensors to write under '<module>.<name>', LayerReport) or (None, LayerReport) when dense"""
        kind = _layer_kind(cls)
        torch_dtype = self.torch_dtype or (w.dtype if w.dtype in dtypes.ARITH_DTYPES else torch.bfloat16)
        cfg = self.qc.layer(rel, kind)
        x = w.to(self.device)
        source = x.to(torch.float32)
        steps = (self.qc["svd_steps"], self.qc["codebook_steps"])
        dense = LayerReport(key, tuple(w.shape), "dense", 0, 0, w.numel() * w.element_size(), w.numel() * 2, 0.0)
        if not self.qc["use_dynamic_quantization"]:
            plan = plan_layer(kind, tuple(w.shape), cfg)
            qdata, params = quantize_plan(x, plan, cfg, torch_dtype, *steps)
            qt = layout.make(qdata, params)
            err = _rel_error(qt, source)
        else:
            found = self._dynamic(rel, x, kind, cfg, torch_dtype, source, steps)
            if found is None:
                dense.reason = "no type within dynamic_loss_threshold"
                self.not_convert.append(rel)
                return None, dense
            qt, plan, err = found
        name = plan.wtype.name
        if self.qc.layer(rel, kind).weights_dtype.id != plan.wtype.id:
            self.dtype_dict.setdefault(name, []).append(rel)
        tensors = {"weight": qt._qdata}
        tensors.update({f: getattr(qt.params, f) for f in qt.params._tensor_fields()})
        tensors = {k: t.to("cpu") for k, t in tensors.items()}
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return tensors, LayerReport(key, tuple(w.shape), name, plan.group_size, plan.svd_rank, nbytes,
                                    w.numel() * 2, err)

    def _dynamic(self, rel, x, kind, cfg, torch_dtype, source, steps):
        """sdnq's sdnq_quantize_layer_weight_dynamic: the first type up the order within the threshold"""
        threshold = self.qc["dynamic_loss_threshold"]
        if threshold is None or threshold < 0:
            threshold = 10 ** -(cfg.weights_dtype.bits / 2)
        var = source.std().square().clamp(min=1e-8)
        order = weights_dtype_order()
        base_mm = dtypes.get(_mm_name(cfg.weights_dtype, cfg.quantized_matmul_dtype))
        for name in order[order.index(cfg.weights_dtype.name):]:
            t = dtypes.get(name)
            if cfg.use_codebook and not (t.is_integer and t.is_unsigned):
                continue
            mm = dtypes.get(_mm_name(t, cfg.quantized_matmul_dtype))
            use_qmm = cfg.use_quantized_matmul
            if ((mm.is_integer and not t.is_integer) or (t.bits == mm.bits and t.is_unsigned and not mm.is_integer)
                    or (cfg.weights_dtype.bits <= base_mm.bits and t.bits > mm.bits)):
                use_qmm = False
            c = dataclasses.replace(cfg, weights_dtype=t, use_quantized_matmul=use_qmm)
            plan = plan_layer(kind, tuple(x.shape), c)
            qdata, params = quantize_plan(x, plan, c, torch_dtype, *steps)
            qt = layout.make(qdata, params)
            deq = layout.dequantize(qdata, params, torch.float32)
            loss = float(torch.nn.functional.mse_loss(source, deq.reshape(source.shape)) / var)
            if loss <= threshold:
                if cfg.use_quantized_matmul and not use_qmm:
                    self.not_use_matmul.append(rel)
                return qt, plan, float((deq.reshape(source.shape) - source).norm() / source.norm().clamp(min=1e-30))
        return None

    def run(self, read, keys, shape_of, dtype_of, name_of, class_of, skips, writer_for):
        """convert the tensors `keys` (in order) into writer_for(key).add(...)"""
        for key in keys:
            w_shape, w_dtype = shape_of(key), dtype_of(key)
            rel = name_of(key)
            cls = class_of(key, w_shape) if key.endswith(".weight") and len(w_shape) >= 2 else ""
            reason = self.decide(key, rel, w_shape, w_dtype, cls, skips) if cls else "not a layer weight"
            t = read(key)
            if reason is None:
                tensors, rep = self.quantize(key, rel, t, cls)
                if tensors is not None:
                    prefix = key[: -len(".weight")]
                    for name, v in tensors.items():
                        writer_for(key).add(f"{prefix}.{name}", v)
                    self.report.layers.append(rep)
                    self._tick(key)
                    continue
                self.report.layers.append(rep)
            else:
                if cls and _layer_kind(cls) is not None:  # a layer sdnq would look at: tell its loader
                    self.not_convert.append(rel)
                    self.report.layers.append(LayerReport(key, tuple(w_shape), "dense", 0, 0,
                                                          t.numel() * t.element_size(), t.numel() * 2, 0.0, reason))
                else:
                    self.report.other_nbytes += t.numel() * t.element_size()
            writer_for(key).add(key, t)
            self._tick(key)

    def _tick(self, key):
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, key)

    def config(self, raw: dict) -> dict:
        """the quantization_config to write: the options plus what this run decided per layer"""
        out = json.loads(json.dumps(raw))
        out.setdefault("quant_method", "sdnq")
        out["sdnq_version"] = SDNQ_VERSION
        out["modules_to_not_convert"] = sorted(set(out.get("modules_to_not_convert") or []) | set(self.not_convert))
        dd = {k: list(v) for k, v in (out.get("modules_dtype_dict") or {}).items()}
        for k, v in self.dtype_dict.items():
            dd[k] = sorted(set(dd.get(k, [])) | set(v))
        out["modules_dtype_dict"] = dd
        out["modules_to_not_use_matmul"] = sorted(set(out.get("modules_to_not_use_matmul") or [])
                                                  | set(self.not_use_matmul))
        QuantConfig(out, "the written quantization_config")  # still valid
        return out


def _mm_name(t, requested):
    from .format import matmul_dtype
    return matmul_dtype(t, requested)


def _rel_error(qt, source: torch.Tensor) -> float:
    deq = layout.dequantize(qt._qdata, qt.params, torch.float32).reshape(source.shape)
    return float((deq - source).norm() / source.norm().clamp(min=1e-30))


def _reserve(keys, meta_bytes: int) -> int:
    """header bytes to keep free: every key with its possible side tensors, and the metadata"""
    per = sum(len(k) + 100 + (8 * (len(k) + 110) if k.endswith(".weight") else 0) for k in keys)
    return 4096 + per + 2 * meta_bytes + sum(len(k) + 8 for k in keys) * 4


# ---------------------------------------------------------------------------
# inputs and outputs


def _options(config: dict | None, kwargs: dict) -> tuple[dict, QuantConfig]:
    raw = dict(config or {})
    for k, v in kwargs.items():
        if v is not None:
            raw[k] = v
    raw.setdefault("weights_dtype", "int8")
    raw.setdefault("add_skip_keys", True)
    raw["quant_method"] = "sdnq"
    unknown = set(raw) - set(OPTION_NAMES) - {"quant_method", "add_skip_keys", "is_integer"}
    if unknown:
        raise SdnqError(f"unknown quantization option(s): {', '.join(sorted(unknown))}")
    qc = QuantConfig(raw, "the conversion options")
    if not isinstance(raw["add_skip_keys"], bool):
        raise SdnqError(f"add_skip_keys must be true or false, got {raw['add_skip_keys']!r}")
    if qc["use_codebook"] and not (qc.weights_dtype.is_integer and qc.weights_dtype.is_unsigned):
        raise SdnqUnsupportedError(f"use_codebook needs an unsigned integer weights_dtype, got "
                                   f"{qc.weights_dtype.name!r}")
    return raw, qc


def _weights(folder: str) -> tuple[list[str], str | None]:
    """the .safetensors files of a component folder and the index file, if sharded"""
    names = sorted(os.listdir(folder))
    index = [n for n in names if n.endswith(".safetensors.index.json")]
    files = [n for n in names if n.endswith(".safetensors")]
    if not files:
        other = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".gguf"))]
        raise SdnqUnsupportedError(f"{folder}: no .safetensors weights" + (
            f" ({', '.join(other)} are not read: convert them to safetensors first)" if other else ""))
    return files, (index[0] if index else None)


def _is_sdnq_file(st: SafetensorsFile) -> bool:
    return CONFIG_KEY in st.metadata or any(k.endswith(".scale") and k[:-6] + ".weight" in st for k in st.keys())


def _check_dense(st: SafetensorsFile):
    if _is_sdnq_file(st):
        raise SdnqError(f"{st.path}: already SDNQ-quantized")


def _component_role(config: dict) -> str:
    name = str(config.get("_class_name", ""))
    return "vae" if any(v in name for v in _VAE_CLASSES) else "model"


class _Output:
    """a temporary folder beside the target, renamed into place when complete"""

    def __init__(self, dst: str, overwrite: bool):
        self.dst = os.path.abspath(dst)
        if os.path.exists(self.dst) and not overwrite:
            raise SdnqError(f"{self.dst}: already exists (pass overwrite=True / --overwrite to replace it)")
        parent = os.path.dirname(self.dst)
        if not os.path.isdir(parent):
            raise SdnqError(f"{self.dst}: the folder {parent} does not exist")
        self.tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(self.dst) + "-", dir=parent)

    def commit(self):
        old = moved = None
        try:
            if os.path.exists(self.dst):
                old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(self.dst))
                os.rmdir(old)
                os.replace(self.dst, old)
                moved = old
            os.replace(self.tmp, self.dst)
            moved = None
        except BaseException:
            # interrupted (or failed) between the two renames: the old output goes back
            if moved is not None and not os.path.exists(self.dst):
                os.replace(moved, self.dst)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.unlink(old)

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def _default_device(device):
    if device is not None:
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def convert(src, dst, config: dict | None = None, *, device=None, torch_dtype: torch.dtype | None = None,
            components: list[str] | None = None, overwrite: bool = False, max_shard_size: int = 5 * 1024**3,
            progress=None, **options) -> ConvertReport:
    """Quantize the dense model at `src` to SDNQ at `dst`; returns a ConvertReport.

    config / options: sdnq's quantization options (weights_dtype, group_size, use_svd,
    svd_rank, use_dynamic_quantization, dynamic_loss_threshold, modules_to_not_convert,
    modules_dtype_dict, modules_quant_config, add_skip_keys, quant_conv, ...).
    device: where layers are quantized (default: CUDA when available). torch_dtype: the
    compute dtype recorded for quantized layers (default: each weight's own float dtype).
    components: for pipeline folders, which components to quantize (default: all models
    but the VAE). progress(done, total, key) is called after every tensor."""
    src, dst = os.fspath(src), os.fspath(dst)
    raw, qc = _options(config, options)
    dev = _default_device(device)
    report = ConvertReport(source=src, output=dst, device=str(dev))
    t0 = time.perf_counter()
    if torch_dtype is not None and torch_dtype not in dtypes.ARITH_DTYPES:
        raise SdnqError(f"torch_dtype must be float32, bfloat16 or float16, got {torch_dtype}")
    if os.path.isdir(src):
        if dst.endswith(".safetensors"):
            _folder_to_file(src, dst, raw, qc, dev, torch_dtype, overwrite, progress, report)
        elif os.path.isfile(os.path.join(src, "model_index.json")):
            _pipeline(src, dst, raw, qc, dev, torch_dtype, components, overwrite, max_shard_size, progress, report)
        else:
            out = _Output(dst, overwrite)
            try:
                _component(src, out.tmp, raw, qc, dev, torch_dtype, max_shard_size, progress, report)
                out.commit()
            except BaseException:
                out.abort()
                raise
    elif os.path.isfile(src):
        if not src.endswith(".safetensors"):
            raise SdnqUnsupportedError(f"{src}: only .safetensors files are converted")
        if not dst.endswith(".safetensors"):
            raise SdnqError(f"{dst}: a single-file model converts to a single .safetensors file")
        _file(src, dst, raw, qc, dev, torch_dtype, overwrite, progress, report)
    else:
        raise SdnqError(f"{src}: no such file or directory")
    report.seconds = time.perf_counter() - t0
    return report


class _Collect:
    """a writer that keeps the tensors in memory"""

    def __init__(self):
        self.tensors = {}

    def add(self, key, t):
        self.tensors[key] = t


def quantize_state_dict(sd: dict, config: dict | None = None, *, classes: dict | None = None,
                        skips: list[str] | None = None, name_of=None, device=None,
                        torch_dtype: torch.dtype | None = None, progress=None, **options):
    """Quantize an in-memory state dict by the converter's rules -> (tensors under sdnq's
    key names, the quantization_config to save with them, ConvertReport).

    classes: layer class name by weight key (default: guessed from shapes and names);
    skips: module-name patterns left dense in addition to modules_to_not_convert
    (default: sdnq's common skip list and its ComfyUI-key equivalents when add_skip_keys);
    name_of(key): the name matched against the config's module patterns (default: key)."""
    raw, qc = _options(config, options)
    report = ConvertReport(source="<state dict>", output="<memory>", device=str(_default_device(device)))
    t0 = time.perf_counter()
    if skips is None:
        skips = list(COMMON_SKIP) + list(COMFY_SKIP) if raw.get("add_skip_keys", True) else []
    conv = _Converter(qc, _default_device(device), torch_dtype, progress, report)
    conv.total = len(sd)
    out = _Collect()
    classes = classes or {}
    conv.run(sd.__getitem__, list(sd), lambda k: tuple(sd[k].shape), lambda k: sd[k].dtype, name_of or (lambda k: k),
             lambda k, s: classes.get(k) or _guess_class(k, s), skips, lambda k: out)
    _require_quantized(report)
    report.seconds = time.perf_counter() - t0
    return out.tensors, conv.config(raw), report


def _require_quantized(report: ConvertReport):
    if not report.quantized:
        raise SdnqError(f"{report.source}: no layer to quantize ({len(report.layers)} layer weights, all left dense: "
                        f"is it a model, and do the skip list and size minimums leave anything?)")


def _read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise SdnqFormatError(f"{folder}: no config.json (a model folder needs one; a pipeline folder needs "
                              f"model_index.json)")
    cfg = _read_json(path)
    if not isinstance(cfg, dict):
        raise SdnqFormatError(f"{path}: must be a JSON object")
    if "quantization_config" in cfg:
        raise SdnqError(f"{folder}: already quantized ({cfg['quantization_config'].get('quant_method', '?')}"
                        if isinstance(cfg["quantization_config"], dict) else f"{folder}: already quantized")
    return cfg


def _open_shards(folder: str) -> tuple[list[SafetensorsFile], str | None]:
    files, index = _weights(folder)
    shards = [SafetensorsFile(os.path.join(folder, n)) for n in files]
    for st in shards:
        _check_dense(st)
    return shards, index


def _component(folder, out_dir, raw, qc, dev, torch_dtype, max_shard_size, progress, report):
    """one diffusers / transformers component folder -> an SDNQ folder at out_dir"""
    cfg = _read_config(folder)
    shards, index = _open_shards(folder)
    model = _module_classes(folder, cfg) or _Model()
    skips = model.skips if raw.get("add_skip_keys", True) else []
    if raw.get("add_skip_keys", True) and not model.class_name:
        skips = list(COMMON_SKIP)
    conv = _Converter(qc, dev, torch_dtype, progress, report)
    entries = [(st, k) for st in shards for k in st.keys()]
    conv.total = len(entries)
    stem = _stem(shards[0].path, cfg)
    writers: list[StreamWriter] = []
    reserve = _reserve([k for _, k in entries], 1 << 12)

    def writer_for(key):
        # a new shard once the current one holds max_shard_size bytes (renamed at the end)
        if not writers or writers[-1].nbytes >= max_shard_size:
            writers.append(StreamWriter(os.path.join(out_dir, f"{stem}.part{len(writers)}"), reserve))
        return writers[-1]

    key_st = {k: st for st, k in entries}
    try:
        conv.run(lambda k: key_st[k].get(k), [k for _, k in entries], lambda k: key_st[k].shape(k),
                 lambda k: key_st[k].dtype(k), lambda k: k,
                 lambda k, s: model.classes.get(k) or _guess_class(k, s), skips, writer_for)
        _require_quantized(report)
        names = [f"{stem}.safetensors"] if len(writers) == 1 else \
            [f"{stem}-{i + 1:05d}-of-{len(writers):05d}.safetensors" for i in range(len(writers))]
        weight_map = {}
        for w, n in zip(writers, names):
            weight_map.update({k: n for k in w.header})
            w.path = os.path.join(out_dir, n)
            w.close({"format": "pt"})
    except BaseException:
        for w in writers:
            w.abort()
        raise
    qraw = conv.config(raw)
    if len(names) > 1:
        total = sum(w.nbytes for w in writers)
        _write_json(os.path.join(out_dir, f"{stem}.safetensors.index.json"),
                    {"metadata": {"total_size": total}, "weight_map": weight_map})
    for n in sorted(os.listdir(folder)):  # everything else of the component as it is
        p = os.path.join(folder, n)
        if n == "config.json" or n.endswith(".safetensors") or n.endswith(".safetensors.index.json") or n == index:
            continue
        (shutil.copytree if os.path.isdir(p) else shutil.copy2)(p, os.path.join(out_dir, n))
    cfg = dict(cfg)
    cfg["quantization_config"] = qraw
    _write_json(os.path.join(out_dir, "config.json"), cfg)
    _write_json(os.path.join(out_dir, "quantization_config.json"), qraw)


def _stem(path: str, cfg: dict) -> str:
    base = os.path.basename(path)
    for stem in ("diffusion_pytorch_model", "model"):
        if base.startswith(stem):
            return stem
    return "diffusion_pytorch_model" if "_class_name" in cfg else "model"


def _pipeline(src, dst, raw, qc, dev, torch_dtype, components, overwrite, max_shard_size, progress, report):
    index = _read_json(os.path.join(src, "model_index.json"))
    if not isinstance(index, dict):
        raise SdnqFormatError(f"{src}/model_index.json: must be a JSON object")
    names = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)]
    models = []
    for n in names:
        p = os.path.join(src, n)
        if os.path.isfile(os.path.join(p, "config.json")) and any(f.endswith(".safetensors") for f in os.listdir(p)):
            cfg = _read_json(os.path.join(p, "config.json"))
            if isinstance(cfg, dict) and _component_role(cfg) == "model":
                models.append(n)
    chosen = models if components is None else list(components)
    for c in chosen:
        if c not in names:
            raise SdnqError(f"{src}: no component {c!r} (model_index.json lists {', '.join(names)})")
    if not chosen:
        raise SdnqError(f"{src}: no model component with .safetensors weights to quantize")
    out = _Output(dst, overwrite)
    try:
        for n in sorted(os.listdir(src)):
            p, q = os.path.join(src, n), os.path.join(out.tmp, n)
            if n in chosen:
                os.makedirs(q)
                _component(p, q, raw, qc, dev, torch_dtype, max_shard_size, progress, report)
            elif os.path.isdir(p):
                shutil.copytree(p, q)
            else:
                shutil.copy2(p, q)
        out.commit()
    except BaseException:
        out.abort()
        raise


def _folder_to_file(src, dst, raw, qc, dev, torch_dtype, overwrite, progress, report):
    """a component folder -> one SDNQ .safetensors (diffusers keys; model_config kept)"""
    cfg = _read_config(src)
    shards, _ = _open_shards(src)
    model = _module_classes(src, cfg) or _Model()
    skips = (model.skips or list(COMMON_SKIP)) if raw.get("add_skip_keys", True) else []
    key_st = {k: st for st in shards for k in st.keys()}
    _single(dst, key_st, lambda k: k, lambda k, s: model.classes.get(k) or _guess_class(k, s), lambda k: skips,
            raw, qc, dev, torch_dtype, overwrite, progress, report, {}, cfg)


def _file(src, dst, raw, qc, dev, torch_dtype, overwrite, progress, report):
    """a single .safetensors (ComfyUI checkpoint / diffusion model / text encoder) -> one SDNQ file"""
    st = SafetensorsFile(src)
    _check_dense(st)
    keys = list(st.keys())
    sections = {}
    for k in keys:
        for prefix, role in COMFY_SECTIONS:
            if k.startswith(prefix):
                sections[k] = (prefix, role)
                break
    comfy_keys = bool(sections)
    add = raw.get("add_skip_keys", True)

    def name_of(k):
        p = sections.get(k)
        return k[len(p[0]):] if p else k

    def class_of(k, shape):
        p = sections.get(k)
        if p and p[1] == "vae":
            return ""
        return _guess_class(k, shape)

    skips = (list(COMMON_SKIP) + list(COMFY_SKIP)) if add else []
    meta = {k: v for k, v in st.metadata.items() if k != CONFIG_KEY}
    if not comfy_keys and not any(k.endswith(".weight") and len(st.shape(k)) >= 2 for k in keys):
        raise SdnqError(f"{src}: not a model (no 2-D or larger '.weight' tensors among {len(keys)} tensors)")
    _single(dst, {k: st for k in keys}, name_of, class_of, lambda k: skips, raw, qc, dev, torch_dtype, overwrite,
            progress, report, meta, None)


def _single(dst, key_st, name_of, class_of, skips_of, raw, qc, dev, torch_dtype, overwrite, progress, report,
            meta, model_config):
    dst = os.path.abspath(dst)
    if os.path.exists(dst) and not overwrite:
        raise SdnqError(f"{dst}: already exists (pass overwrite=True / --overwrite to replace it)")
    if not os.path.isdir(os.path.dirname(dst)):
        raise SdnqError(f"{dst}: the folder {os.path.dirname(dst)} does not exist")
    conv = _Converter(qc, dev, torch_dtype, progress, report)
    keys = list(key_st)
    conv.total = len(keys)
    meta_guess = len(json.dumps(raw)) + len(json.dumps(meta)) + len(json.dumps(model_config or {}))
    with StreamWriter(dst, _reserve(keys, meta_guess + sum(len(k) + 4 for k in keys))) as w:
        skips = skips_of(None)
        conv.run(lambda k: key_st[k].get(k), keys, lambda k: key_st[k].shape(k), lambda k: key_st[k].dtype(k),
                 name_of, class_of, skips, lambda k: w)
        body = {"quantization_config": conv.config(raw), "torch_dtype": _dtype_name(torch_dtype, report, key_st)}
        if model_config is not None:
            body["model_config"] = model_config
        _require_quantized(report)
        w.close({**meta, CONFIG_KEY: json.dumps(body), "format": meta.get("format", "pt")})


def _dtype_name(torch_dtype, report, key_st) -> str:
    if torch_dtype is not None:
        return str(torch_dtype).removeprefix("torch.")
    for r in report.quantized:
        dt = key_st[r.key].dtype(r.key)
        if dt in dtypes.ARITH_DTYPES:
            return str(dt).removeprefix("torch.")
    return "bfloat16"


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
