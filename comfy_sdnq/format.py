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
