"""torch ops over SDNQ weights, registered with the dispatcher through torch.library:

    torch.ops.sdnq.dequantize(codes, scale, zero_point, svd_up, svd_down,
                              wtype, view, out_shape, flags, hadamard, dtype) -> Tensor
    torch.ops.sdnq.linear(x, codes, scale, zero_point, svd_up, svd_down, bias,
                          wtype, view, out_shape, flags, hadamard) -> Tensor

`wtype` is a types.def id, `view` the [outer, red, inner] index space of the codes,
`out_shape` the logical weight shape and `flags` a bit set (FLAG_*). scale and
zero_point come as 3-D [outer|1, 1|levels, inner|1]. Both ops have fake
(meta) implementations, so torch.compile traces through them and ComfyUI's
shape-only loading works; the real ones run the C core (or the torch reference).
"""
from __future__ import annotations

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
