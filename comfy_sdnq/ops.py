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


def _register():
    lib = torch.library.Library("sdnq", "FRAGMENT")
    lib.define(_DEQUANT_SCHEMA)
    lib.define(_LINEAR_SCHEMA)

    def dequantize(codes, scale, zero_point, svd_up, svd_down, wtype, view, out_shape, flags, hadamard, dtype):
        return dequantize_impl(codes, scale, zero_point, svd_up, svd_down, wtype, view, out_shape, flags, hadamard,
                               dtype)

    def linear(x, codes, scale, zero_point, svd_up, svd_down, bias, wtype, view, out_shape, flags, hadamard):
        w = dequantize_impl(codes, scale, zero_point, svd_up, svd_down, wtype, view, out_shape, flags, hadamard,
                            x.dtype)
        return torch.nn.functional.linear(x, w, bias)

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
