"""Run the core's routines on tensors: the C extension when it is built and the
tensors live on the CPU, the CUDA extension (comfy_sdnq._C_cuda) for CUDA tensors,
the pure-torch reference otherwise.

`impl` selects an implementation explicitly (tests use all three):
    "fast"   C fast path (threads, lookup tables); on CUDA tensors the CUDA kernels
    "ref"    C scalar reference (CPU tensors only)
    "torch"  comfy_sdnq.reference
None picks "fast" when possible. Routines without a CUDA kernel (packing, quantization)
run the torch reference on CUDA tensors. Environment:
    COMFY_SDNQ_REQUIRE_EXT=1   fail instead of falling back when the extension is missing

The CUDA-only building blocks of the linear op (gemv, quantize_rows, lt_matmul,
scale_epilogue, i8_gemm) are at the end; they launch on torch's current stream and never
synchronize, so they can be captured into CUDA graphs.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import torch

from . import reference
from .dtypes import DTYPE_NAMES, TORCH_DTYPES, SdnqType
from .errors import SdnqError

try:
    from . import _C
    _IMPORT_ERROR = None
except ImportError as exc:  # not built: pure-torch fallback
    _C = None
    _IMPORT_ERROR = exc

try:
    from . import _C_cuda
    _CUDA_IMPORT_ERROR = None
except ImportError as exc:  # built without nvcc, or no CUDA runtime: the torch reference runs on CUDA tensors
    _C_cuda = None
    _CUDA_IMPORT_ERROR = exc

if _C is None and os.environ.get("COMFY_SDNQ_REQUIRE_EXT", "") not in ("", "0"):
    raise ImportError(f"comfy_sdnq: the C extension is required (COMFY_SDNQ_REQUIRE_EXT) but failed to import: "
                      f"{_IMPORT_ERROR}")

_warned = False
_cuda_warned = False
# dtype ids: the core's SDNQ_DTYPES order (dtypes.TORCH_DTYPES lists it in the same order)
_DT_IDS = ({name: i for i, name in enumerate(_C.dtype_names())} if _C is not None
           else {name: i for i, name in enumerate(TORCH_DTYPES)})
IMPLS = ("fast", "ref", "torch")
# devices whose tensors the CUDA kernels take; tests/test_cuda_emu.py adds "cpu" to run them
# through tests/cuda_emu's host emulation
_CUDA_DEVICE_TYPES = ("cuda",)


def backend() -> str:
    """'c' when the extension is loaded, 'torch' when the reference path runs"""
    return "c" if _C is not None else "torch"


def cuda_backend() -> str:
    """'cuda' when comfy_sdnq._C_cuda is loaded (CUDA tensors run its kernels), else 'torch'"""
    return "cuda" if _C_cuda is not None else "torch"


def _cuda_fallback_warning():
    global _cuda_warned
    if not _cuda_warned:
        _cuda_warned = True
        warnings.warn(f"comfy_sdnq: CUDA extension not available ({_CUDA_IMPORT_ERROR}); CUDA tensors use the "
                      f"pure-torch reference path, which is slower. Build it where nvcc is installed with "
                      f"`pip install -e .` in the comfy_sdnq checkout.", RuntimeWarning, stacklevel=3)


def _fallback_warning():
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"comfy_sdnq: C extension not available ({_IMPORT_ERROR}); using the pure-torch reference "
                      f"path, which is slower. Build it with `pip install -e .` in the comfy_sdnq checkout.",
                      RuntimeWarning, stacklevel=3)


def _pick(impl: str | None, *tensors: torch.Tensor, cuda: bool = False) -> str:
    """the implementation to run: "fast", "ref", "torch", or "cuda" (only for routines passing
    cuda=True, when every tensor is on a CUDA device and impl is None or "fast")"""
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if cuda and impl in (None, "fast") and _C_cuda is not None and all(t is None or t.is_cuda for t in tensors):
        return "cuda"  # the common case on a GPU, decided first: this runs on every linear call
    on_cpu = all(t is None or t.device.type == "cpu" for t in tensors)
    on_cuda = all(t is None or t.device.type in _CUDA_DEVICE_TYPES for t in tensors)
    if cuda and impl in (None, "fast") and on_cuda and (not on_cpu or "cpu" in _CUDA_DEVICE_TYPES):
        if _C_cuda is not None:
            return "cuda"
        if impl is not None:
            raise RuntimeError(f"comfy_sdnq: impl='fast' on CUDA tensors needs comfy_sdnq._C_cuda "
                               f"({_CUDA_IMPORT_ERROR})")
        _cuda_fallback_warning()
        return "torch"
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
               transposed: bool = False, codebook: bool = False, impl: str | None = None,
               svd: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Elementwise stage: codes in the [outer, red, inner] view -> dense weight of out_shape.

    raw: the file tensor (packed words or native elements). scale, zero_point: 3-D, broadcastable
    as [outer|1, 1, inner|1]; with a codebook scale holds [outer|1, levels, inner|1].
    transposed: the view is [1, in, out] of a logical [out, in] weight.
    svd: (up [rows, r], down [r, cols]), any strides: then + up @ down (fp32, rounded once to
    out_dtype) on the [rows, cols] result, fused into the dequantization on CUDA tensors."""
    o, r, i = view
    if int(torch.Size(out_shape).numel()) != o * r * i:
        raise SdnqError(f"dequantize: output shape {tuple(out_shape)} does not hold {o}x{r}x{i} codes")
    impl = _pick(impl, raw, scale, zero_point, cuda=True)
    if impl == "torch":
        if not t.is_packed and raw.dtype != t.storage_dtype:  # native codes passed as raw bytes
            raw = raw.view(t.storage_dtype)
        codes = reference.unpack(t, raw, o * r * i) if t.is_packed else raw.reshape(-1)
        out = reference.dequantize(t, codes, scale, zero_point, view, codebook, out_dtype)
        if transposed:
            out = out.reshape(r, i).t()
        out = out.reshape(out_shape).contiguous()
        if svd is not None:
            reference.svd_add_(out.view(out_shape[0], -1), svd[0], svd[1])
        return out
    raw = raw.contiguous()
    out = torch.empty(out_shape, dtype=out_dtype, device=raw.device)
    args = _dequant_args(t, raw, scale, zero_point, view, codebook, out, out_dtype,
                         (0, 1, r) if transposed else (r * i, i, 1))
    if impl == "cuda" and svd is not None and not transposed:
        up, down = svd
        rows = out_shape[0]
        _cuda_call(_C_cuda.dequantize_svd, raw, *args, rows, out.numel() // rows if rows else 0, up.shape[1],
                   up.data_ptr(), _dt(up.dtype), _span(up), up.stride(0), up.stride(1), down.data_ptr(),
                   _dt(down.dtype), _span(down), down.stride(0), down.stride(1))
        return out
    if impl == "cuda":
        _cuda_call(_C_cuda.dequantize, raw, *args)
    else:
        _C.dequantize(*args, int(impl == "fast"), _threads())
    if svd is not None:
        svd_add_(out.view(out_shape[0], -1), svd[0], svd[1], impl=None if impl == "cuda" else impl)
    return out


def dequantize_q8(t: SdnqType, raw: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                  view: tuple[int, int, int], out_shape: tuple[int, int], dtype: torch.dtype,
                  row_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(q int8 [rows, cols], row scales fp32 [rows]): the weight dequantize() gives in dtype,
    re-quantized per row to int8 as quantize_rows() does, in one CUDA pass that never writes the
    dequantized weight. row_scale given: those scales (quantize_rows' own scales of that weight
    give its bits); None: derived from the groups' ranges (the row's largest |w| at the groups'
    extreme codes, / 127: quantize_rows' scale wherever each row holds a group's extreme code, and
    never below it). None where the kernel does not take the layout (4- and 8-bit integer codes in
    groups of whole 8-code units; nothing ran: the caller runs the two steps)."""
    o, r, i = view
    rows, cols = out_shape
    if _C_cuda is None or rows * cols != o * r * i or raw.device.type not in _CUDA_DEVICE_TYPES:
        return None
    raw = raw.contiguous()
    derive = row_scale is None
    if derive:
        row_scale = torch.empty((rows,), dtype=torch.float32, device=raw.device)
    else:
        row_scale = row_scale.to(torch.float32).contiguous()
    q = torch.empty((rows, cols), dtype=torch.int8, device=raw.device)
    args = _dequant_args(t, raw, scale, zero_point, view, False, q, dtype, (r * i, i, 1))
    st = _cuda_call(_C_cuda.dequantize_q8, raw, *args, rows, cols, row_scale.data_ptr(), row_scale.numel(),
                    int(derive))
    return (q, row_scale) if st == 0 else None


def _dequant_args(t: SdnqType, raw: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                  view: tuple[int, int, int], codebook: bool, out: torch.Tensor, out_dtype: torch.dtype,
                  out_strides: tuple[int, int, int]) -> tuple:
    """the extension's dequantize arguments but the stream: the type, the view, the codes, scale
    and zero point with their broadcast strides, the output (out_dtype: its dtype, or the rounding
    of dequantize_q8's weight) with its strides over the view"""
    o, r, i = view
    ss = (_bstride(scale, 0), _bstride(scale, 2), scale.stride(1))
    zs = (0, 0) if zero_point is None else (_bstride(zero_point, 0), _bstride(zero_point, 2))
    return (t.id, o, r, i, raw.data_ptr(), _nbytes(raw), scale.data_ptr(), _dt(scale.dtype), _span(scale), *ss,
            _ptr(zero_point), 0 if zero_point is None else _span(zero_point), *zs, int(codebook), out.data_ptr(),
            _dt(out_dtype), out.numel(), *out_strides)


def _bstride(t: torch.Tensor, dim: int) -> int:
    """stride of dim, 0 where it broadcasts"""
    return t.stride(dim) if t.shape[dim] > 1 else 0


def svd_add_(w: torch.Tensor, up: torch.Tensor, down: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """w [rows, cols] += up [rows, r] @ down [r, cols] (any strides), fp32 accumulation, in place"""
    impl = _pick(impl, w, up, down, cuda=True)
    if impl == "torch" or not w.is_contiguous():
        return reference.svd_add_(w, up, down)
    rows, cols = w.shape
    args = (w.data_ptr(), _dt(w.dtype), rows, cols, w.numel(), up.shape[1], up.data_ptr(), _dt(up.dtype),
            _span(up), up.stride(0), up.stride(1), down.data_ptr(), _dt(down.dtype), _span(down),
            down.stride(0), down.stride(1))
    if impl == "cuda":
        _cuda_call(_C_cuda.svd_add, w, *args)
    else:
        _C.svd_add(*args, int(impl == "fast"), _threads())
    return w


def _span(t: torch.Tensor) -> int:
    """elements reachable through t's strides (what the C side may index)"""
    if t.is_contiguous():
        return t.numel()
    return 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) if t.numel() else 0


def hadamard_(w: torch.Tensor, h: int, use_h4: bool, impl: str | None = None) -> torch.Tensor:
    """rows of a contiguous w [rows, cols], in blocks of h columns, become block @ H, in place"""
    impl = _pick(impl, w, cuda=True)
    if impl == "torch":
        return reference.hadamard_(w, h, use_h4)
    rows, cols = w.shape
    args = (w.data_ptr(), _dt(w.dtype), rows, cols, w.numel(), h, 1 if use_h4 else 0)
    if impl == "cuda":
        _cuda_call(_C_cuda.hadamard, w, *args)
    else:
        _C.hadamard(*args, int(impl == "fast"), _threads())
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


# ---------------------------------------------------------------------------
# CUDA: launching, and the building blocks of the linear op (ops.py composes them)


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_get_device = getattr(torch._C, "_cuda_getDevice", None)


def _cuda_call(fn, like: torch.Tensor, *args):
    """fn(*args, stream) on torch's current stream of like's device (the raw stream handle
    through torch's C API where it has one: this runs on every small-M linear call)"""
    dev = like.device
    if dev.type != "cuda":  # the host emulation of the tests
        return fn(*args, 0)
    idx = dev.index
    if _raw_stream is not None and _get_device is not None:
        if idx is None or idx == _get_device():
            return fn(*args, _raw_stream(_get_device() if idx is None else idx))
        with torch.cuda.device(dev):
            return fn(*args, _raw_stream(idx))
    if idx is not None and idx != torch.cuda.current_device():
        with torch.cuda.device(dev):
            return fn(*args, torch.cuda.current_stream(dev).cuda_stream)
    return fn(*args, torch.cuda.current_stream(dev).cuda_stream)


def cuda_ready(*tensors: torch.Tensor) -> bool:
    """the CUDA extension is loaded and every tensor is on a CUDA device"""
    return _C_cuda is not None and all(t is None or t.device.type in _CUDA_DEVICE_TYPES for t in tensors)


GEMV_MAX_M = 16  # _C_cuda.GEMV_MAX_M


_NO_SVD = (0,) * 13


def gemv(t: SdnqType, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
         view: tuple[int, int, int], x2: torch.Tensor, bias: torch.Tensor | None, n_out: int,
         up: torch.Tensor | None = None, down: torch.Tensor | None = None) -> torch.Tensor | None:
    """y [M, n_out] = x2 [M, K] @ W^T (+ bias) (+ (x2 @ down^T) @ up^T) by the fused small-M
    kernel, W the weight the [outer, red, 1] view of `codes` describes ([n_out, K] row-major
    codes), up [n_out, r] and down [r, K] of any strides (the SVD branch, added in fp32 before
    the one rounding); None when the kernel does not take these inputs (nothing ran: the caller
    dequantizes and runs a GEMM). One call into the extension validates and launches."""
    o, r, i = view
    M, K = x2.shape
    if _C_cuda is None or i != 1 or o * r != n_out * K or M < 1 or M > GEMV_MAX_M:
        return None
    dev = x2.device
    if dev.type not in _CUDA_DEVICE_TYPES or codes.device != dev:
        return None
    if x2.stride(-1) != 1 or x2.stride(0) % 8 or x2.data_ptr() % 16:
        x2 = x2.contiguous() if x2.stride(-1) != 1 or x2.stride(0) % 8 else x2.clone()
    if bias is not None and (bias.dtype != x2.dtype or bias.stride(-1) != 1):
        bias = bias.to(x2.dtype).contiguous()
    y = torch.empty((M, n_out), dtype=x2.dtype, device=dev)
    # one fp32 scratch: the split-K partial sums, then the SVD branch's partial sums of x @ down^T
    nwork = _C_cuda.gemv_work_floats(M, n_out)
    rank = 0 if up is None else up.shape[1]
    nlow = _C_cuda.gemv_lowrank_floats(M, rank) if rank else 0
    scratch = torch.empty((nwork + nlow,), dtype=torch.float32, device=dev)
    if up is not None:
        lowrank = scratch[nwork:]
        svd = (rank, up.data_ptr(), _dt(up.dtype), _span(up), up.stride(0), up.stride(1), down.data_ptr(),
               _dt(down.dtype), _span(down), down.stride(0), down.stride(1), lowrank.data_ptr(), lowrank.numel())
    else:
        svd = _NO_SVD
    st = _cuda_call(_C_cuda.gemv, x2, t.id, M, n_out, K, x2.data_ptr(), _dt(x2.dtype), (M - 1) * x2.stride(0) + K,
                    x2.stride(0), y.data_ptr(), M * n_out, n_out, _ptr(bias), 0 if bias is None else n_out,
                    codes.data_ptr(), codes.numel() * codes.element_size(), r, scale.data_ptr(), _dt(scale.dtype),
                    _span(scale), _bstride(scale, 0), _ptr(zero_point),
                    0 if zero_point is None else _span(zero_point),
                    0 if zero_point is None else _bstride(zero_point, 0), *svd, scratch.data_ptr(), nwork)
    return y if st == 0 else None


_Q_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


def quantize_rows(x2: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """per-row symmetric quantization as sdnq does for activations: (q [rows, cols] int8 or
    float8_e4m3fn, scale [rows] fp32), kind "int8" (amax/127, round half even) or "fp8" (amax/448)"""
    rows, cols = x2.shape
    if x2.stride(-1) != 1 or x2.stride(0) < cols:
        x2 = x2.contiguous()
    qdt = _Q_DTYPES[kind]
    q = torch.empty((rows, cols), dtype=qdt, device=x2.device)
    s = torch.empty((rows,), dtype=torch.float32, device=x2.device)
    _cuda_call(_C_cuda.quantize_rows, x2, x2.data_ptr(), _dt(x2.dtype), rows, cols, x2.stride(0) if rows > 1 else cols,
               _span(x2), q.data_ptr(), _dt(qdt), q.numel(), s.data_ptr(), s.numel())
    return q, s


def _device_index(device: torch.device) -> int:
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if device.type == "cuda" else 0


_WORKSPACE: dict = {}
WORKSPACE_BYTES = 32 << 20  # cuBLASLt's recommendation for Hopper


def _workspace(device: torch.device) -> torch.Tensor:
    """one cuBLASLt workspace per device, allocated on first use (warm up before graph capture)"""
    key = (device.type, _device_index(device))
    ws = _WORKSPACE.get(key)
    if ws is None:
        ws = _WORKSPACE[key] = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
    return ws


def lt_matmul(a: torch.Tensor, b: torch.Tensor, b_kn: bool, out_dtype: torch.dtype,
              a_scale: torch.Tensor | None = None, b_scale: torch.Tensor | None = None,
              bias: torch.Tensor | None = None, fast_accum: bool = False) -> torch.Tensor | None:
    """d [M, N] = a [M, K] @ b^T through cuBLASLt: a, b int8 (out int32) or float8_e4m3fn (out
    bf16/fp16/fp32; optional per-row fp32 scales a_scale [M], b_scale [N] and bias [N] applied by
    cuBLASLt). b is [N, K], or [K, N] with b_kn. None where cuBLASLt has no algorithm for it."""
    M, K = a.shape
    N = b.shape[1] if b_kn else b.shape[0]
    a, b = a.contiguous(), b.contiguous()
    d = torch.empty((M, N), dtype=out_dtype, device=a.device)
    ws = _workspace(a.device)
    dev = _device_index(a.device)
    try:
        _cuda_call(_C_cuda.lt_matmul, a, dev, M, N, K, _dt(a.dtype), a.data_ptr(), a.numel(), b.data_ptr(), b.numel(),
                   int(b_kn), d.data_ptr(), _dt(out_dtype), d.numel(), _ptr(a_scale), _ptr(b_scale), _ptr(bias),
                   ws.data_ptr(), ws.numel(), int(fast_accum))
    except _C_cuda.SdnqError as exc:
        if len(exc.args) > 1 and exc.args[1] == _C_cuda.UNSUPPORTED:
            return None
        raise
    return d


_I8_GEMM_DEVICES: dict = {}


def i8_gemm_available(device: torch.device) -> bool:
    """whether i8_gemm runs on this device (compute capability 9.0 and sm_90a code in the build)"""
    key = (device.type, _device_index(device))
    ok = _I8_GEMM_DEVICES.get(key)
    if ok is None:  # (the host emulation of the tests answers for its CPU "device": no)
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            ok = _I8_GEMM_DEVICES[key] = bool(_C_cuda.i8_gemm_available())
    return ok


def i8_gemm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
            bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor | None:
    """out [M, N] = (a [M, K] @ b [N, K]^T) * a_scale[m] * b_scale[n] (+ bias[n]) for int8 a and b in
    one kernel: the bits of lt_matmul's int32 product through scale_epilogue, without the int32
    round trip. b_scale a 1-D view of any arithmetic dtype and stride. None where it does not run:
    not i8_gemm_available, or refused by the launcher (fp32 out, K % 16, N % 8, an operand not
    16-byte aligned): the caller keeps lt_matmul."""
    M, K = a.shape
    N = b.shape[0]
    if not i8_gemm_available(a.device):
        return None
    a, b = a.contiguous(), b.contiguous()
    if bias is not None:
        bias = bias.to(out_dtype).contiguous()
    a_scale = a_scale.to(torch.float32).contiguous()
    out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    st = _cuda_call(_C_cuda.i8_gemm, a, M, N, K, a.data_ptr(), a.numel(), b.data_ptr(), b.numel(), a_scale.data_ptr(),
                    a_scale.numel(), b_scale.data_ptr(), _dt(b_scale.dtype), _span(b_scale), b_scale.stride(0),
                    _ptr(bias), 0 if bias is None else bias.numel(), out.data_ptr(), _dt(out_dtype), out.numel())
    return out if st == 0 else None


def scale_epilogue(acc: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor, bias: torch.Tensor | None,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """acc [M, N] (int32/fp32) * a_scale[m] * b_scale[n] (+ bias[n]) -> out_dtype, b_scale a 1-D
    view of any arithmetic dtype and stride"""
    M, N = acc.shape
    out = torch.empty((M, N), dtype=out_dtype, device=acc.device)
    if bias is not None:
        bias = bias.to(out_dtype).contiguous()
    a_scale = a_scale.to(torch.float32).contiguous()
    _cuda_call(_C_cuda.scale_epilogue, acc, M, N, acc.data_ptr(), _dt(acc.dtype), acc.numel(), a_scale.data_ptr(),
               a_scale.numel(), b_scale.data_ptr(), _dt(b_scale.dtype), _span(b_scale), b_scale.stride(0),
               _ptr(bias), 0 if bias is None else bias.numel(), out.data_ptr(), _dt(out_dtype), out.numel())
    return out
