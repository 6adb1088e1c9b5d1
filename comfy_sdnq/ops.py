"""torch ops over SDNQ weights, registered with the dispatcher through torch.library:

    torch.ops.sdnq.dequantize(codes, scale, zero_point, svd_up, svd_down,
                              wtype, view, out_shape, flags, hadamard, dtype) -> Tensor
    torch.ops.sdnq.linear(x, codes, scale, zero_point, svd_up, svd_down, bias,
                          wtype, view, out_shape, flags, hadamard) -> Tensor

`wtype` is a types.def id, `view` the [outer, red, inner] index space of the codes,
`out_shape` the logical weight shape and `flags` a bit set (FLAG_*). scale and
zero_point come as 3-D [outer|1, 1|levels, inner|1]. Both ops have fake
(meta) implementations, so torch.compile traces through them and ComfyUI's
shape-only loading works; the real ones run the C core, the CUDA kernels (CUDA
tensors) or the torch reference.

The linear op on CUDA tensors (linear_cuda) picks one of:
    "gemv"       M <= 16 tokens: the fused small-M kernel reads the compressed weight once; the
                 SVD branch runs in its epilogue (a low-rank kernel first, one call)
    "w8a8_int8"  COMFY_SDNQ_W8A8=int8, int8 weights: per-token int8 activations, then the int8
                 GEMM with its scale epilogue fused (kernels.i8_gemm, sm_90; see _i8_gemm_pays),
                 else cuBLASLt int8 GEMM + scale epilogue
    "w8a8_fp8"   COMFY_SDNQ_W8A8=fp8, float8_e4m3fn weights: the same in fp8 (scales and bias
                 applied by cuBLASLt where it can)
    "w8a8_fp8_fast"  COMFY_SDNQ_W8A8=fp8-fast: w8a8_fp8 with cuBLASLt's fast fp8 accumulation
                 (the tensor cores' partial sums are not promoted to fp32 as often: faster on
                 Hopper, less accurate over long K; sdnq accumulates in full precision)
    "w4a8"       COMFY_SDNQ_W4A8=1, 4-bit integer weights: re-quantized per row to int8 on the
                 fly, then as w8a8_int8: in one pass from the codes with the row scales their
                 groups' ranges give (kernels.dequantize_q8; the rows' amax / 127, as quantize_rows
                 takes it, wherever a row holds its groups' extreme codes, as sdnq's quantizer
                 leaves them), or with the SVD branch folded in, dequantize + quantize_rows
    "dequant"    otherwise: dequantize into a scratch weight (with the SVD correction fused into
                 the same kernel), then cuBLAS through F.linear
Where the SVD branch is not folded into a weight (W8A8 with native int8/fp8 weights, matmul-ready
[in, out] storage) it is added as two small GEMMs, the second accumulating into y.
"""
from __future__ import annotations

import os

import torch

from . import dtypes, kernels

FLAG_TRANSPOSED = 1      # codes stored [in, out] (matmul-ready storage)
FLAG_CODEBOOK = 2        # scale holds levels; codes index them
FLAG_SVD_TRANSPOSED = 4  # svd_up [r, rows] / svd_down [cols, r] (quantized-matmul layers)
FLAG_HADAMARD_H4 = 8     # power-of-4 Hadamard blocks use the H4 construction (sdnq >= 0.2.1)

_DEQUANT_SCHEMA = ("dequantize(Tensor codes, Tensor scale, Tensor? zero_point, Tensor? svd_up, Tensor? svd_down, "
                   "int wtype, int[] view, int[] out_shape, int flags, int hadamard, ScalarType dtype) -> Tensor")
_LINEAR_SCHEMA = ("linear(Tensor x, Tensor codes, Tensor scale, Tensor? zero_point, Tensor? svd_up, "
                  "Tensor? svd_down, Tensor? bias, int wtype, int[] view, int[] out_shape, int flags, "
                  "int hadamard) -> Tensor")


def dequantize_impl(codes, scale, zero_point, svd_up, svd_down, wtype, view, out_shape, flags, hadamard, dtype,
                    impl=None):
    """The composition sdnq's dequantizer performs: elementwise stage (in the SVD factors'
    dtype when there are any), + svd_up @ svd_down, cast, Hadamard un-rotation."""
    t = dtypes.get(int(wtype))
    view, out_shape = tuple(view), tuple(out_shape)
    mid = svd_up.dtype if svd_up is not None else dtype
    w = kernels.dequantize(t, codes, scale, zero_point, view, out_shape, mid,
                           transposed=bool(flags & FLAG_TRANSPOSED), codebook=bool(flags & FLAG_CODEBOOK), impl=impl)
    rows = out_shape[0]
    if svd_up is not None:
        up, down = (svd_up.t(), svd_down.t()) if flags & FLAG_SVD_TRANSPOSED else (svd_up, svd_down)
        kernels.svd_add_(w.view(rows, -1), up, down, impl=impl)
        if mid != dtype:
            w = w.to(dtype)
    if hadamard:
        kernels.hadamard_(w.view(rows, -1), int(hadamard), bool(flags & FLAG_HADAMARD_H4), impl=impl)
    return w


_HADAMARD_CACHE: dict = {}


def _hadamard_matrix(h: int, use_h4: bool, dtype, device) -> torch.Tensor:
    key = (h, use_h4, dtype, str(device))
    mat = _HADAMARD_CACHE.get(key)
    if mat is None:
        from .reference import hadamard_matrix

        mat = _HADAMARD_CACHE[key] = hadamard_matrix(h, use_h4, dtype, device)
    return mat


def linear_impl(x, codes, scale, zero_point, svd_up, svd_down, bias, wtype, view, out_shape, flags, hadamard,
                impl=None):
    """F.linear(x, W, bias) for the SDNQ weight W, computed as sdnq's quantized-matmul path
    does: the low-rank branch on the activations, (x down^T) up^T, instead of adding
    up @ down into the weight, and with Hadamard, the activations rotated instead of the
    weight (H is symmetric and orthonormal). Equal to F.linear on dequantize() up to
    the order of the roundings."""
    if impl in (None, "fast") and x.is_cuda and kernels.cuda_ready(x, codes, scale):
        return linear_cuda(x, codes, scale, zero_point, svd_up, svd_down, bias, wtype, view, out_shape, flags,
                           hadamard)[0]
    if svd_up is None and not hadamard:
        w = dequantize_impl(codes, scale, zero_point, None, None, wtype, view, out_shape, flags, 0, x.dtype, impl)
        return torch.nn.functional.linear(x, w, bias)
    t = dtypes.get(int(wtype))
    w = kernels.dequantize(t, codes, scale, zero_point, tuple(view), tuple(out_shape), x.dtype,
                           transposed=bool(flags & FLAG_TRANSPOSED), codebook=bool(flags & FLAG_CODEBOOK), impl=impl)
    if hadamard:
        h = int(hadamard)
        mat = _hadamard_matrix(h, bool(flags & FLAG_HADAMARD_H4), x.dtype, x.device)
        x = torch.matmul(x.unflatten(-1, (-1, h)), mat).flatten(-2)
    y = torch.nn.functional.linear(x, w, bias)
    if svd_up is not None:
        up, down = (svd_up.t(), svd_down.t()) if flags & FLAG_SVD_TRANSPOSED else (svd_up, svd_down)
        y = y + torch.nn.functional.linear(torch.nn.functional.linear(x, down.to(x.dtype)), up.to(x.dtype))
    return y


# ---------------------------------------------------------------------------
# CUDA


PATHS = ("gemv", "dequant", "w8a8_int8", "w8a8_fp8", "w8a8_fp8_fast", "w4a8")
W8A8_PATHS = ("w8a8_int8", "w8a8_fp8", "w8a8_fp8_fast", "w4a8")
# (device, output dtype, bias, fast accumulation) whose cuBLASLt refused outer-vector fp8
# scaling: one refused combination (e.g. fp32 output with a bias, which it never takes) leaves
# the others fused
_FP8_FUSED_REFUSED: set = set()


def _env_path(t, transposed: bool, codebook: bool) -> str | None:
    """the opt-in W8A8/W4A8 path the environment asks for this weight type, if any (the type is
    looked at first: the environment is read only for the types a path takes)"""
    if t.name in ("int8", "float8_e4m3fn"):
        if codebook:
            return None
        mode = os.environ.get("COMFY_SDNQ_W8A8", "").lower()
        if mode == "int8" and t.name == "int8":
            return "w8a8_int8"
        if mode in ("fp8", "fp8-fast") and t.name == "float8_e4m3fn":
            return "w8a8_fp8" if mode == "fp8" else "w8a8_fp8_fast"
        return None
    if t.is_integer and t.bits == 4 and not transposed and os.environ.get("COMFY_SDNQ_W4A8", "") not in ("", "0"):
        return "w4a8"
    return None


def _row_scaled_weight(t, codes, scale, zero_point, view, out_shape, transposed: bool, codebook: bool):
    """(b, b_kn, b_scale) when the stored codes are a per-output-row scaled int8/fp8 matrix the GEMM
    takes as they are: [N, K] codes with scale [N] ([K, N] with scale [1, N] for matmul-ready storage)"""
    if t.name not in ("int8", "float8_e4m3fn") or codebook or zero_point is not None:
        return None
    n_out, k_in = out_shape
    o, r, i = view
    if not transposed and (o, r, i) == (n_out, k_in, 1) and scale.shape[0] == n_out:
        return codes.reshape(n_out, k_in), False, scale.reshape(-1)
    if transposed and (o, r, i) == (1, k_in, n_out) and scale.shape[2] == n_out:
        return codes.reshape(k_in, n_out), True, scale.reshape(-1)
    return None


_SMS: dict = {}


def _i8_gemm_pays(M: int, N: int, K: int, device) -> bool:
    """i8_gemm where its 128 x 128 output tiles number at least the multiprocessors, or K is short;
    with fewer tiles and a long K most of the GPU would idle through K, which cuBLASLt splits
    (bench_gpu's GEMM table on an H200, M = 256: 3072x12288 / 3072x15360 1.11 / 1.08x fused
    against 1.39 / 1.33x for cuBLASLt + epilogue; 3072x3072 0.96 against 0.75x)"""
    if device.type != "cuda":
        return True  # the host emulation: i8_gemm refuses there anyway
    idx = kernels._device_index(device)
    sms = _SMS.get(idx)
    if sms is None:
        sms = _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return K <= 4096 or -(-M // 128) * -(-N // 128) >= sms


def _w8a8(x2, t, codes, scale, zero_point, view, out_shape, flags, bias, path, svd=None):
    """the W8A8 / W4A8 product, or None where cuBLASLt has no algorithm (the caller dequantizes).
    svd (up, down): folded into a re-quantized weight, which then includes it; else the caller adds
    it. Returns (y or None, whether svd was folded)."""
    transposed, codebook = bool(flags & FLAG_TRANSPOSED), bool(flags & FLAG_CODEBOOK)
    kind = "fp8" if path in ("w8a8_fp8", "w8a8_fp8_fast") else "int8"
    fast = path == "w8a8_fp8_fast"
    direct = _row_scaled_weight(t, codes, scale, zero_point, view, out_shape, transposed, codebook)
    folded = False
    if direct is not None and (t.name == "int8") == (kind == "int8"):
        b, b_kn, b_scale = direct
        b = b.view(torch.int8 if kind == "int8" else torch.float8_e4m3fn)
    else:  # re-quantize the dense weight per output row (W4A8, or a weight the GEMM can't take as is)
        folded = svd is not None and not transposed
        # int8 in one pass from the codes where nothing is folded in, with the row scales the groups'
        # ranges give (kernels.dequantize_q8); with the SVD branch folded in, two steps
        one = None
        if kind == "int8" and not transposed and not codebook and not folded:
            one = kernels.dequantize_q8(t, codes, scale, zero_point, tuple(view), tuple(out_shape), x2.dtype)
        if one is not None:
            b, b_scale = one
        else:
            w = kernels.dequantize(t, codes, scale, zero_point, tuple(view), tuple(out_shape), x2.dtype,
                                   transposed=transposed, codebook=codebook, svd=svd if folded else None)
            b, b_scale = kernels.quantize_rows(w, kind)
        b_kn = False
    q, xs = kernels.quantize_rows(x2, kind)
    if kind == "int8" and not b_kn and _i8_gemm_pays(q.shape[0], b.shape[0], q.shape[1], x2.device):
        y = kernels.i8_gemm(q, b, xs, b_scale, bias, x2.dtype)  # GEMM + scale epilogue in one kernel (sm_90)
        if y is not None:
            return y, folded
    if kind == "fp8":
        fused = (x2.device.index, x2.dtype, bias is not None, fast)
        if fused not in _FP8_FUSED_REFUSED:
            y = kernels.lt_matmul(q, b, b_kn, x2.dtype, a_scale=xs, b_scale=b_scale.to(torch.float32).contiguous(),
                                  bias=None if bias is None else bias.to(x2.dtype).contiguous(), fast_accum=fast)
            if y is not None:
                return y, folded
            _FP8_FUSED_REFUSED.add(fused)
        acc = kernels.lt_matmul(q, b, b_kn, torch.float32, fast_accum=fast)
    else:
        acc = kernels.lt_matmul(q, b, b_kn, torch.int32)
    if acc is None:
        return None, False
    return kernels.scale_epilogue(acc, xs, b_scale, bias, x2.dtype), folded


def linear_cuda(x, codes, scale, zero_point, svd_up, svd_down, bias, wtype, view, out_shape, flags, hadamard,
                path=None):
    """linear_impl on CUDA tensors: (y, the path that ran). `path` forces one of PATHS (benchmarks);
    a forced path that cannot run these inputs falls back to "dequant", and the returned name says so.

    Small M runs the fused kernel with the SVD branch in its epilogue (one call into the
    extension: a low-rank kernel, then the GEMV). The dequant path folds the SVD branch into
    the scratch weight (sdnq's dequantizer: W + up @ down, in one fused kernel where the
    layout allows), so large M pays one GEMM; the W8A8 paths add it to y as two small GEMMs."""
    t = dtypes.get(int(wtype))
    n_out, k_in = out_shape
    transposed, codebook = bool(flags & FLAG_TRANSPOSED), bool(flags & FLAG_CODEBOOK)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k_in)
    M = x2.shape[0]
    if hadamard:  # rotate the activations instead of the weight (H symmetric, orthonormal)
        x2 = kernels.hadamard_(x2.clone(memory_format=torch.contiguous_format), int(hadamard),
                               bool(flags & FLAG_HADAMARD_H4))
    if path is None:
        path = "gemv" if M <= kernels.GEMV_MAX_M else (_env_path(t, transposed, codebook) or "dequant")
    elif path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    up = down = None
    if svd_up is not None:
        up, down = (svd_up.t(), svd_down.t()) if flags & FLAG_SVD_TRANSPOSED else (svd_up, svd_down)
    y = None
    if path == "gemv" and not transposed and not codebook and x.dtype in (torch.bfloat16, torch.float16):
        y = kernels.gemv(t, codes, scale, zero_point, view, x2, bias, n_out, up, down)
        if y is not None:
            return y.reshape(*lead, n_out), path
    elif path in W8A8_PATHS and M > 0:
        y, folded = _w8a8(x2, t, codes, scale, zero_point, view, out_shape, flags, bias, path,
                          None if up is None else (up, down))
        if folded:
            up = None
    if y is None:
        path = "dequant"
        if transposed:  # dequantize the stored [in, out] layout (coalesced) and let cuBLAS transpose
            w = kernels.dequantize(t, codes, scale, zero_point, tuple(view), (k_in, n_out), x.dtype,
                                   codebook=codebook).t()
        else:  # the SVD branch folded into the weight
            w = kernels.dequantize(t, codes, scale, zero_point, tuple(view), tuple(out_shape), x.dtype,
                                   codebook=codebook, svd=None if up is None else (up, down))
            up = None
        y = torch.nn.functional.linear(x2, w, bias)
    if up is not None:  # + (x down^T) up^T: a rank-r GEMM, then one accumulating into y
        lowrank = torch.nn.functional.linear(x2, down.to(x.dtype))
        y = y.addmm_(lowrank, up.to(x.dtype).t())
    return y.reshape(*lead, n_out), path


def _register():
    lib = torch.library.Library("sdnq", "FRAGMENT")
    lib.define(_DEQUANT_SCHEMA)
    lib.define(_LINEAR_SCHEMA)

    def dequantize(codes, scale, zero_point, svd_up, svd_down, wtype, view, out_shape, flags, hadamard, dtype):
        return dequantize_impl(codes, scale, zero_point, svd_up, svd_down, wtype, view, out_shape, flags, hadamard,
                               dtype)

    def linear(x, codes, scale, zero_point, svd_up, svd_down, bias, wtype, view, out_shape, flags, hadamard):
        return linear_impl(x, codes, scale, zero_point, svd_up, svd_down, bias, wtype, view, out_shape, flags,
                           hadamard)

    lib.impl("dequantize", dequantize, "CompositeExplicitAutograd")
    lib.impl("linear", linear, "CompositeExplicitAutograd")

    @torch.library.register_fake("sdnq::dequantize", lib=lib)
    def _(codes, scale, zero_point, svd_up, svd_down, wtype, view, out_shape, flags, hadamard, dtype):
        return codes.new_empty(tuple(out_shape), dtype=dtype)

    @torch.library.register_fake("sdnq::linear", lib=lib)
    def _(x, codes, scale, zero_point, svd_up, svd_down, bias, wtype, view, out_shape, flags, hadamard):
        return x.new_empty((*x.shape[:-1], out_shape[0]))

    return lib


def _registered() -> bool:
    try:
        torch.ops.sdnq.dequantize.default  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False


_LIB = None if _registered() else _register()  # a second copy of the package reuses the first's ops


def dequantize(codes, scale, zero_point, svd_up, svd_down, wtype, view, out_shape, flags, hadamard, dtype):
    return torch.ops.sdnq.dequantize(codes, scale, zero_point, svd_up, svd_down, int(wtype), list(view),
                                     list(out_shape), int(flags), int(hadamard), dtype)


def linear(x, codes, scale, zero_point, svd_up, svd_down, bias, wtype, view, out_shape, flags, hadamard):
    return torch.ops.sdnq.linear(x, codes, scale, zero_point, svd_up, svd_down, bias, int(wtype), list(view),
                                 list(out_shape), int(flags), int(hadamard))
