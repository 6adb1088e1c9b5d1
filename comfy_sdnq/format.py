"""The SDNQ layer format: how sdnq lays out one layer's tensors, as a plan computed from
the weight's shape and the layer's settings (no tensors needed).

sdnq stores no per-layer metadata; it re-derives this plan from the config and the
model architecture when it loads. quantize() follows the plan to produce sdnq's
tensors; the loader uses it where file shapes alone are ambiguous and to check that
a file is consistent with its config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .config import LayerConfig
from .dtypes import SdnqType
from . import dtypes
from .errors import SdnqFormatError

KINDS = ("linear", "conv", "conv_transpose", "embedding", "other")


def matmul_dtype(w: SdnqType, requested: str | None) -> str:
    """sdnq's default quantized-matmul dtype for a weight type"""
    if requested is not None:
        return requested
    if w.is_integer:
        return "uint8" if w.name == "uint8" else "int8"
    return "float8_e4m3fn" if w.bits < 16 else "float16"


def qmm_allowed(use_qmm: bool, out_ch: int, in_ch: int) -> bool:
    return bool(use_qmm and out_ch >= 32 and in_ch >= 32 and out_ch % 16 == 0 and in_ch % 16 == 0)


def hadamard_group(channels: int, group_size: int) -> int:
    """sdnq's per-layer Hadamard block: 0 when the rotation is off for this layer"""
    h = min(channels, group_size)
    if h & (h - 1):
        h = 1 << h.bit_length()
    while h > 1 and channels % h:
        h //= 2
    return h if h >= 4 else 0


def resolve_groups(group_size: int, channels: int) -> tuple[int, int]:
    """(group size, group count) after sdnq's search for a size dividing `channels`"""
    if group_size >= channels:
        return channels, 1
    groups = channels // group_size
    while groups * group_size != channels:
        groups -= 1
        if groups <= 1:
            return channels, 1
        group_size = channels // groups
    return int(group_size), int(groups)


@dataclass(frozen=True)
class LayerPlan:
    """Everything sdnq decides for one layer."""

    kind: str
    shape: tuple[int, ...]          # logical weight shape
    wtype: SdnqType
    group_size: int                 # > 0 grouped, -1 row-wise, -2 tensor-wise
    qshape: tuple[int, ...]         # code tensor before packing (sdnq's quantized_weight_shape)
    red_axis: int | None            # reduction axis in qshape (None: tensor-wise); before transposing
    transposed: bool                # codes stored [in, out] (matmul-ready storage)
    use_qmm: bool                   # layer uses quantized matmul: SVD factors are stored transposed
    requant: bool                   # sdnq re-quantizes for matmul (storage stays as is)
    matmul_dtype: str
    cast_scale: bool                # scale/zero_point rounded to the compute dtype
    svd_rank: int                   # 0: no SVD
    hadamard: int                   # Hadamard block, 0: none
    codebook: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def view(self) -> tuple[int, int, int]:
        """[outer, red, inner] of the stored codes; stored transposed: [1, in, out]"""
        if self.transposed:
            return 1, self.qshape[1], self.qshape[0]
        return index_view(self.qshape, self.red_axis)

    @property
    def scale_shape(self) -> tuple[int, ...]:
        """shape of scale and zero_point (codebook: the levels along the reduction axis)"""
        if self.red_axis is None:
            return (self.wtype.levels,) if self.codebook else (1,) * len(self.qshape)
        s = list(self.qshape)
        s[self.red_axis] = self.wtype.levels if self.codebook else 1
        return tuple(reversed(s)) if self.transposed else tuple(s)

    @property
    def rows_cols(self) -> tuple[int, int]:
        """the 2-D flattening SVD and Hadamard act on: [shape[0], prod(shape[1:])]"""
        return self.shape[0], self.numel // self.shape[0]

    @property
    def svd_shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        rows, cols = self.rows_cols
        r = self.svd_rank
        return ((r, rows), (cols, r)) if self.use_qmm else ((rows, r), (r, cols))


def index_view(qshape: tuple[int, ...], red_axis: int | None) -> tuple[int, int, int]:
    n = math.prod(qshape)
    if red_axis is None:
        return 1, n, 1
    return math.prod(qshape[:red_axis]), qshape[red_axis], math.prod(qshape[red_axis + 1:])


def plan_layer(kind: str, shape: tuple[int, ...], cfg: LayerConfig, tensorwise_fp8: bool = True) -> LayerPlan:
    """sdnq_quantize_layer_weight's decisions for a weight of `shape` (sdnq 0.2.8 rules).

    tensorwise_fp8: sdnq's use_tensorwise_fp8_matmul of the quantizing machine (True on
    CPUs, pre-Hopper GPUs and with Triton); it only changes cast_scale of fp-matmul layers."""
    if kind not in KINDS:
        raise SdnqFormatError(f"unknown layer kind {kind!r}")
    shape = tuple(int(s) for s in shape)
    w = cfg.weights_dtype
    mm = matmul_dtype(w, cfg.quantized_matmul_dtype)
    mmt = dtypes.get(mm)
    requant = bool(
        cfg.use_codebook or cfg.scale_dtype is not None or cfg.zero_point_dtype is not None
        or w.bits > mmt.bits or w.is_integer != mmt.is_integer or (w.is_unsigned and not mmt.is_integer)
        or (w.is_packed and not w.is_integer and not mmt.is_integer and (w.bits >= mmt.bits or w.max > mmt.max))
    )
    wshape = shape
    if kind == "conv":
        out_ch, channels = shape[:2]
        red = 1
        use_qmm = qmm_allowed(cfg.use_quantized_matmul, out_ch, channels)
        if use_qmm and not requant and not w.is_packed:  # matmul-ready conv: flattened [out, in*k]
            wshape = (shape[0], math.prod(shape[1:]))
    elif kind == "conv_transpose":
        channels, out_ch = shape[:2]
        red = 0
        use_qmm = False
    elif kind == "linear":
        if len(shape) != 2:
            raise SdnqFormatError(f"a Linear weight is 2-D, got shape {shape}")
        out_ch, channels = shape
        red = 1
        use_qmm = qmm_allowed(cfg.use_quantized_matmul, out_ch, channels)
    else:
        out_ch, channels = (shape[-2], shape[-1]) if len(shape) > 1 else (1, shape[-1])
        red = len(shape) - 1
        use_qmm = False

    cast_scale = bool(not cfg.dequantize_fp32 and cfg.scale_dtype is None and cfg.zero_point_dtype is None
                      and w.max <= 16384
                      and not (use_qmm and not mmt.is_integer and (not tensorwise_fp8 or mmt.bits == 16)))
    hadamard = 0
    if cfg.use_hadamard:
        hadamard = hadamard_group(shape[1] if kind in ("conv", "conv_transpose") else shape[-1],
                                  cfg.hadamard_group_size)
    svd_rank = cfg.svd_rank if cfg.use_svd else 0

    group_size = cfg.group_size
    if group_size == 0:
        if use_qmm and not requant and w.bits >= 6:
            group_size = -1
        else:
            group_size = 2 ** (1 + w.bits + (kind == "linear") + (svd_rank > 0) + 3 * cfg.use_codebook)
    qshape = wshape
    groups = 1
    if group_size > 0:
        group_size, groups = resolve_groups(group_size, channels)
        if groups > 1:
            if kind == "conv":
                qshape = (wshape[0], groups, group_size) + wshape[2:]
                red = 2
            elif kind == "conv_transpose":
                qshape = (wshape[0], group_size, groups) + wshape[2:]
                red = 1
            else:
                qshape = wshape[:-1] + (groups, group_size)
                red = len(qshape) - 1
        else:
            group_size = -1
    elif group_size == -2:
        red = None
    elif group_size != -1:
        raise SdnqFormatError(f"group_size must be > 0, 0 (auto), -1 (row-wise) or -2 (tensor-wise), got {group_size}")
    requant = requant or groups > 1
    transposed = bool(use_qmm and not requant and not w.is_packed)
    return LayerPlan(kind=kind, shape=shape, wtype=w, group_size=group_size, qshape=qshape, red_axis=red,
                     transposed=transposed, use_qmm=use_qmm, requant=requant, matmul_dtype=mm, cast_scale=cast_scale,
                     svd_rank=svd_rank, hadamard=hadamard, codebook=cfg.use_codebook)


# ---------------------------------------------------------------------------
# reading a layer's layout back from its tensors


@dataclass(frozen=True)
class LayerGeometry:
    """How to decode one stored layer: what the file tensors' shapes say, checked against
    the config. `shape` is the logical weight shape; `view`, `stored_t` as in LayerPlan."""

    kind: str
    shape: tuple[int, ...]
    view: tuple[int, int, int]
    stored_t: bool
    scale_shape: tuple[int, ...]
    svd_transposed: bool
    svd_rank: int
    hadamard: int


def _candidates(scale_shape: tuple[int, ...], n: int, levels: int):
    """(kind, logical shape, view, stored_t) for every reduction axis the scale allows"""
    s = tuple(scale_shape)
    if n <= 0:
        return []
    if s == (levels,) or (levels == 1 and all(d == 1 for d in s)):
        return [("tensorwise", None, (1, n, 1), False)]
    out = []
    for r, d in enumerate(s):
        if d != levels:
            continue
        outer, inner = math.prod(s[:r]), math.prod(s[r + 1:])
        if outer * inner == 0 or n % (outer * inner):
            continue
        red = n // (outer * inner)
        if len(s) == 2 and r == 0 and levels == 1 and s[1] > 1:
            out.append(("linear", (s[1], red), (1, red, s[1]), True))      # matmul-ready [in, out]
        elif len(s) == 2 and r == 1:
            out.append(("linear", (s[0], red), (s[0], red, 1), False))     # row-wise
        elif len(s) == 3 and r == 2:
            out.append(("linear", (s[0], s[1] * red), (s[0] * s[1], red, 1), False))  # grouped
        elif len(s) >= 3 and r == 1:
            out.append(("conv", (s[0], red) + s[2:], (s[0], red, inner), False))      # conv row-wise
        elif len(s) >= 4 and r == 2:
            out.append(("conv", (s[0], s[1] * red) + s[3:], (s[0] * s[1], red, inner), False))  # conv grouped
        elif len(s) >= 3 and r == 0:
            out.append(("conv_transpose", (red,) + s[1:], (1, red, inner), False))  # conv-transpose row-wise
    return out


def infer_geometry(cfg: LayerConfig, n: int, scale_shape: tuple[int, ...] | None, *, out_features: int | None = None,
                   svd_shapes=None, shape_hint=None, kind_hint: str | None = None) -> LayerGeometry:
    """Decide a stored layer's geometry.

    n: number of codes; scale_shape: the plain scale's shape (None when it is double
    quantized and packed, so only the config can tell); out_features: the output size if
    known from elsewhere (bias); svd_shapes: (svd_up.shape, svd_down.shape) or None;
    shape_hint/kind_hint: the model's own weight shape and layer kind, when known.
    Raises SdnqFormatError when the tensors fit no layout."""
    levels = cfg.weights_dtype.levels if cfg.use_codebook else 1
    kind_hint = kind_hint if kind_hint in KINDS else None
    if shape_hint is not None:
        try:
            shape_hint = tuple(int(x) for x in shape_hint)
        except (TypeError, ValueError):
            raise SdnqFormatError(f"the model's weight shape {shape_hint!r} is not a list of integers") from None
        rank_ok = {"linear": len(shape_hint) == 2, "conv": len(shape_hint) >= 3,
                   "conv_transpose": len(shape_hint) >= 3}.get(kind_hint, len(shape_hint) >= 1)
        if not rank_ok or not all(d > 0 for d in shape_hint):
            raise SdnqFormatError(f"the model's weight shape {shape_hint} does not fit a {kind_hint or 'layer'} "
                                  f"weight")
        if math.prod(shape_hint) != n:
            raise SdnqFormatError(f"the model's weight shape {shape_hint} holds {math.prod(shape_hint)} elements, "
                                  f"the stored codes {n}")
    if scale_shape is None:
        # a packed double-quantized scale: the plan from the config is the only source
        shape = shape_hint or _shape_from(n, out_features, svd_shapes)
        if shape is None:
            raise SdnqFormatError(f"cannot tell the layout of {n} codes with a packed double-quantized scale: "
                                  f"the output size is unknown (no bias, no SVD factors); pass shapes=")
        plan = plan_layer(kind_hint or ("linear" if len(shape) == 2 else "conv"), shape, cfg)
        return _finish(plan.kind, shape, plan.view, plan.transposed, plan.scale_shape, cfg, svd_shapes,
                       plan.use_qmm)
    cands = _candidates(scale_shape, n, levels)
    if not cands:
        raise SdnqFormatError(f"scale shape {tuple(scale_shape)} fits no SDNQ layout of {n} codes"
                              + (f" with {levels} codebook levels" if levels > 1 else ""))
    if cands[0][0] == "tensorwise":
        shape = shape_hint or _shape_from(n, out_features, svd_shapes)
        if shape is None:
            raise SdnqFormatError(f"tensor-wise scale: the weight shape of {n} codes is unknown (no bias, no SVD "
                                  f"factors); pass shapes=")
        kind = kind_hint or ("linear" if len(shape) == 2 else "conv")
        plan = plan_layer(kind, shape, cfg)
        view = plan.view if plan.transposed else (1, n, 1)
        return _finish(kind, shape, view, plan.transposed, tuple(scale_shape), cfg, svd_shapes, plan.use_qmm)
    chosen = cands
    if shape_hint is not None and len(cands) > 1:
        chosen = [c for c in cands if c[1][0] == shape_hint[0]] or cands
    if kind_hint is not None and len(chosen) > 1:
        chosen = [c for c in chosen if c[0] == kind_hint or (kind_hint == "embedding" and c[0] == "linear")] or chosen
    if len(chosen) > 1:
        # only codebook levels equal to another dimension get here: ask the config
        fits = [c for c in chosen if plan_layer(c[0], c[1], cfg).scale_shape == tuple(scale_shape)]
        chosen = fits or chosen
    kind, shape, view, stored_t = chosen[-1] if len(chosen) > 1 else chosen[0]
    if shape_hint is not None:
        if shape_hint[0] != shape[0] and kind_hint != "conv_transpose":
            raise SdnqFormatError(f"the model's weight shape {shape_hint} does not match the stored layout "
                                  f"{shape} (scale {tuple(scale_shape)})")
        shape = shape_hint
        kind = kind_hint or ("linear" if len(shape) == 2 else kind)
    if kind_hint is not None:
        kind = kind_hint
    outputs = shape[1] if kind == "conv_transpose" else shape[0]
    if out_features is not None and out_features != outputs:
        raise SdnqFormatError(f"bias has {out_features} outputs, the scale {tuple(scale_shape)} implies {outputs}")
    use_qmm = stored_t or (svd_shapes is not None and _svd_transposed(shape, svd_shapes) is True)
    return _finish(kind, shape, view, stored_t, tuple(scale_shape), cfg, svd_shapes, use_qmm)


def _shape_from(n, out_features, svd_shapes):
    """logical 2-D shape from the output size (bias) or the SVD factors"""
    if svd_shapes is not None:
        (u0, u1), (d0, d1) = svd_shapes
        for rows, cols in ((u0, d1), (u1, d0)):
            if rows * cols == n and (out_features is None or rows == out_features):
                return (rows, cols)
    if out_features and n % out_features == 0:
        return (out_features, n // out_features)
    return None


def _svd_transposed(shape, svd_shapes):
    """True/False from the SVD factor shapes, None when they fit both orientations"""
    rows = shape[0]
    cols = math.prod(shape) // rows
    (u0, u1), (d0, d1) = svd_shapes
    normal = u0 == rows and d1 == cols and u1 == d0
    transposed = u1 == rows and d0 == cols and u0 == d1
    if normal and transposed:
        return None
    if normal or transposed:
        return transposed
    raise SdnqFormatError(f"SVD factors {tuple(svd_shapes[0])} and {tuple(svd_shapes[1])} do not fit a "
                          f"[{rows}, {cols}] weight")


def _finish(kind, shape, view, stored_t, scale_shape, cfg, svd_shapes, use_qmm) -> LayerGeometry:
    svd_t, rank = False, 0
    if svd_shapes is not None:
        t = _svd_transposed(shape, svd_shapes)
        svd_t = use_qmm if t is None else t
        rank = svd_shapes[0][0] if svd_t else svd_shapes[0][1]
    hadamard = 0
    if cfg.use_hadamard:
        channels = shape[1] if kind in ("conv", "conv_transpose") and len(shape) > 2 else shape[-1]
        hadamard = hadamard_group(channels, cfg.hadamard_group_size)
    return LayerGeometry(kind=kind, shape=tuple(shape), view=tuple(view), stored_t=bool(stored_t),
                         scale_shape=tuple(scale_shape), svd_transposed=bool(svd_t), svd_rank=int(rank),
                         hadamard=hadamard)
