"""Run the core's routines on tensors: the C extension when it is built and the
tensors live on the CPU, the pure-torch reference otherwise.

`impl` selects an implementation explicitly (tests use all three):
    "fast"   C fast path (threads, lookup tables)
    "ref"    C scalar reference
    "torch"  comfy_sdnq.reference
None picks "fast" when possible. Environment:
    COMFY_SDNQ_REQUIRE_EXT=1   fail instead of falling back when the extension is missing
"""
from __future__ import annotations

import os
import warnings

import torch

from . import reference
from .dtypes import DTYPE_NAMES, SdnqType
from .errors import SdnqError

try:
    from . import _C
    _IMPORT_ERROR = None
except ImportError as exc:  # not built: pure-torch fallback
    _C = None
    _IMPORT_ERROR = exc

if _C is None and os.environ.get("COMFY_SDNQ_REQUIRE_EXT", "") not in ("", "0"):
    raise ImportError(f"comfy_sdnq: the C extension is required (COMFY_SDNQ_REQUIRE_EXT) but failed to import: "
                      f"{_IMPORT_ERROR}")

_warned = False
_DT_IDS = {name: i for i, name in enumerate(_C.dtype_names())} if _C is not None else {}
IMPLS = ("fast", "ref", "torch")


def backend() -> str:
    """'c' when the extension is loaded, 'torch' when the reference path runs"""
    return "c" if _C is not None else "torch"


def _fallback_warning():
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"comfy_sdnq: C extension not available ({_IMPORT_ERROR}); using the pure-torch reference "
                      f"path, which is slower. Build it with `pip install -e .` in the comfy_sdnq checkout.",
                      RuntimeWarning, stacklevel=3)


def _pick(impl: str | None, *tensors: torch.Tensor) -> str:
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    on_cpu = all(t is None or t.device.type == "cpu" for t in tensors)
    if impl in (None, "fast", "ref"):
        if _C is None:
            if impl is not None:
                raise RuntimeError(f"comfy_sdnq: impl={impl!r} needs the C extension ({_IMPORT_ERROR})")
            _fallback_warning()
            return "torch"
        if not on_cpu:
            if impl is not None:
                raise RuntimeError(f"comfy_sdnq: impl={impl!r} runs on CPU tensors only")
            return "torch"
        return impl or "fast"
    return impl


def _dt(dtype: torch.dtype) -> int:
    return _DT_IDS[DTYPE_NAMES[dtype]]


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


# ---------------------------------------------------------------------------


def unpack(t: SdnqType, words: torch.Tensor, n: int, impl: str | None = None) -> torch.Tensor:
    """file words of a packed type -> n stored codes (int32)"""
    impl = _pick(impl, words)
    if impl == "torch":
        return reference.unpack(t, words, n)
    words = words.contiguous()
    codes = torch.empty(n, dtype=torch.int32)
    _C.unpack(t.id, words.data_ptr(), _nbytes(words), n, codes.data_ptr(), int(impl == "fast"), _threads())
    return codes


def pack(t: SdnqType, codes: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """stored codes -> file words (sdnq's packed shape and storage dtype)"""
    impl = _pick(impl, codes)
    if impl == "torch":
        return reference.pack(t, codes)
    codes = codes.to(torch.int32).contiguous().reshape(-1)
    n = codes.numel()
    out = torch.empty(t.packed_shape(n) if n % t.block_elems == 0 else (0,), dtype=t.storage_dtype)
    _C.pack(t.id, codes.data_ptr(), n, out.data_ptr(), _nbytes(out), int(impl == "fast"), _threads())
    return out


def dequantize(t: SdnqType, raw: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
               view: tuple[int, int, int], out_shape: tuple[int, ...], out_dtype: torch.dtype,
               transposed: bool = False, codebook: bool = False, impl: str | None = None) -> torch.Tensor:
    """Elementwise stage: codes in the [outer, red, inner] view -> dense weight of out_shape.

    raw: the file tensor (packed words or native elements). scale, zero_point: 3-D, broadcastable
    as [outer|1, 1, inner|1]; with a codebook scale holds [outer|1, levels, inner|1].
    transposed: the view is [1, in, out] of a logical [out, in] weight."""
    o, r, i = view
    if int(torch.Size(out_shape).numel()) != o * r * i:
        raise SdnqError(f"dequantize: output shape {tuple(out_shape)} does not hold {o}x{r}x{i} codes")
    impl = _pick(impl, raw, scale, zero_point)
    if impl == "torch":
        if not t.is_packed and raw.dtype != t.storage_dtype:  # native codes passed as raw bytes
            raw = raw.view(t.storage_dtype)
        codes = reference.unpack(t, raw, o * r * i) if t.is_packed else raw.reshape(-1)
        out = reference.dequantize(t, codes, scale, zero_point, view, codebook, out_dtype)
        if transposed:
            out = out.reshape(r, i).t()
        return out.reshape(out_shape).contiguous()
    raw = raw.contiguous()
    ss = (_bstride(scale, 0), _bstride(scale, 2), scale.stride(1))
    zs = (0, 0) if zero_point is None else (_bstride(zero_point, 0), _bstride(zero_point, 2))
    os_ = (0, 1, r) if transposed else (r * i, i, 1)
    out = torch.empty(out_shape, dtype=out_dtype)
    _C.dequantize(t.id, o, r, i, raw.data_ptr(), _nbytes(raw), scale.data_ptr(), _dt(scale.dtype), _span(scale),
                  *ss, _ptr(zero_point), 0 if zero_point is None else _span(zero_point), *zs, int(codebook),
                  out.data_ptr(), _dt(out_dtype), out.numel(), *os_, int(impl == "fast"), _threads())
    return out


def _bstride(t: torch.Tensor, dim: int) -> int:
    """stride of dim, 0 where it broadcasts"""
    return t.stride(dim) if t.shape[dim] > 1 else 0


def svd_add_(w: torch.Tensor, up: torch.Tensor, down: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """w [rows, cols] += up [rows, r] @ down [r, cols] (any strides), fp32 accumulation, in place"""
    impl = _pick(impl, w, up, down)
    if impl == "torch" or not w.is_contiguous():
        return reference.svd_add_(w, up, down)
    rows, cols = w.shape
    _C.svd_add(w.data_ptr(), _dt(w.dtype), rows, cols, w.numel(), up.shape[1], up.data_ptr(), _dt(up.dtype),
               _span(up), up.stride(0), up.stride(1), down.data_ptr(), _dt(down.dtype), _span(down),
               down.stride(0), down.stride(1), int(impl == "fast"), _threads())
    return w


def _span(t: torch.Tensor) -> int:
    """elements reachable through t's strides (what the C side may index)"""
    return 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) if t.numel() else 0


def hadamard_(w: torch.Tensor, h: int, use_h4: bool, impl: str | None = None) -> torch.Tensor:
    """rows of a contiguous w [rows, cols], in blocks of h columns, become block @ H, in place"""
    impl = _pick(impl, w)
    if impl == "torch":
        return reference.hadamard_(w, h, use_h4)
    rows, cols = w.shape
    _C.hadamard(w.data_ptr(), _dt(w.dtype), rows, cols, w.numel(), h, 1 if use_h4 else 0, int(impl == "fast"),
                _threads())
    return w


def quantize(t: SdnqType, w: torch.Tensor, view: tuple[int, int, int], tensorwise: bool, scale_dtype: torch.dtype,
             impl: str | None = None):
    """fp32 weights in the [outer, red, inner] view -> (stored codes int32, scale, zero_point),
    scale/zero_point shaped [outer, 1, inner] ([1, 1, 1] tensor-wise)."""
    impl = _pick(impl, w)
    if impl == "torch":
        return reference.quantize(t, w, view, tensorwise, scale_dtype)
    o, r, i = view
    w = w.to(torch.float32).contiguous()
    gshape = (1, 1, 1) if tensorwise else (o, 1, i)
    scale = torch.empty(gshape, dtype=scale_dtype)
    zero_point = torch.empty(gshape, dtype=scale_dtype) if t.is_unsigned else None
    codes = torch.empty((o, r, i), dtype=torch.int32)
    _C.quantize(t.id, o, r, i, int(tensorwise), w.data_ptr(), w.numel(), _dt(scale_dtype), scale.data_ptr(),
                _ptr(zero_point), scale.numel(), codes.data_ptr(), codes.numel(), int(impl == "fast"), _threads())
    return codes, scale, zero_point


def decode(t: SdnqType, codes: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """stored codes of a packed type -> fp32 values (signed integers without their offset)"""
    impl = _pick(impl, codes)
    if impl == "torch":
        if t.family in ("FLOATX", "UFLOATX"):
            return reference.floatx_decode(t, codes)
        return (codes.to(torch.int64) + (int(t.min) if t.family == "INT" else 0)).to(torch.float32)
    codes = codes.to(torch.int32).contiguous()
    out = torch.empty(codes.shape, dtype=torch.float32)
    _C.decode(t.id, codes.data_ptr(), codes.numel(), out.data_ptr())
    return out


def encode(t: SdnqType, x: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """fp32 values -> custom float codes (FLOATX / UFLOATX types)"""
    impl = _pick(impl, x)
    if impl == "torch":
        return reference.floatx_encode(t, x)
    x = x.to(torch.float32).contiguous()
    out = torch.empty(x.shape, dtype=torch.int32)
    _C.encode(t.id, x.data_ptr(), x.numel(), out.data_ptr())
    return out
