"""SDNQ quantization configs: parsing, validation, and the per-layer settings sdnq derives
from them (module name matching, per-module overrides, per-module dtypes, versions).

A config is the `quantization_config` dict sdnq writes into config.json /
quantization_config.json (or comfy_sdnq into a safetensors header). Unknown keys are
kept and ignored, as sdnq does; known keys are type-checked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import dtypes
from .dtypes import SdnqType
from .errors import SdnqFormatError, SdnqUnsupportedError, where

MATMUL_DTYPES = ("int8", "uint8", "fp8", "fp16", "float8_e4m3fn", "float16")
DEFAULT_HADAMARD_GROUP = 256

# field: (types accepted, default) - sdnq 0.2.8 SDNQConfig
_FIELDS = {
    "weights_dtype": ((str,), "int8"),
    "scale_dtype": ((str, type(None)), None),
    "zero_point_dtype": ((str, type(None)), None),
    "quantized_matmul_dtype": ((str, type(None)), None),
    "hadamard_group_size": ((int,), DEFAULT_HADAMARD_GROUP),
    "group_size": ((int,), 0),
    "svd_rank": ((int,), 32),
    "svd_steps": ((int,), 8),
    "codebook_steps": ((int,), 24),
    "dynamic_loss_threshold": ((int, float, type(None)), None),
    "use_svd": ((bool,), False),
    "use_hadamard": ((bool,), False),
    "use_codebook": ((bool,), False),
    "use_codebook_scale": ((bool,), False),
    "quant_conv": ((bool,), False),
    "quant_embedding": ((bool,), False),
    "use_quantized_matmul": ((bool,), False),
    "use_quantized_matmul_conv": ((bool,), False),
    "use_dynamic_quantization": ((bool,), False),
    "use_stochastic_rounding": ((bool,), False),
    "dequantize_fp32": ((bool,), True),
    "minimum_allowed_numel": ((int,), 16384),
    "minimum_allowed_channel_size": ((int,), 32),
    "modules_to_not_convert": ((list, type(None)), None),
    "modules_to_not_use_matmul": ((list, type(None)), None),
    "modules_dtype_dict": ((dict, type(None)), None),
    "modules_quant_config": ((dict, type(None)), None),
    "sdnq_version": ((str, type(None)), None),
}

# the keys of modules_quant_config entries that change how a layer is stored
_LAYER_KEYS = ("weights_dtype", "scale_dtype", "zero_point_dtype", "quantized_matmul_dtype", "hadamard_group_size",
               "group_size", "svd_rank", "use_svd", "use_hadamard", "use_codebook", "use_codebook_scale",
               "use_quantized_matmul", "use_quantized_matmul_conv", "dequantize_fp32")


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """'0.2.8' -> (0, 2, 8); None (pre-0.1.0 configs carry no version) -> None"""
    if text is None:
        return None
    m = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
    if not m:
        raise SdnqFormatError(f"sdnq_version {text!r} is not a version number")
    return tuple(int(g or 0) for g in m.groups())


def match_module(param_name: str, patterns) -> str | None:
    """sdnq's module-name matching: the first pattern that matches param_name, or None.
    A pattern matches if it equals the name, equals one of its dot-separated parts,
    starts with '.' and the name starts with the rest, or contains '*' and matches as a
    regex anchored at the start ('.*' literal dot, '*' any)."""
    parts = param_name.split(".")
    for p in patterns:
        if p.startswith("."):
            if param_name.startswith(p[1:]):
                return p
            continue
        if param_name == p or p in parts:
            return p
        if "*" in p and _star_match(p, param_name):
            return p
    return None


def _pattern_regex(p: str) -> str:
    """the regex sdnq makes of a module pattern containing '*'"""
    return p.replace(".*", "\\.*").replace("*", ".*")


_REGEX_META = frozenset("\\^$+?()[]{}|")


def _star_match(p: str, name: str) -> bool:
    """re.match(_pattern_regex(p), name) in time linear in len(p) * len(name): Python's backtracking
    takes exponential time on patterns like 'a.*****b' against a long name that does not match (a
    crafted file could hang the loader). Patterns using other regex syntax go to re (config files
    refuse them, QuantConfig._check_pattern)."""
    if any(c in _REGEX_META for c in p):
        return re.match(_pattern_regex(p), name) is not None
    # the regex's atoms: 'L' literal, 'A' any character but newline, 'S' any run of them
    toks, i = [], 0
    while i < len(p):
        if p.startswith(".*", i):  # '.*' -> '\..*': a literal dot, then anything
            toks += [("L", "."), ("S", None)]
            i += 2
        elif p[i] == "*":
            if not toks or toks[-1][0] != "S":  # '**' matches what '*' does
                toks.append(("S", None))
            i += 1
        else:
            toks.append(("A", None) if p[i] == "." else ("L", p[i]))
            i += 1
    m = len(toks)

    def closure(states):
        out = set()
        for k in states:
            out.add(k)
            while k < m and toks[k][0] == "S":
                k += 1
                out.add(k)
        return out

    states = closure({0})
    for ch in name:
        if m in states:  # re.match: a matched prefix is enough
            return True
        nxt = set()
        for k in states:
            if k == m:
                continue
            kind, c = toks[k]
            if kind == "S":
                if ch != "\n":
                    nxt.add(k)
            elif kind == "A":
                if ch != "\n":
                    nxt.add(k + 1)
            elif c == ch:
                nxt.add(k + 1)
        if not nxt:
            return False
        states = closure(nxt)
    return m in states


@dataclass(frozen=True)
class LayerConfig:
    """the settings sdnq uses for one layer"""

    weights_dtype: SdnqType
    scale_dtype: SdnqType | None
    zero_point_dtype: SdnqType | None
    quantized_matmul_dtype: str | None
    group_size: int
    svd_rank: int
    use_svd: bool
    use_hadamard: bool
    hadamard_group_size: int
    use_codebook: bool
    use_codebook_scale: bool
    use_quantized_matmul: bool
    dequantize_fp32: bool


class QuantConfig:
    """A validated SDNQ quantization config. `source` names the file it came from."""

    def __init__(self, raw: dict, source: str | None = None):
        if not isinstance(raw, dict):
            raise SdnqFormatError(f"{where(source)}quantization_config must be a JSON object, got "
                                  f"{type(raw).__name__}")
        self.source = source
        method = raw.get("quant_method", "sdnq")
        if method == "sdnq_training":
            raise SdnqUnsupportedError(f"{where(source)}quant_method 'sdnq_training' (sdnq's training format) is not "
                                       f"saved as safetensors and is not supported; convert it with sdnq first")
        if method != "sdnq":
            raise SdnqFormatError(f"{where(source)}quant_method is {method!r}, expected 'sdnq'")
        values = {}
        for key, (types, default) in _FIELDS.items():
            values[key] = self._typed(f"quantization_config[{key!r}]", key, raw.get(key, default))
        self.raw = dict(raw)
        self.values = values
        try:
            self.version = parse_version(values["sdnq_version"])
        except SdnqFormatError as exc:
            raise SdnqFormatError(f"{where(source)}{exc}") from None
        self.weights_dtype = self._dtype(values["weights_dtype"], "weights_dtype")
        self._check_dtypes(values, "quantization_config")
        self.not_use_matmul = self._names("modules_to_not_use_matmul")
        self.not_convert = self._names("modules_to_not_convert")
        self.dtype_dict = {}
        for k, v in (values["modules_dtype_dict"] or {}).items():
            v = [v] if isinstance(v, str) else v
            if not isinstance(k, str) or not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise SdnqFormatError(f"{where(source)}modules_dtype_dict must map dtype names to lists of module "
                                      f"names, got {k!r}: {type(v).__name__}")
            for p in v:
                self._check_pattern(p, f"modules_dtype_dict[{k!r}]")
            self.dtype_dict[k] = v
        self.quant_config = {}
        for k, v in (values["modules_quant_config"] or {}).items():
            if not isinstance(k, str) or not isinstance(v, dict):
                raise SdnqFormatError(f"{where(source)}modules_quant_config must map module names to objects, got "
                                      f"{k!r}: {type(v).__name__}")
            label = f"modules_quant_config[{k!r}]"
            self._check_pattern(k, "modules_quant_config")
            self._check_dtypes({f: self._typed(f"{label}[{f!r}]", f, v[f]) for f in _LAYER_KEYS if f in v}, label)
            self.quant_config[k] = v

    def _typed(self, label, key, value):
        """value of field key, type-checked against _FIELDS"""
        types = _FIELDS[key][0]
        if isinstance(value, bool) and bool not in types:
            raise SdnqFormatError(f"{where(self.source)}{label} must be {'/'.join(t.__name__ for t in types)}, "
                                  f"got {value!r}")
        if not isinstance(value, types):
            raise SdnqFormatError(f"{where(self.source)}{label} must be {'/'.join(t.__name__ for t in types)}, "
                                  f"got {type(value).__name__}")
        return value

    def _check_dtypes(self, values: dict, label: str):
        """the type names in values (a config or one modules_quant_config entry) exist"""
        for key in ("weights_dtype", "scale_dtype", "zero_point_dtype"):
            if values.get(key) not in (None, "none"):
                self._dtype(values[key], key, label)
        mm = values.get("quantized_matmul_dtype")
        if mm is not None and mm not in MATMUL_DTYPES:
            raise SdnqFormatError(f"{where(self.source)}{label}['quantized_matmul_dtype'] {mm!r} is not one of "
                                  f"{MATMUL_DTYPES}")

    def _dtype(self, name, key, label="quantization_config") -> SdnqType:
        try:
            return dtypes.get(name)
        except SdnqFormatError as exc:
            raise SdnqFormatError(f"{where(self.source)}{label}[{key!r}]: {exc}") from None

    def _names(self, key) -> list[str]:
        v = self.values[key] or []
        if not all(isinstance(x, str) for x in v):
            raise SdnqFormatError(f"{where(self.source)}{key} must be a list of module names")
        for p in v:
            self._check_pattern(p, key)
        return list(v)

    def _check_pattern(self, p: str, label: str):
        """a module pattern with '*' is a regex to sdnq: one that does not compile is a config error,
        raised here rather than as re.error when a layer name is first matched against it"""
        if "*" in p:
            try:
                re.compile(_pattern_regex(p))
            except re.error as exc:
                raise SdnqFormatError(f"{where(self.source)}{label}: module pattern {p!r} is not a valid pattern "
                                      f"({exc})") from None
            if any(c in _REGEX_META for c in p):
                # evaluated with Python's backtracking regex engine, a crafted pattern takes exponential time
                raise SdnqUnsupportedError(f"{where(self.source)}{label}: module pattern {p!r} uses regex syntax "
                                           f"other than '*' and '.', which comfy_sdnq does not evaluate")

    def __getitem__(self, key):
        return self.values[key]

    def hadamard_h4(self) -> bool:
        """whether power-of-4 Hadamard groups use the H4 construction: since the 0.2.0
        release (earlier 0.1.9 files rotate every block size with Sylvester's matrix)"""
        return self.version is None or self.version >= (0, 2, 0)

    def minimum_dtype(self, weights_dtype: str, param_name: str) -> str:
        """sdnq's get_minimum_dtype: the per-module dtype from modules_dtype_dict"""
        base = self._dtype(weights_dtype, f"weights_dtype of {param_name}")
        for key, names in self.dtype_dict.items():
            if match_module(param_name, names) is None:
                continue
            k = key.lower()
            if k.startswith("minimum") or k.endswith(("bit", "bits")):
                s = k.removeprefix("minimum").removeprefix("-").removeprefix("_")
                s = s.removesuffix("bits").removesuffix("bit").removesuffix("-").removesuffix("_")
                unsigned = s.startswith("uint")
                s = s.removeprefix("uint") if unsigned else s.removeprefix("int")
                if not s.isdigit():
                    raise SdnqFormatError(f"{where(self.source)}modules_dtype_dict key {key!r} is not a dtype or a "
                                          f"'minimum_<N>bit' rule")
                bits = int(s)
                if base.bits < bits:
                    return ("uint" if unsigned or bits <= 4 else "int") + s
            else:
                return key
        return weights_dtype

    def layer(self, param_name: str, kind: str = "linear") -> LayerConfig:
        """the settings of the layer whose weight is param_name ('<module path>.weight')"""
        kw = {k: self.values[k] for k in _LAYER_KEYS}
        key = match_module(param_name, self.quant_config.keys())
        if key is not None:
            for k, v in self.quant_config[key].items():
                if k in kw:
                    kw[k] = v
        use_qmm = kw["use_quantized_matmul_conv"] if kind in ("conv", "conv_transpose") else kw["use_quantized_matmul"]
        if match_module(param_name, self.not_use_matmul) is not None:
            use_qmm = False
        wname = self.minimum_dtype(kw["weights_dtype"], param_name)
        sd = kw["scale_dtype"]
        zd = kw["zero_point_dtype"]
        zd = sd if zd is None else zd  # sdnq: zero points default to the scale's dtype
        return LayerConfig(
            weights_dtype=self._dtype(wname, f"weights_dtype of {param_name}"),
            scale_dtype=None if sd in (None, "none") else self._dtype(sd, "scale_dtype"),
            zero_point_dtype=None if zd in (None, "none") else self._dtype(zd, "zero_point_dtype"),
            quantized_matmul_dtype=kw["quantized_matmul_dtype"],
            group_size=int(kw["group_size"]),
            svd_rank=int(kw["svd_rank"]),
            use_svd=bool(kw["use_svd"]),
            use_hadamard=bool(kw["use_hadamard"]),
            hadamard_group_size=int(kw["hadamard_group_size"]),
            use_codebook=bool(kw["use_codebook"]),
            use_codebook_scale=bool(kw["use_codebook_scale"]),
            use_quantized_matmul=bool(use_qmm),
            dequantize_fp32=bool(kw["dequantize_fp32"]),
        )


def layer_config(weights_dtype: str = "int8", kind: str = "linear", **kwargs) -> LayerConfig:
    """A LayerConfig from keyword arguments (the quantize() API); unknown keys are errors."""
    cfg = QuantConfig({"weights_dtype": weights_dtype, **{k: v for k, v in kwargs.items() if k in _FIELDS}})
    unknown = set(kwargs) - set(_FIELDS)
    if unknown:
        raise TypeError(f"unknown quantization option(s): {', '.join(sorted(unknown))}")
    return cfg.layer("weight", kind)


OPTION_NAMES = tuple(_FIELDS)  # every sdnq quantization option comfy_sdnq knows
