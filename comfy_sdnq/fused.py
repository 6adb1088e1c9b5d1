"""A fused weight made of row blocks that stay separate tensors (comfy-kitchen layout
"SDNQFusedLayout").

Flux's qkv and linear1, SD3's qkv and friends are single Linear layers in ComfyUI but
separate layers (to_q, to_k, to_v, proj_mlp) in diffusers files. Each part keeps its
own file tensors - an SDNQ layer of any type, group size or SVD rank, or a plain dense
weight (4bit-dynamic files mix them) - and the fused tensor only records the row
blocks. Nothing is concatenated: dequantization writes each part into its rows of the
output, a linear runs per part and joins the outputs.

All part tensors are fields of the layout params (slots t0..tN), so ComfyUI streams,
pins and offloads them together with the weight.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from comfy_kitchen.tensor import (BaseLayoutParams, QuantizedLayout, QuantizedTensor, dequantize_args,
                                  register_layout_class, register_layout_op)

from . import layout
from .errors import SdnqError, SdnqUnsupportedError

LAYOUT = "SDNQFusedLayout"
N_SLOTS = 48
_SLOT_NAMES = tuple(f"t{i}" for i in range(N_SLOTS))
_SDNQ_TENSORS = ("scale", "zero_point", "svd_up", "svd_down", "scale_2", "scale_zero_point", "zero_point_scale",
                 "zero_point_2")


@dataclass(frozen=True)
class Part:
    """One row block: `rows` rows of the fused weight. kind 'sdnq': an SDNQ layer whose
    codes sit in slot `qdata` and whose side tensors in `slots` ((field, slot) pairs), with
    the SDNQParams metadata `meta` ((field, value) pairs); kind 'dense': a plain weight in
    slot `qdata`."""

    rows: int
    kind: str
    qdata: int
    slots: tuple = ()
    meta: tuple = ()


def _tensor_fields(self) -> list[str]:
    return ["scale"] + [n for n in _SLOT_NAMES if getattr(self, n) is not None]


SDNQFusedParams = dataclasses.make_dataclass(
    "SDNQFusedParams",
    [(n, torch.Tensor | None, dataclasses.field(default=None)) for n in _SLOT_NAMES]
    + [("parts", tuple, dataclasses.field(default=())), ("logical_t", bool, dataclasses.field(default=False))],
    bases=(BaseLayoutParams,), frozen=True, namespace={"_tensor_fields": _tensor_fields, "__module__": __name__,
                                                       "__doc__": "Params of SDNQFusedLayout (see module doc)."})


def fuse(parts: list[torch.Tensor], orig_dtype: torch.dtype) -> QuantizedTensor:
    """Row-concatenate SDNQ QuantizedTensors and/or plain 2-D tensors into one fused weight."""
    if not parts:
        raise SdnqError("fuse: no parts")
    cols = parts[0].shape[1]
    slots: list[torch.Tensor] = []
    specs = []
    for i, p in enumerate(parts):
        if p.dim() != 2 or p.shape[1] != cols:
            raise SdnqError(f"fuse: part {i} has shape {tuple(p.shape)}, expected [rows, {cols}]")
        if layout.is_sdnq(p):
            pp = p.params
            if pp.logical_t:
                raise SdnqUnsupportedError("fuse: a transposed view cannot be a part")
            q = len(slots)
            slots.append(p._qdata)
            sl = []
            for f in pp._tensor_fields():
                sl.append((f, len(slots)))
                slots.append(getattr(pp, f))
            meta = tuple((f.name, getattr(pp, f.name)) for f in dataclasses.fields(pp)
                         if f.name not in _SDNQ_TENSORS and f.name not in ("orig_dtype", "orig_shape"))
            specs.append(Part(rows=p.shape[0], kind="sdnq", qdata=q, slots=tuple(sl), meta=meta))
        elif isinstance(p, QuantizedTensor):
            raise SdnqUnsupportedError(f"fuse: part {i} is a {p._layout_cls} tensor; only SDNQ and plain parts fuse")
        else:
            specs.append(Part(rows=p.shape[0], kind="dense", qdata=len(slots)))
            slots.append(p)
    if len(slots) > N_SLOTS:
        raise SdnqUnsupportedError(f"fuse: {len(slots)} tensors exceed the {N_SLOTS} slots of a fused weight")
    rows = sum(s.rows for s in specs)
    fields = {_SLOT_NAMES[i]: t for i, t in enumerate(slots) if i > 0}
    # slot 0 is the QuantizedTensor's own qdata (read straight from the file by ComfyUI)
    params = SDNQFusedParams(scale=torch.zeros((), dtype=torch.float32, device=slots[0].device),
                             orig_dtype=orig_dtype, orig_shape=(rows, cols), parts=tuple(specs), **fields)
    return QuantizedTensor(slots[0], LAYOUT, params)


def _slot(qdata: torch.Tensor, p, i: int) -> torch.Tensor:
    return qdata if i == 0 else getattr(p, _SLOT_NAMES[i])


def parts_of(qdata: torch.Tensor, p, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """the parts as SDNQ QuantizedTensors / plain tensors"""
    dtype = dtype or p.orig_dtype
    cols = p.orig_shape[0] if p.logical_t else p.orig_shape[1]
    out = []
    for s in p.parts:
        if s.kind == "dense":
            out.append(_slot(qdata, p, s.qdata))
            continue
        kw = dict(s.meta)
        kw.update({f: _slot(qdata, p, i) for f, i in s.slots})
        params = layout.SDNQParams(orig_dtype=dtype, orig_shape=(s.rows, cols), **kw)
        out.append(layout.make(_slot(qdata, p, s.qdata), params))
    return out


def dequantize(qdata: torch.Tensor, p, dtype: torch.dtype | None = None) -> torch.Tensor:
    dtype = dtype or p.orig_dtype
    rows = sum(s.rows for s in p.parts)
    cols = p.orig_shape[0] if p.logical_t else p.orig_shape[1]
    out = torch.empty((rows, cols), dtype=dtype, device=qdata.device)
    r = 0
    for part in parts_of(qdata, p, dtype):
        n = part.shape[0]
        out[r:r + n] = part.dequantize() if layout.is_sdnq(part) else part.to(dtype)
        r += n
    return out.t() if p.logical_t else out


def linear(x: torch.Tensor, qdata: torch.Tensor, p, bias: torch.Tensor | None) -> torch.Tensor:
    outs, r = [], 0
    for part in parts_of(qdata, p, x.dtype):
        n = part.shape[0]
        b = None if bias is None else bias[r:r + n]
        outs.append(layout.functional_linear(x, part if layout.is_sdnq(part) else part.to(x.dtype), b))
        r += n
    return torch.cat(outs, dim=-1)


class SDNQFusedLayout(QuantizedLayout):
    Params = SDNQFusedParams

    @classmethod
    def quantize(cls, tensor, **kwargs):
        raise SdnqUnsupportedError("fused SDNQ weights are built from their parts (comfy_sdnq.fused.fuse)")

    @classmethod
    def dequantize(cls, qdata, params):
        return dequantize(qdata, params)

    @classmethod
    def get_plain_tensors(cls, qtensor):
        p = qtensor.params
        return (qtensor._qdata,) + tuple(getattr(p, f) for f in p._tensor_fields())

    @classmethod
    def state_dict_tensors(cls, qdata, params):
        out = {"": qdata}
        for f in params._tensor_fields():
            out[".sdnq_" + f] = getattr(params, f)
        return out

    @classmethod
    def requantize_kwargs(cls, qtensor):
        raise SdnqUnsupportedError("SDNQ weights are not re-quantized after patching; apply LoRA per step instead")


register_layout_class(LAYOUT, SDNQFusedLayout)


def is_fused(t) -> bool:
    return isinstance(t, QuantizedTensor) and t._layout_cls == LAYOUT


def nbytes(t) -> int:
    p = t.params
    return t._qdata.nbytes + sum(getattr(p, f).nbytes for f in p._tensor_fields() if f != "scale")


@register_layout_op(torch.ops.aten.linear.default, SDNQFusedLayout)
def _linear(qt, args, kwargs):
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if not is_fused(w) or isinstance(x, QuantizedTensor) or w.params.logical_t:
        return torch.nn.functional.linear(*dequantize_args(args), **dequantize_args(kwargs))
    return linear(x, w._qdata, w.params, bias)


@register_layout_op(torch.ops.aten.t.default, SDNQFusedLayout)
def _t(qt, args, kwargs):
    w = args[0]
    p = w.params
    return QuantizedTensor(w._qdata, LAYOUT, dataclasses.replace(
        p, orig_shape=(p.orig_shape[1], p.orig_shape[0]), logical_t=not p.logical_t))


def _untransposed(b):
    if is_fused(b) and b.params.logical_t:
        p = b.params
        return dataclasses.replace(p, orig_shape=(p.orig_shape[1], p.orig_shape[0]), logical_t=False)
    return None


@register_layout_op(torch.ops.aten.mm.default, SDNQFusedLayout)
def _mm(qt, args, kwargs):
    a, b = args[0], args[1]
    p = _untransposed(b)
    if p is None or isinstance(a, QuantizedTensor):
        return torch.mm(*dequantize_args(args), **dequantize_args(kwargs))
    return linear(a, b._qdata, p, None)


@register_layout_op(torch.ops.aten.addmm.default, SDNQFusedLayout)
def _addmm(qt, args, kwargs):
    bias, a, b = args[0], args[1], args[2]
    p = _untransposed(b)
    if p is None or isinstance(a, QuantizedTensor) or kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
        return torch.addmm(*dequantize_args(args), **dequantize_args(kwargs))
    return linear(a, b._qdata, p, bias)
