"""SDNQ model files: load them into state dicts of SDNQ QuantizedTensors, save them back.

Two forms are read and written:

* an SDNQ model folder, as sdnq and diffusers/transformers write it: `config.json` (with
  `quantization_config`) and/or `quantization_config.json`, and one or more
  `*.safetensors` shards (with `*.safetensors.index.json` when sharded);
* a single `.safetensors` file whose header `__metadata__["sdnq_config"]` holds JSON:
  {"quantization_config": {...}, "torch_dtype": "bfloat16", "model_config": {...}}
  (comfy_sdnq writes this; a bare quantization_config object is accepted too).

Every error names the file and key.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import torch

from . import dtypes, layout
from .config import QuantConfig
from .errors import SdnqError, SdnqFormatError, SdnqUnsupportedError, SdnqWriteError, where
from .format import KINDS, infer_geometry
from .safetensors_io import ST_NAMES, SafetensorsFile, commit, discard, load_json, write, write_temp

CONFIG_KEY = "sdnq_config"
SIDE_KEYS = ("scale", "zero_point", "svd_up", "svd_down", "scale_2", "scale_zero_point", "zero_point_scale",
             "zero_point_2")
SDNQ_VERSION = "0.2.8"  # the sdnq release whose layout rules comfy_sdnq writes
_DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _read_json(path: str):
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024 * 1024 + 1)
    except OSError as exc:
        raise SdnqFormatError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > 64 * 1024 * 1024:
        raise SdnqFormatError(f"{path}: larger than 64 MiB, not a config")
    return load_json(data, path)


def _dtype_from(cfg: dict | None, default=None):
    if not isinstance(cfg, dict):
        return default
    for key in ("torch_dtype", "dtype", "_pre_quantization_dtype"):
        value = cfg.get(key)
        if isinstance(value, str):
            name = value.removeprefix("torch.")
            if name in _DTYPE_NAMES:
                return _DTYPE_NAMES[name]
    return default


class Source:
    """The files of one SDNQ model and its config."""

    def __init__(self, path):
        path = os.fspath(path)
        self.path = path
        self.model_config = None
        self.dtype = None
        if os.path.isdir(path):
            self._open_folder(path)
        elif os.path.isfile(path):
            self._open_file(path)
        else:
            raise SdnqFormatError(f"{path}: no such file or directory")
        self.key_file = {}
        for f in self.files:
            for key in f.keys():
                if key in self.key_file:
                    raise SdnqFormatError(f"{f.path}, key {key!r}: also in {self.key_file[key].path}")
                self.key_file[key] = f

    def _open_folder(self, path):
        qpath, cpath = os.path.join(path, "quantization_config.json"), os.path.join(path, "config.json")
        if os.path.isfile(cpath):
            self.model_config = _read_json(cpath)
            if not isinstance(self.model_config, dict):
                raise SdnqFormatError(f"{cpath}: must be a JSON object")
        if os.path.isfile(qpath):
            raw, src = _read_json(qpath), qpath
        elif self.model_config is not None and "quantization_config" in self.model_config:
            raw, src = self.model_config["quantization_config"], cpath
        else:
            comps = [d for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))]
            hint = (f"; it is a pipeline folder, load a component ({', '.join(comps)})"
                    if os.path.isfile(os.path.join(path, "model_index.json")) else "")
            raise SdnqFormatError(f"{path}: no SDNQ config (quantization_config.json, or config.json with "
                                  f"quantization_config){hint}")
        self.config = QuantConfig(raw, src)
        self.dtype = _dtype_from(self.model_config)
        index = [f for f in sorted(os.listdir(path)) if f.endswith(".safetensors.index.json")]
        if index:
            ipath = os.path.join(path, index[0])
            idx = _read_json(ipath)
            wmap = idx.get("weight_map") if isinstance(idx, dict) else None
            if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
                raise SdnqFormatError(f"{ipath}: weight_map must map keys to shard file names")
            names = sorted(set(wmap.values()))
            for n in names:
                if os.path.basename(n) != n or n in ("", ".", "..") or "\0" in n:
                    raise SdnqFormatError(f"{ipath}: shard {n!r} is not a file name in {path}")
                if not os.path.isfile(os.path.join(path, n)):
                    raise SdnqFormatError(f"{ipath}: shard {n!r} is missing from {path}")
        else:
            names = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not names:
            raise SdnqFormatError(f"{path}: no .safetensors files")
        self.files = [SafetensorsFile(os.path.join(path, n)) for n in names]

    def _open_file(self, path):
        st = SafetensorsFile(path)
        text = st.metadata.get(CONFIG_KEY)
        if text is None:
            has_sdnq = any(k.endswith(".scale") and k[:-6] + ".weight" in st for k in st.keys())
            raise SdnqFormatError(f"{path}: " + (f"SDNQ tensors but no config in __metadata__[{CONFIG_KEY!r}]"
                                                  if has_sdnq else "not an SDNQ file (no quantized layers, no "
                                                  f"__metadata__[{CONFIG_KEY!r}])"))
        self.config, self.dtype, self.model_config = config_from_metadata(text, path)
        self.files = [st]

    def keys(self):
        return self.key_file.keys()

    def get(self, key):
        return self.key_file[key].get(key)

    def shape_of(self, key) -> tuple[int, ...]:
        return self.key_file[key].shape(key)

    def file_of(self, key) -> str:
        return self.key_file[key].path


class TensorSource:
    """In-memory tensors under sdnq's key names, with their quantization config."""

    def __init__(self, tensors: dict, quantization_config, name: str = "<tensors>"):
        self.path = name
        self.tensors = dict(tensors)
        self.config = quantization_config if isinstance(quantization_config, QuantConfig) else \
            QuantConfig(quantization_config, name)
        self.dtype = None

    def keys(self):
        return self.tensors.keys()

    def get(self, key):
        return self.tensors[key]

    def shape_of(self, key) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def file_of(self, key) -> str:
        return self.path


def config_from_metadata(text: str, path: str):
    """(QuantConfig, compute dtype or None, model config or None) from the JSON of
    __metadata__['sdnq_config']: {"quantization_config": ..., "torch_dtype": ...} or a bare config"""
    # a JSON string may hold lone surrogates ("\udc80"): they fail as non-UTF-8, not as an encode error
    meta = load_json(text.encode("utf-8", "surrogatepass"), f"{path}: __metadata__[{CONFIG_KEY!r}]")
    if not isinstance(meta, dict):
        raise SdnqFormatError(f"{path}: __metadata__[{CONFIG_KEY!r}] must be a JSON object")
    raw = meta if "quant_method" in meta else meta.get("quantization_config")
    if raw is None:
        raise SdnqFormatError(f"{path}: __metadata__[{CONFIG_KEY!r}] has no quantization_config")
    model_config = meta.get("model_config") if isinstance(meta.get("model_config"), dict) else None
    return QuantConfig(raw, f"{path} __metadata__[{CONFIG_KEY!r}]"), _dtype_from(meta) or _dtype_from(model_config), \
        model_config


def _check_arith(src: Source, key: str, t: torch.Tensor, what: str):
    if t.dtype not in dtypes.ARITH_DTYPES:
        raise SdnqFormatError(f"{where(src.file_of(key), key)}{what} must be float32/bfloat16/float16, got {t.dtype}")


def _check_finite(src: Source, key: str, t: torch.Tensor):
    if t.device.type == "meta":  # shape-only loading: nothing to check
        return
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise SdnqFormatError(f"{where(src.file_of(key), key)}{bad} NaN/inf value(s) in shape {tuple(t.shape)}")


def _code_count(src: Source, key: str, t: dtypes.SdnqType, x: torch.Tensor, what: str) -> int:
    """codes held by a stored tensor of type t, checking sdnq's shapes"""
    if x.dtype != t.storage_dtype:
        raise SdnqFormatError(f"{where(src.file_of(key), key)}{what} of type {t.name} must be stored as "
                              f"{t.storage_dtype}, got {x.dtype} shape {tuple(x.shape)}")
    if not t.is_packed or t.bits in (8, 16):
        return x.numel()
    n = t.numel_from_storage(x.numel())
    if n is None or tuple(x.shape) != t.packed_shape(n):
        raise SdnqFormatError(f"{where(src.file_of(key), key)}{what} of type {t.name} has shape {tuple(x.shape)}; "
                              f"packed {t.name} codes come as [{t.block_words}-word blocks] ("
                              f"{'1-D' if t.bits in (1, 2, 4) else f'[blocks, {t.block_words}]'})")
    return n


def _legacy_floats(qt, file: str, key: str):
    """sdnq before 0.2.2 had no subnormals: its decoder read a custom-float code with
    exponent field 0 and mantissa M > 0 as +-2^-bias * (1 + M/2^m), half the smallest
    normal times 1 + M/2^m. Each of those values, and every other code's, is exact in
    the same float family with one more mantissa bit (a subnormal there), so the layer is
    re-coded once at load into that wider type: same scales, same products, the old
    release's bits. (The codes are then no longer the file's bytes.)"""
    from . import kernels, reference

    p = qt.params
    t = p.weight_type
    if t.family not in ("FLOATX", "UFLOATX") or t.mantissa == 0 or t.exponent == 0:
        return qt
    name = f"float{t.bits + 1}_e{t.exponent}m{t.mantissa + 1}fn" + ("u" if t.family == "UFLOATX" else "")
    try:
        wide = dtypes.get(name)
    except SdnqFormatError:
        raise SdnqUnsupportedError(f"{where(file, key)}{t.name} written by sdnq < 0.2.2 decodes exponent-0 codes "
                                   f"without subnormals; re-coding it needs {name}, which does not exist") from None
    bias = (1 << (t.exponent - 1)) - 1
    min_normal = 2.0 ** (1 - bias)
    vals = reference.floatx_decode(t, torch.arange(1 << t.bits, dtype=torch.int32)).double()
    sub = (vals != 0) & (vals.abs() < min_normal)
    frac = vals.abs() / min_normal  # M / 2^m of the subnormal reading
    old = torch.where(sub, vals.sign() * (min_normal / 2) * (1 + frac), vals)
    wide_vals = reference.floatx_decode(wide, torch.arange(1 << wide.bits, dtype=torch.int32)).double()
    table = {}
    for code in range(len(wide_vals) - 1, -1, -1):  # the lowest code wins: +0 over -0
        table[float(wide_vals[code])] = code
    lut = torch.tensor([table[float(v)] for v in old], dtype=torch.int32)
    n = math.prod(p.orig_shape)
    codes = lut[kernels.unpack(t, qt._qdata.contiguous(), n).long()]
    words = kernels.pack(wide, codes)
    if wide.bits in (8, 16):
        words = words.reshape(tuple(p.view))
    return layout.make(words, dataclasses.replace(p, wtype=wide.id))


def build_layer(src: Source, prefix: str, dtype: torch.dtype, shape_hint=None, kind_hint=None):
    """the SDNQ QuantizedTensor of the layer whose keys start with prefix"""
    version = src.config.version
    if version is not None and version < (0, 2, 2):
        qt = _build_layer_versions(src, prefix, dtype, shape_hint, kind_hint)
        return _legacy_floats(qt, src.file_of(prefix + ".weight"), prefix + ".weight")
    return _build_layer_versions(src, prefix, dtype, shape_hint, kind_hint)


def _build_layer_versions(src: Source, prefix: str, dtype: torch.dtype, shape_hint=None, kind_hint=None):
    try:
        return _build_layer(src, prefix, dtype, shape_hint, kind_hint)
    except SdnqFormatError:
        # sdnq before 0.1.3 stored convolutions it was asked to quantize below 4 bits as uint4
        version = src.config.version
        bits = src.config.layer(prefix + ".weight").weights_dtype.bits
        if (version is None or version < (0, 1, 3)) and bits < 4 and kind_hint in (None, "conv", "conv_transpose"):
            try:
                qt = _build_layer(src, prefix, dtype, shape_hint, kind_hint, force_type="uint4")
            except SdnqFormatError:
                pass
            else:
                if len(qt.shape) > 2:
                    return qt
        raise


def _build_layer(src, prefix: str, dtype: torch.dtype, shape_hint=None, kind_hint=None, force_type=None):
    key = prefix + ".weight"
    file = src.file_of(key)
    keys = set(src.keys())
    have = {s: src.get(f"{prefix}.{s}") for s in SIDE_KEYS if f"{prefix}.{s}" in keys}
    qdata = src.get(key)
    kind = kind_hint if kind_hint in KINDS else "linear"
    lcfg = src.config.layer(key, kind)
    if force_type is not None:
        lcfg = dataclasses.replace(lcfg, weights_dtype=dtypes.get(force_type))
    t = lcfg.weights_dtype
    n = _code_count(src, key, t, qdata, "weight")
    scale = have["scale"]
    skey = prefix + ".scale"

    st, zt = lcfg.scale_dtype, lcfg.zero_point_dtype
    if st is None and "scale_2" in have:
        raise SdnqFormatError(f"{where(file, prefix + '.scale_2')}double-quantized scale, but the config has no "
                              f"scale_dtype")
    if st is not None:
        if "scale_2" not in have:
            raise SdnqFormatError(f"{where(file, skey)}config scale_dtype {st.name!r} needs {prefix}.scale_2")
        _code_count(src, skey, st, scale, "scale")
        scale_shape = None if (st.is_packed and st.bits not in (8, 16)) else tuple(scale.shape)
    else:
        _check_arith(src, skey, scale, "scale")
        _check_finite(src, skey, scale)
        scale_shape = tuple(scale.shape)

    svd = None
    if ("svd_up" in have) != ("svd_down" in have):
        missing = "svd_down" if "svd_up" in have else "svd_up"
        raise SdnqFormatError(f"{where(file, prefix + '.' + missing)}missing (the other SVD factor is present)")
    if "svd_up" in have:
        for s in ("svd_up", "svd_down"):
            _check_arith(src, f"{prefix}.{s}", have[s], s)
            if have[s].dim() != 2:
                raise SdnqFormatError(f"{where(file, prefix + '.' + s)}must be 2-D, got {tuple(have[s].shape)}")
            _check_finite(src, f"{prefix}.{s}", have[s])
        svd = (tuple(have["svd_up"].shape), tuple(have["svd_down"].shape))
    bias_key = prefix + ".bias"
    out_features = src.shape_of(bias_key)[0] if bias_key in keys and len(src.shape_of(bias_key)) == 1 else None
    try:
        geo = infer_geometry(lcfg, n, scale_shape, out_features=out_features, svd_shapes=svd, shape_hint=shape_hint,
                             kind_hint=kind_hint)
        if geo.kind != kind and geo.kind in ("conv", "conv_transpose"):
            lcfg = dataclasses.replace(src.config.layer(key, geo.kind), weights_dtype=lcfg.weights_dtype)
            geo = infer_geometry(lcfg, n, scale_shape, out_features=out_features, svd_shapes=svd,
                                 shape_hint=shape_hint, kind_hint=kind_hint or geo.kind)
    except SdnqFormatError as exc:
        raise SdnqFormatError(f"{where(file, key)}weight {t.name} {tuple(qdata.shape)}, scale "
                              f"{tuple(scale.shape)}: {exc}") from None
    groups = math.prod(geo.scale_shape)
    if not t.is_packed and scale_shape is not None and groups != (t.levels if lcfg.use_codebook else 1):
        # unpacked codes keep sdnq's shape, and the scale is that shape with the reduction axis cut to 1
        # (or to the codebook levels): a scale reshaped to fit another layout shows here
        q = tuple(qdata.shape)
        if len(q) != len(scale_shape) or sum(a != b for a, b in zip(q, scale_shape)) > 1:
            raise SdnqFormatError(f"{where(file, key)}weight {t.name} {q} does not match scale {scale_shape}: the "
                                  f"scale must have the codes' shape with the reduction axis cut to 1")
    if st is not None and scale_shape is None:
        if st.numel_from_storage(scale.numel()) != groups:
            raise SdnqFormatError(f"{where(file, skey)}packed {st.name} scale {tuple(scale.shape)} does not hold the "
                                  f"{groups} group scales of a {geo.shape} weight")

    # zero-points belong to unsigned types without a codebook
    zkey = prefix + ".zero_point"
    needs_zp = t.is_unsigned and not lcfg.use_codebook
    zp = have.get("zero_point")
    if needs_zp and zp is None:
        raise SdnqFormatError(f"{where(file, zkey)}missing: {t.name} weights are asymmetric")
    if not needs_zp and zp is not None:
        raise SdnqFormatError(f"{where(file, zkey)}unexpected for {t.name}" +
                              (" with a codebook" if lcfg.use_codebook else " (a symmetric type)"))
    zp_type = 0
    if zp is not None:
        if zt is not None and st is not None:
            if "zero_point_scale" not in have:
                raise SdnqFormatError(f"{where(file, zkey)}config zero_point_dtype {zt.name!r} needs "
                                      f"{prefix}.zero_point_scale")
            if _code_count(src, zkey, zt, zp, "zero_point") != groups:
                raise SdnqFormatError(f"{where(file, zkey)}shape {tuple(zp.shape)} does not hold {groups} zero-points")
            zp_type = zt.id
        else:
            _check_arith(src, zkey, zp, "zero_point")
            _check_finite(src, zkey, zp)
            if tuple(zp.shape) != geo.scale_shape:
                raise SdnqFormatError(f"{where(file, zkey)}shape {tuple(zp.shape)}, expected the scale's "
                                      f"{geo.scale_shape}")
            if st is None and zp.dtype != scale.dtype:
                raise SdnqFormatError(f"{where(file, zkey)}dtype {zp.dtype} differs from the scale's {scale.dtype}")
    if st is None and not lcfg.use_codebook and scale.numel() != groups:
        raise SdnqFormatError(f"{where(file, skey)}shape {tuple(scale.shape)}, expected {geo.scale_shape}")

    extra = {}
    codebook_scale = bool(lcfg.use_codebook_scale and st is not None)
    for name, owner, needed in (("scale_2", st, True), ("scale_zero_point", st, st is not None and st.is_unsigned
                                                       and not codebook_scale),
                                ("zero_point_scale", zt if zp_type else None, True),
                                ("zero_point_2", zt if zp_type else None, zt is not None and zt.is_unsigned
                                 and not codebook_scale)):
        k = f"{prefix}.{name}"
        if owner is None or not needed:
            if name in have:
                raise SdnqFormatError(f"{where(file, k)}unexpected for this layer's config")
            continue
        if name not in have:
            raise SdnqFormatError(f"{where(file, k)}missing for double-quantized {owner.name!r}")
        x = have[name]
        _check_arith(src, k, x, name)
        _check_finite(src, k, x)
        want = owner.levels if codebook_scale and name in ("scale_2", "zero_point_scale") else 1
        if x.numel() != want:
            raise SdnqFormatError(f"{where(file, k)}shape {tuple(x.shape)}, expected {want} value(s)")
        extra[name] = x
    if svd is not None and svd[0][0 if geo.svd_transposed else 1] != geo.svd_rank:
        raise SdnqFormatError(f"{where(file, prefix + '.svd_up')}rank mismatch")

    params = layout.SDNQParams(
        scale=scale, orig_dtype=dtype, orig_shape=geo.shape, zero_point=zp, svd_up=have.get("svd_up"),
        svd_down=have.get("svd_down"), wtype=t.id, view=geo.view, scale_shape=geo.scale_shape, stored_t=geo.stored_t,
        codebook=lcfg.use_codebook, svd_transposed=geo.svd_transposed, hadamard=geo.hadamard,
        hadamard_h4=src.config.hadamard_h4(), scale_type=st.id if st is not None else 0, zero_point_type=zp_type,
        codebook_scale=codebook_scale, **extra)
    return layout.make(qdata, params)


def from_tensors(tensors: dict, quantization_config, dtype: torch.dtype = torch.bfloat16, name: str = "layer",
                 shape=None, kind: str | None = None):
    """One layer's tensors under sdnq's names ("weight", "scale", "zero_point", "svd_up", ...)
    as an SDNQ QuantizedTensor. quantization_config: sdnq's config dict; `name` is the
    module path the config's per-module rules are matched against."""
    src = TensorSource({f"{name}.{k}": v for k, v in tensors.items() if v is not None}, quantization_config)
    return build_layer(src, name, dtype, shape, kind)


def load(path, dtype: torch.dtype | None = None, *, shapes: dict | None = None, kinds: dict | None = None
         ) -> dict[str, torch.Tensor]:
    """Read an SDNQ model (folder or single .safetensors) into a state dict.

    Quantized layers become SDNQ QuantizedTensors under '<module>.weight' (their side
    tensors live inside); everything else stays a plain tensor. Tensors are mapped from
    the files, not read. dtype: compute dtype (default: the config's, else bfloat16).
    shapes/kinds: the model's weight shapes and layer kinds by key, for the rare layouts
    the tensors alone do not pin down."""
    return state_dict(Source(path), dtype, shapes=shapes, kinds=kinds)


def state_dict(src, dtype: torch.dtype | None = None, *, shapes: dict | None = None, kinds: dict | None = None
               ) -> dict[str, torch.Tensor]:
    """the state dict of a Source / TensorSource: SDNQ layers as QuantizedTensors, the rest as is"""
    dtype = dtype or src.dtype or torch.bfloat16
    if dtype not in dtypes.ARITH_DTYPES:
        raise SdnqError(f"{src.path}: compute dtype must be float32, bfloat16 or float16, got {dtype}")
    keys = list(src.keys())
    keyset = set(keys)
    prefixes = []
    for k in keys:
        if k.endswith(".scale"):
            p = k[: -len(".scale")]
            if p + ".weight" not in keyset:
                # a model's own parameter named 'scale' (FLUX.1's QK-norm '...query_norm.scale'
                # in ComfyUI's layout) is a plain tensor; with SDNQ side tensors beside it, the
                # layer's codes are missing
                if any(f"{p}.{s}" in keyset for s in SIDE_KEYS[1:]):
                    raise SdnqFormatError(f"{where(src.file_of(k), k)}scale without {p}.weight")
                continue
            prefixes.append(p)
    out, consumed = {}, set()
    for p in prefixes:
        key = p + ".weight"
        out[key] = build_layer(src, p, dtype, (shapes or {}).get(key), (kinds or {}).get(key))
        consumed.add(key)
        consumed.update(f"{p}.{s}" for s in SIDE_KEYS)
    orphans = [k for k in keys if k not in consumed and k.rsplit(".", 1)[-1] in SIDE_KEYS[1:]
               and k.rsplit(".", 1)[0] + ".scale" not in keyset and k.rsplit(".", 1)[0] + ".weight" in keyset]
    if orphans:
        raise SdnqFormatError(f"{where(src.file_of(orphans[0]), orphans[0])}SDNQ side tensor without "
                              f"{orphans[0].rsplit('.', 1)[0]}.scale")
    for k in keys:
        if k not in consumed:
            out[k] = src.get(k)
    return out


def load_config(path) -> QuantConfig:
    """the validated quantization config of an SDNQ model (folder or single file)"""
    return Source(path).config


# ---------------------------------------------------------------------------
# saving


def _expand(state_dict: dict, qcfg: QuantConfig, raw_cfg: dict, path: str = "") -> dict[str, torch.Tensor]:
    """SDNQ tensors -> sdnq's keys; records per-layer weight types the config would not derive"""
    tensors = {}
    dtype_dict = raw_cfg.setdefault("modules_dtype_dict", {}) or {}
    raw_cfg["modules_dtype_dict"] = dtype_dict
    for key, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise SdnqError(f"{where(path)}state_dict[{key!r}] is a {type(t).__name__}, not a tensor")
        if not layout.is_sdnq(t):
            if type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
                raise SdnqUnsupportedError(f"{where(path)}state_dict[{key!r}]: cannot save a {type(t).__name__}")
            tensors[key] = t
            continue
        if not key.endswith(".weight"):
            raise SdnqError(f"{where(path)}state_dict[{key!r}]: SDNQ tensors must be stored under '<module>.weight'")
        p = t.params
        if p.logical_t:
            raise SdnqError(f"{where(path)}state_dict[{key!r}]: a transposed view of an SDNQ weight cannot be saved")
        prefix = key[: -len(".weight")]
        name = dtypes.get(p.wtype).name
        if qcfg.layer(key).weights_dtype.id != p.wtype:
            dtype_dict.setdefault(name, []).append(key)
        tensors[key] = t._qdata
        for f in p._tensor_fields():
            tensors[f"{prefix}.{f}"] = getattr(p, f)
    for key, t in tensors.items():  # before anything is written
        if t.dtype not in ST_NAMES:
            raise SdnqFormatError(f"{where(path, key)}dtype {t.dtype} cannot be stored in safetensors")
        if t.device.type == "meta":
            raise SdnqError(f"{where(path, key)}a meta tensor has no data to save")
    return tensors


# the SDNQParams a file must reproduce for load() to give back the saved weight
_LAYOUT_FIELDS = ("orig_shape", "wtype", "view", "scale_shape", "stored_t", "codebook", "svd_transposed", "hadamard",
                  "hadamard_h4", "scale_type", "zero_point_type", "codebook_scale")


def _check_reloads(sd: dict, tensors: dict, raw_cfg: dict, path: str) -> None:
    """load() must read the saved tensors back as the same layers: a config that does not
    describe a layer (its Hadamard rotation, codebook or double-quantized scale, say) would
    otherwise write a file that loads as other weights, or not at all"""
    shapes = {k: tuple(t.params.orig_shape) for k, t in sd.items() if layout.is_sdnq(t)}
    try:
        back = state_dict(TensorSource(tensors, QuantConfig(raw_cfg, path), path), shapes=shapes)
    except SdnqFormatError as exc:
        raise SdnqFormatError(f"{exc}; load() would not read this back with this quantization_config") from None
    for key in shapes:
        want, got = sd[key].params, back[key].params
        for f in _LAYOUT_FIELDS:
            a, b = getattr(want, f), getattr(got, f)
            if isinstance(a, (tuple, list)):  # shapes: torch.Size, tuple or list alike
                a, b = tuple(a), tuple(b)
            if a != b:
                raise SdnqError(f"{where(path, key)}the quantization_config would load this layer with {f} {b!r}, "
                                f"it has {a!r}; give the config the layer's settings (e.g. in modules_quant_config)")


def _json_copy(obj, what: str, path: str):
    """a private, JSON-clean copy of obj"""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise SdnqError(f"{where(path)}{what} is not JSON: {exc}") from None


def _dtype_name(state_dict) -> str:
    for t in state_dict.values():
        if layout.is_sdnq(t):
            return str(t.params.orig_dtype).removeprefix("torch.")
    return "bfloat16"


def save(state_dict: dict, path, quantization_config: dict | QuantConfig, model_config: dict | None = None,
         max_shard_size: int = 5 * 1024**3) -> None:
    """Write a state dict with SDNQ tensors as files sdnq reads.

    path ending in .safetensors: one file, config in __metadata__['sdnq_config'];
    otherwise a folder: weights (sharded above max_shard_size bytes), config.json
    (model_config + quantization_config) and quantization_config.json.

    Everything is checked before anything is written; weights go to temporary files that
    replace the old ones only once all are written, so a failure leaves the old model."""
    path = os.fspath(path)
    if not isinstance(quantization_config, (dict, QuantConfig)):
        raise SdnqError(f"{path}: quantization_config must be a dict, got {type(quantization_config).__name__}")
    if not isinstance(state_dict, dict):
        raise SdnqError(f"{path}: state_dict must be a dict, got {type(state_dict).__name__}")
    raw = dict(quantization_config.raw if isinstance(quantization_config, QuantConfig) else quantization_config)
    raw.setdefault("quant_method", "sdnq")
    raw.setdefault("sdnq_version", SDNQ_VERSION)
    qcfg = QuantConfig(raw, path)
    raw = _json_copy(raw, "quantization_config", path)
    tensors = _expand(state_dict, qcfg, raw, path)
    _check_reloads(state_dict, tensors, raw, path)  # also: still valid after recording per-layer types
    torch_dtype = _dtype_name(state_dict)
    if model_config is not None and not isinstance(model_config, dict):
        raise SdnqError(f"{path}: model_config must be a dict, got {type(model_config).__name__}")
    model_config = None if model_config is None else _json_copy(model_config, "model_config", path)
    if path.endswith(".safetensors"):
        meta = {"quantization_config": raw, "torch_dtype": torch_dtype}
        if model_config is not None:
            meta["model_config"] = model_config
        write(path, tensors, {CONFIG_KEY: json.dumps(meta)})
        return
    cfg = dict(model_config or {})
    stem = "diffusion_pytorch_model" if "_class_name" in cfg else "model"
    shards, cur, size = [], {}, 0
    for k, t in tensors.items():
        nb = t.numel() * t.element_size()
        if cur and size + nb > max_shard_size:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = t
        size += nb
    shards.append(cur)
    names = [f"{stem}.safetensors"] if len(shards) == 1 else \
        [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise SdnqWriteError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    temps = []
    try:
        for name, shard in zip(names, shards):
            temps.append(write_temp(os.path.join(path, name), shard))
    except BaseException:
        for tmp in temps:
            discard(tmp)
        raise
    for old in os.listdir(path):
        if re.fullmatch(re.escape(stem) + r"(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?", old) and \
                old not in names:
            os.unlink(os.path.join(path, old))
    for name, tmp in zip(names, temps):
        commit(tmp, os.path.join(path, name))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
        _write_json(os.path.join(path, f"{stem}.safetensors.index.json"), index)
    cfg["quantization_config"] = raw
    cfg.setdefault("torch_dtype", torch_dtype)
    _write_json(os.path.join(path, "config.json"), cfg)
    _write_json(os.path.join(path, "quantization_config.json"), raw)


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        discard(tmp)
        raise SdnqWriteError(f"{path}: cannot write: {exc.strerror or exc}") from exc
