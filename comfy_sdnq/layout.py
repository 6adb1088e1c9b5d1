"""The SDNQ layout on comfy-kitchen's QuantizedTensor: what ComfyUI streams, pins and
offloads, holding the file's own code tensor and every side tensor of the layer.

    qt = QuantizedTensor(codes, "SDNQLayout", SDNQParams(scale=..., orig_dtype=torch.bfloat16,
                         orig_shape=(3072, 3072), wtype=..., view=(...), ...))
    qt.dequantize()            # dense weight, as the writing sdnq version produces it
    F.linear(x, qt, bias)      # torch.ops.sdnq.linear

It knows no layers and no files.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from comfy_kitchen.tensor import (BaseLayoutParams, QuantizedLayout, QuantizedTensor, dequantize_args,
                                  register_layout_class, register_layout_op)

from . import dtypes, ops
from .errors import SdnqUnsupportedError

LAYOUT = "SDNQLayout"

_TENSORS = ("scale", "zero_point", "svd_up", "svd_down", "scale_2", "scale_zero_point", "zero_point_scale",
            "zero_point_2")


@dataclass(frozen=True)
class SDNQParams(BaseLayoutParams):
    """Side tensors and static metadata of one SDNQ layer.

    Tensors (file tensors, unchanged): scale [groups] (or codebook levels), zero_point
    (unsigned types), svd_up/svd_down (low-rank correction), and for double-quantized
    scales: scale holds codes of scale_type with scale_2 (+ scale_zero_point), likewise
    zero_point with zero_point_scale (+ zero_point_2).

    view: [outer, red, inner] of the stored codes; groups are (outer, inner).
    scale_shape: shape of the (dequantized) scale and zero_point.
    stored_t: codes are stored [in, out] (sdnq's matmul-ready storage).
    logical_t: this tensor stands for the transpose of the weight (aten.t was applied).
    """

    zero_point: torch.Tensor | None = None
    svd_up: torch.Tensor | None = None
    svd_down: torch.Tensor | None = None
    scale_2: torch.Tensor | None = None
    scale_zero_point: torch.Tensor | None = None
    zero_point_scale: torch.Tensor | None = None
    zero_point_2: torch.Tensor | None = None
    wtype: int = 0
    view: tuple = (1, 1, 1)
    scale_shape: tuple = ()
    stored_t: bool = False
    codebook: bool = False
    svd_transposed: bool = False
    hadamard: int = 0
    hadamard_h4: bool = True
    scale_type: int = 0
    zero_point_type: int = 0
    codebook_scale: bool = False
    logical_t: bool = False

    def _tensor_fields(self) -> list[str]:
        return [f for f in _TENSORS if getattr(self, f) is not None]

    @property
    def weight_type(self) -> dtypes.SdnqType:
        return dtypes.get(self.wtype)

    @property
    def flags(self) -> int:
        return ((ops.FLAG_TRANSPOSED if self.stored_t else 0) | (ops.FLAG_CODEBOOK if self.codebook else 0)
                | (ops.FLAG_SVD_TRANSPOSED if self.svd_transposed else 0)
                | (ops.FLAG_HADAMARD_H4 if self.hadamard_h4 else 0))

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """shape of the weight itself (orig_shape is its transpose when logical_t)"""
        s = tuple(self.orig_shape)
        return (s[1], s[0]) if self.logical_t else s

    def nbytes(self, qdata: torch.Tensor) -> int:
        """every byte that streams with the weight: codes and all side tensors"""
        return qdata.nbytes + sum(getattr(self, f).nbytes for f in self._tensor_fields())

    # Derived values that every F.linear on the weight needs (aten.t, then addmm/mm), made once
    # per params object and kept in its __dict__ beside the frozen fields (params never change;
    # moving or copying a weight makes new params). Only forward references: the transposed
    # params do not point back, so no reference cycle keeps device tensors alive.

    def transposed_params(self) -> SDNQParams:
        """these params with logical_t flipped (what aten.t makes of the weight). Not named
        `transposed`: comfy-kitchen reads an attribute of that name as a layout flag."""
        t = self.__dict__.get("_transposed")
        if t is None:
            s = self.orig_shape
            t = dataclasses.replace(self, orig_shape=(s[1], s[0]), logical_t=not self.logical_t)
            object.__setattr__(self, "_transposed", t)
        return t


def _scale_values(p: SDNQParams, which: str) -> torch.Tensor | None:
    """scale or zero_point as plain values, undoing double quantization"""
    if which == "scale":
        codes, qtype, s2, z2 = p.scale, p.scale_type, p.scale_2, p.scale_zero_point
    else:
        codes, qtype, s2, z2 = p.zero_point, p.zero_point_type, p.zero_point_scale, p.zero_point_2
    if codes is None or not qtype:
        return codes
    t = dtypes.get(qtype)
    n = math.prod(p.scale_shape)
    levels = s2.numel() if p.codebook_scale else 1
    return ops.dequantize(codes, s2.reshape(1, levels, 1), None if z2 is None else z2.reshape(1, 1, 1), None, None,
                          t.id, (1, n, 1), (n,), ops.FLAG_CODEBOOK if p.codebook_scale else 0, 0, s2.dtype)


def _as3d(values: torch.Tensor | None, p: SDNQParams) -> torch.Tensor | None:
    """scale/zero_point values as [outer|1, 1|levels, inner|1]"""
    if values is None:
        return None
    o, _, i = p.view
    levels = p.weight_type.levels if p.codebook else 1
    if values.numel() == levels:
        return values.reshape(1, levels, 1)
    return values.reshape(o, levels, i)


def side_tensors(p: SDNQParams) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scale, zero_point) ready for the ops: plain values, 3-D. Views of the file's tensors
    are kept with the params (see SDNQParams.transposed_params); double-quantized ones are decoded per
    call instead of holding a second copy on the device."""
    st = p.__dict__.get("_side")
    if st is None:
        st = _as3d(_scale_values(p, "scale"), p), _as3d(_scale_values(p, "zero_point"), p)
        if not p.scale_type and not p.zero_point_type:
            object.__setattr__(p, "_side", st)
    return st


def dequantize(qdata: torch.Tensor, p: SDNQParams, dtype: torch.dtype | None = None) -> torch.Tensor:
    """the dense weight (its transpose when logical_t) in dtype (default: orig_dtype)"""
    scale, zero_point = side_tensors(p)
    w = ops.dequantize(qdata, scale, zero_point, p.svd_up, p.svd_down, p.wtype, p.view, p.weight_shape, p.flags,
                       p.hadamard, dtype or p.orig_dtype)
    return w.t() if p.logical_t else w


def linear(x: torch.Tensor, qdata: torch.Tensor, p: SDNQParams, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, W, bias) for the weight W the params describe (params of W or, logical_t, of
    W.t(): the op reads the stored layout either way)"""
    if len(p.weight_shape) != 2:  # no logical_t here: aten.t makes it for 2-D weights only
        return torch.nn.functional.linear(x, dequantize(qdata, p, x.dtype), bias)
    scale, zero_point = side_tensors(p)
    if x.is_cuda and not x.requires_grad and not torch.compiler.is_compiling():
        # eager CUDA inference: the op's implementation itself, without a second pass through the
        # dispatcher (host time per call counts where a step runs hundreds of layers; the op stays
        # what tracing, autograd, meta/fake tensors and the other devices go through)
        return ops.linear_impl(x, qdata, scale, zero_point, p.svd_up, p.svd_down, bias, p.wtype, p.view,
                               p.weight_shape, p.flags, p.hadamard)
    return ops.linear(x, qdata, scale, zero_point, p.svd_up, p.svd_down, bias, p.wtype, p.view, p.weight_shape,
                      p.flags, p.hadamard)


def functional_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, w, bias) for any weight; an SDNQ weight goes to linear() directly instead of
    through aten.linear's decomposition (aten.t, then addmm/mm: two trips into __torch_dispatch__
    and a transposed QuantizedTensor per call)"""
    if is_sdnq(w) and not w.params.logical_t and not is_sdnq(x) and not torch.compiler.is_compiling():
        return linear(x, w._qdata, w.params, bias)
    return torch.nn.functional.linear(x, w, bias)


class SDNQLayout(QuantizedLayout):
    """comfy-kitchen layout for SDNQ weights (every sdnq storage type)."""

    Params = SDNQParams

    @classmethod
    def quantize(cls, tensor: torch.Tensor, **kwargs):
        from .quantizer import quantize_layout  # quantize imports this module

        return quantize_layout(tensor, **kwargs)

    @classmethod
    def dequantize(cls, qdata: torch.Tensor, params: SDNQParams) -> torch.Tensor:
        return dequantize(qdata, params)

    @classmethod
    def get_plain_tensors(cls, qtensor: QuantizedTensor):
        p = qtensor.params
        return (qtensor._qdata,) + tuple(getattr(p, f) for f in p._tensor_fields())

    @classmethod
    def state_dict_tensors(cls, qdata: torch.Tensor, params: SDNQParams) -> dict[str, torch.Tensor]:
        """suffixes relative to '<module>.weight'; comfy_sdnq.files writes sdnq's own key names"""
        out = {"": qdata}
        for f in params._tensor_fields():
            out[".sdnq_" + f] = getattr(params, f)
        return out

    @classmethod
    def requantize_kwargs(cls, qtensor: QuantizedTensor) -> dict:
        raise SdnqUnsupportedError("SDNQ weights are not re-quantized after patching; apply LoRA per step instead")


register_layout_class(LAYOUT, SDNQLayout)


def make(qdata: torch.Tensor, params: SDNQParams) -> QuantizedTensor:
    return QuantizedTensor(qdata, LAYOUT, params)


def is_sdnq(t) -> bool:
    return isinstance(t, QuantizedTensor) and t._layout_cls == LAYOUT


def compressed_nbytes(t) -> int:
    """bytes of an SDNQ QuantizedTensor including side tensors; plain tensors: nbytes"""
    return t.params.nbytes(t._qdata) if is_sdnq(t) else t.nbytes


# ---------------------------------------------------------------------------
# aten handlers: matmuls run the SDNQ linear op, everything else dequantizes


@register_layout_op(torch.ops.aten.linear.default, SDNQLayout)
def _linear(qt, args, kwargs):
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if not is_sdnq(w) or is_sdnq(x) or w.params.logical_t:
        return torch.nn.functional.linear(*dequantize_args(args), **dequantize_args(kwargs))
    return linear(x, w._qdata, w.params, bias)


@register_layout_op(torch.ops.aten.t.default, SDNQLayout)
def _t(qt, args, kwargs):
    w = args[0]
    if len(w.shape) != 2:
        return torch.ops.aten.t.default(w.dequantize())
    return make(w._qdata, w.params.transposed_params())


def _mm_weight(b):
    """the SDNQ weight W when b == W.t(), else None"""
    return b if is_sdnq(b) and b.params.logical_t and len(b.shape) == 2 else None


@register_layout_op(torch.ops.aten.mm.default, SDNQLayout)
def _mm(qt, args, kwargs):
    a, b = args[0], args[1]
    wt = _mm_weight(b)
    if wt is None or is_sdnq(a):
        return torch.mm(*dequantize_args(args), **dequantize_args(kwargs))
    return linear(a, wt._qdata, wt.params, None)


@register_layout_op(torch.ops.aten.addmm.default, SDNQLayout)
def _addmm(qt, args, kwargs):
    bias, a, b = args[0], args[1], args[2]
    wt = _mm_weight(b)
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    if wt is None or is_sdnq(a) or beta != 1 or alpha != 1 or bias.dim() != 1:
        return torch.addmm(*dequantize_args(args), **dequantize_args(kwargs))
    return linear(a, wt._qdata, wt.params, bias)
