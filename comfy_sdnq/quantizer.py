"""Quantize a dense weight to SDNQ, producing the tensors sdnq produces for it.

    qt = comfy_sdnq.quantize(weight, "uint4", use_svd=True)   # an SDNQ QuantizedTensor
    sdnq_tensors(qt)   # {"weight": ..., "scale": ..., "zero_point": ..., "svd_up": ..., ...}

The steps follow sdnq's sdnq_quantize_layer_weight (0.2.8): Hadamard rotation and the
SVD residual as torch matmuls (the same ops sdnq runs), the Lloyd-Max codebook as torch
ops, scales, zero-points, rounding and packing in the C core.
"""
from __future__ import annotations

import torch

from . import dtypes, kernels, layout, reference
from .config import LayerConfig, layer_config
from .dtypes import SdnqType
from .errors import SdnqError
from .format import LayerPlan, index_view, plan_layer

_LAYER_KINDS = {"Linear": "linear", "Conv1d": "conv", "Conv2d": "conv", "Conv3d": "conv",
                "ConvTranspose1d": "conv_transpose", "ConvTranspose2d": "conv_transpose",
                "ConvTranspose3d": "conv_transpose", "Embedding": "embedding"}


def layer_kind(layer: str) -> str:
    """'Linear' / 'Conv2d' / ... (or our kind names) -> kind"""
    if layer in _LAYER_KINDS.values() or layer == "other":
        return layer
    try:
        return _LAYER_KINDS[layer]
    except KeyError:
        raise SdnqError(f"unknown layer class {layer!r} (expected one of {sorted(_LAYER_KINDS)})") from None


def _rotate(w: torch.Tensor, h: int, conv: bool) -> torch.Tensor:
    """w @ H over blocks of h input channels, in w's dtype (sdnq's rotate_hadamard on CPU)"""
    mat = reference.hadamard_matrix(h, True, w.dtype, w.device)
    shape = w.shape
    flat = w.flatten(1) if conv else w
    out = torch.matmul(flat.contiguous().unflatten(-1, (-1, h)), mat).flatten(-2, -1)
    return out.reshape(shape) if conv else out


def _svd(w: torch.Tensor, rank: int, steps: int, dtype: torch.dtype):
    """sdnq's apply_svdquant: residual, svd_up [rows, r], svd_down [r, cols]"""
    shape = w.shape
    w2 = w.flatten(1) if w.dim() > 2 else w
    if w2.dtype != torch.float64:
        w2 = w2.to(torch.float32)
    u, s, v = torch.svd_lowrank(w2, q=rank, niter=steps)
    up = torch.mul(u, s.unsqueeze(0)).to(dtype)
    down = v.t().to(dtype)
    res = w2.sub(torch.mm(up, down))
    return res.reshape(shape), up, down


def _codebook(x: torch.Tensor, t: SdnqType, steps: int, tensorwise: bool, dtype):
    """Lloyd-Max levels per group (sdnq's quantize_weight_codebook). x: [O, R, I] fp32 ->
    (codes int32 [O, R, I], levels [O, L, I] or [L])"""
    o, r, i = x.shape
    w = x.reshape(-1) if tensorwise else x.permute(0, 2, 1).reshape(-1, r)
    lo, hi = torch.aminmax(w, dim=-1, keepdim=True)
    scale = hi.sub_(lo).div_(t.max)
    levels = torch.addcmul(lo, torch.arange(t.levels, dtype=w.dtype, device=w.device), scale)
    dim = 0 if tensorwise else 1
    ones = None
    for _ in range(steps + 1):
        levels = torch.sort(levels, dim=-1).values
        mid = torch.add(levels[..., 1:], levels[..., :-1]).mul_(0.5)
        if _ == steps:
            break
        assign = torch.searchsorted(mid, w)
        if ones is None:
            ones = torch.ones_like(assign, dtype=torch.int32)
        counts = torch.zeros_like(levels, dtype=torch.int32).scatter_add_(dim, assign, ones)
        occupied = counts > 0
        sums = torch.zeros_like(levels).scatter_add_(dim, assign, w).div_(counts.clamp_(min=1))
        levels = torch.where(occupied, sums, levels)
    codes = torch.searchsorted(mid, w, out_int32=True)
    if dtype is not None:
        levels = levels.to(dtype)
    if tensorwise:
        return codes.reshape(o, r, i), levels
    return codes.reshape(o, i, r).permute(0, 2, 1), levels.reshape(o, i, -1).permute(0, 2, 1)


def _stored(t: SdnqType, codes: torch.Tensor) -> torch.Tensor:
    """stored codes (int32) -> the file tensor of a type"""
    if t.is_packed:
        words = kernels.pack(t, codes.reshape(-1))
        return words.reshape(codes.shape) if t.bits in (8, 16) else words  # one code per element keeps its shape
    dt = t.storage_dtype
    if dt in (torch.int8, torch.int16, torch.int32, torch.uint8):
        return codes.to(dt)
    if dt in (torch.uint16, torch.uint32):
        return codes.to(torch.int64).bitwise_and_(0xFFFF if dt == torch.uint16 else 0xFFFFFFFF).to(dt)
    size = torch.empty((), dtype=dt).element_size()
    if size == 4:
        return codes.view(dt)
    if size == 2:
        return (((codes & 0xFFFF) ^ 0x8000) - 0x8000).to(torch.int16).view(dt)
    return codes.to(torch.uint8).view(dt)


def _quantize_values(values: torch.Tensor, t: SdnqType, codebook: bool, steps: int, impl):
    """double quantization of a scale/zero_point tensor: tensor-wise, fp32 second level"""
    x = values.to(torch.float32).reshape(1, -1, 1)
    if codebook:
        codes, second = _codebook(x, t, steps, True, None)
        return _stored(t, codes.reshape(values.shape)), second.flatten(), None
    codes, second, second_zp = kernels.quantize(t, x, (1, x.numel(), 1), True, torch.float32, impl=impl)
    codes = codes.reshape(values.shape)
    return _stored(t, codes), second.flatten(), None if second_zp is None else second_zp.flatten()


def quantize_plan(weight: torch.Tensor, plan: LayerPlan, cfg: LayerConfig, torch_dtype: torch.dtype | None = None,
                  svd_steps: int = 8, codebook_steps: int = 24, impl: str | None = None):
    """Quantize weight by plan -> (qdata, SDNQParams)"""
    t = plan.wtype
    torch_dtype = torch_dtype or weight.dtype
    if torch_dtype not in dtypes.ARITH_DTYPES:
        raise SdnqError(f"compute dtype must be float32, bfloat16 or float16, got {torch_dtype}")
    if tuple(weight.shape) != plan.shape:
        raise SdnqError(f"weight shape {tuple(weight.shape)} does not match the plan's {plan.shape}")
    w = weight.detach()
    if plan.hadamard:
        w = _rotate(w, plan.hadamard, plan.kind in ("conv", "conv_transpose"))
    up = down = None
    if plan.svd_rank:
        w, up, down = _svd(w, plan.svd_rank, svd_steps, torch_dtype)
        if plan.use_qmm:
            up, down = up.t().contiguous(), down.t().contiguous()
    w = w.to(torch.float32).reshape(plan.qshape)
    view = index_view(plan.qshape, plan.red_axis)
    tensorwise = plan.red_axis is None
    scale_dtype = torch_dtype if plan.cast_scale else torch.float32
    if cfg.use_codebook_scale and cfg.scale_dtype is not None and not (
            cfg.scale_dtype.is_integer and cfg.scale_dtype.is_unsigned):
        raise SdnqError(f"use_codebook_scale needs an unsigned integer scale_dtype, got {cfg.scale_dtype.name!r}")
    if plan.codebook:
        codes, scale = _codebook(w.reshape(view), t, codebook_steps, tensorwise, scale_dtype if plan.cast_scale else None)
        zero_point = None
    else:
        codes, scale, zero_point = kernels.quantize(t, w, view, tensorwise, scale_dtype, impl=impl)
    scale = scale.reshape(plan.scale_shape if not plan.transposed else tuple(reversed(plan.scale_shape)))
    if zero_point is not None:
        zero_point = zero_point.reshape(scale.shape)
    codes = codes.reshape(plan.qshape)
    if plan.transposed:
        codes = codes.t().contiguous()
        scale = scale.t().contiguous()
        zero_point = None if zero_point is None else zero_point.t().contiguous()
    qdata = _stored(t, codes)

    extra = {}
    if cfg.scale_dtype is not None:
        scale, extra["scale_2"], extra["scale_zero_point"] = _quantize_values(
            scale, cfg.scale_dtype, cfg.use_codebook_scale, codebook_steps, impl)
    if zero_point is not None and cfg.zero_point_dtype is not None:
        zero_point, extra["zero_point_scale"], extra["zero_point_2"] = _quantize_values(
            zero_point, cfg.zero_point_dtype, cfg.use_codebook_scale, codebook_steps, impl)
    params = layout.SDNQParams(
        scale=scale, orig_dtype=torch_dtype, orig_shape=plan.shape, zero_point=zero_point, svd_up=up, svd_down=down,
        scale_shape=tuple(plan.scale_shape),
        wtype=t.id, view=plan.view, stored_t=plan.transposed, codebook=plan.codebook, svd_transposed=plan.use_qmm,
        hadamard=plan.hadamard, hadamard_h4=True,
        scale_type=cfg.scale_dtype.id if cfg.scale_dtype is not None else 0,
        zero_point_type=cfg.zero_point_dtype.id if (cfg.zero_point_dtype is not None and zero_point is not None) else 0,
        codebook_scale=cfg.use_codebook_scale and cfg.scale_dtype is not None, **extra)
    return qdata, params


def quantize(weight: torch.Tensor, weights_dtype: str = "int8", group_size: int = 0, use_svd: bool = False,
             svd_rank: int = 32, *, layer: str = "Linear", svd_steps: int = 8, use_hadamard: bool = False,
             hadamard_group_size: int = 256, use_codebook: bool = False, codebook_steps: int = 24,
             use_quantized_matmul: bool = False, quantized_matmul_dtype: str | None = None,
             dequantize_fp32: bool = True, scale_dtype: str | None = None, zero_point_dtype: str | None = None,
             use_codebook_scale: bool = False, torch_dtype: torch.dtype | None = None, tensorwise_fp8: bool = True,
             impl: str | None = None):
    """Quantize one layer's weight as sdnq does -> SDNQ QuantizedTensor.

    Options and defaults are sdnq's (SDNQConfig); `layer` is the layer class ("Linear",
    "Conv2d", "Embedding", ...); torch_dtype the compute dtype (default: the weight's)."""
    kind = layer_kind(layer)
    cfg = layer_config(weights_dtype, group_size=group_size, use_svd=use_svd, svd_rank=svd_rank,
                       use_hadamard=use_hadamard, hadamard_group_size=hadamard_group_size, use_codebook=use_codebook,
                       use_quantized_matmul=use_quantized_matmul, use_quantized_matmul_conv=use_quantized_matmul,
                       quantized_matmul_dtype=quantized_matmul_dtype, dequantize_fp32=dequantize_fp32,
                       scale_dtype=scale_dtype, zero_point_dtype=zero_point_dtype,
                       use_codebook_scale=use_codebook_scale, codebook_steps=codebook_steps, svd_steps=svd_steps,
                       kind=kind)
    if cfg.use_codebook and not (cfg.weights_dtype.is_integer and cfg.weights_dtype.is_unsigned):
        raise SdnqError(f"use_codebook needs an unsigned integer weights_dtype, got {cfg.weights_dtype.name!r}")
    plan = plan_layer(kind, tuple(weight.shape), cfg, tensorwise_fp8=tensorwise_fp8)
    qdata, params = quantize_plan(weight, plan, cfg, torch_dtype, svd_steps, codebook_steps, impl)
    return layout.make(qdata, params)


def quantize_layout(tensor: torch.Tensor, **kwargs):
    """SDNQLayout.quantize: (qdata, params) for comfy-kitchen's from_float"""
    qt = quantize(tensor, **kwargs)
    return qt._qdata, qt.params


def sdnq_tensors(qt) -> dict[str, torch.Tensor]:
    """the layer's tensors under sdnq's names (what sdnq keeps as parameters and saves)"""
    p = qt.params
    out = {"weight": qt._qdata}
    for f in p._tensor_fields():
        out[f] = getattr(p, f)
    return out




def empty(shape, weights_dtype: str = "int8", *, layer: str = "Linear", device="meta",
          torch_dtype: torch.dtype = torch.bfloat16, **options):
    """An SDNQ QuantizedTensor with sdnq's tensor shapes and dtypes for a weight of
    `shape` and the given options, contents uninitialized (default on the meta device):
    for shape-only model building and memory estimates."""
    kind = layer_kind(layer)
    cfg = layer_config(weights_dtype, kind=kind, **options)
    plan = plan_layer(kind, tuple(shape), cfg)
    t = plan.wtype
    n = plan.numel

    def new(shape, dtype):
        return torch.empty(shape, dtype=dtype, device=device)

    codes_shape = t.packed_shape(n) if t.is_packed and t.bits not in (8, 16) else \
        ((plan.qshape[1], plan.qshape[0]) if plan.transposed else plan.qshape)
    scale_dtype = torch_dtype if plan.cast_scale else torch.float32
    up = down = None
    if plan.svd_rank:
        su, sd = plan.svd_shapes
        up, down = new(su, torch_dtype), new(sd, torch_dtype)
    params = layout.SDNQParams(
        scale=new(plan.scale_shape, scale_dtype), orig_dtype=torch_dtype, orig_shape=plan.shape,
        zero_point=new(plan.scale_shape, scale_dtype) if t.is_unsigned and not plan.codebook else None,
        svd_up=up, svd_down=down, scale_shape=tuple(plan.scale_shape), wtype=t.id, view=plan.view,
        stored_t=plan.transposed, codebook=plan.codebook, svd_transposed=plan.use_qmm, hadamard=plan.hadamard)
    return layout.make(new(codes_shape, t.storage_dtype), params)
