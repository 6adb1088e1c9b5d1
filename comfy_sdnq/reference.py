"""Pure-torch versions of the C core's routines.

This is the fallback when the C extension is not built, and the path for
devices the C core does not run on. It computes the same bits as the C
reference (tests hold every routine of both to sdnq and to each other) and
follows the same conventions:

* stored codes are int32 tensors holding what sdnq's packer receives: uint8
  values for widths up to 8 bits, int16 values for 9..15 bits, uint16 for
  16-bit float codes, 0/1 for one bit, and the element itself (float bits for
  float dtypes) for native types;
* the quantization index space is a [outer, red, inner] view, groups are
  (outer, inner) and the reduction runs over red.
"""
from __future__ import annotations

import math

import torch

from .dtypes import SdnqType

# ---------------------------------------------------------------------------
# bit packing, one function per width (layouts in docs/format.md)


def _cols(*xs):
    return torch.stack(xs, dim=-1)


def _unpack_block(bits: int, w: torch.Tensor) -> torch.Tensor:
    """w: int32 [blocks, words] holding unsigned word values -> int32 [blocks, elems]"""
    if bits == 1:
        return _cols(*[(w[:, 0] >> k) & 1 for k in range(8)])
    if bits == 2:
        return _cols(*[(w[:, 0] >> (2 * k)) & 3 for k in range(4)])
    if bits == 3:
        a6 = ((w[:, 0] >> 6) | ((w[:, 2] >> 4) & 4)) & 7
        a7 = ((w[:, 1] >> 6) | ((w[:, 2] >> 5) & 4)) & 7
        return torch.cat([w[:, :3] & 7, (w[:, :3] >> 3) & 7, _cols(a6, a7)], dim=1)
    if bits == 4:
        return _cols(w[:, 0] & 15, w[:, 0] >> 4)
    if bits == 5:
        a5 = (w[:, 0] >> 5) | ((w[:, 3] >> 2) & 24)
        a6 = (w[:, 1] >> 5) | ((w[:, 4] >> 2) & 24)
        a7 = (w[:, 2] >> 5) | ((w[:, 3] >> 3) & 16) | ((w[:, 4] >> 4) & 8)
        return torch.cat([w & 31, _cols(a5, a6, a7)], dim=1)
    if bits == 6:
        a3 = ((w[:, 0] >> 2) & 48) | ((w[:, 1] >> 4) & 12) | (w[:, 2] >> 6)
        return torch.cat([w & 63, a3[:, None]], dim=1)
    if bits == 7:
        top = sum(((w[:, j] >> 7) << (6 - j)) for j in range(7))
        return torch.cat([w & 127, top[:, None]], dim=1)
    if bits in (8, 16):
        return w
    if bits == 9:
        hi = _cols(*[((w[:, 8] >> (2 * j)) & 3) << 7 for j in range(8)])
        return torch.cat([w[:, :8] & 511, ((w[:, :8] >> 9) & 127) | hi], dim=1)
    if bits == 10:
        a5 = ((w[:, 0] >> 10) & 63) | ((w[:, 3] >> 4) & 960)
        a6 = ((w[:, 1] >> 10) & 63) | ((w[:, 4] >> 4) & 960)
        a7 = ((w[:, 2] >> 10) & 63) | ((w[:, 3] >> 6) & 768) | ((w[:, 4] >> 8) & 192)
        return torch.cat([w & 1023, _cols(a5, a6, a7)], dim=1)
    if bits == 11:
        lo = (w[:, :8] >> 11) & 31
        hi = torch.cat([
            (w[:, 8:11] << 5) & 2016,
            (w[:, 8:11] >> 1) & 2016,
            _cols(((w[:, 8] >> 7) & 480) | ((w[:, 10] >> 3) & 1536), ((w[:, 9] >> 7) & 480) | ((w[:, 10] >> 5) & 1536)),
        ], dim=1)
        return torch.cat([w[:, :8] & 2047, lo | hi], dim=1)
    if bits == 12:
        a3 = ((w[:, 0] >> 4) & 3840) | ((w[:, 1] >> 8) & 240) | ((w[:, 2] >> 12) & 15)
        return torch.cat([w & 4095, a3[:, None]], dim=1)
    if bits == 13:
        tail = [((w[:, k] >> 13) & 7) | ((w[:, 3 + k] >> 10) & 56) | ((w[:, 6 + k] >> 7) & 448)
                | ((w[:, 9 + k] >> 4) & 3584) | ((w[:, 12] >> (k + 1)) & 4096) for k in range(3)]
        return torch.cat([w & 8191, _cols(*tail)], dim=1)
    if bits == 14:
        top = sum(((w[:, j] >> 14) << (12 - 2 * j)) for j in range(7))
        return torch.cat([w & 16383, top[:, None]], dim=1)
    if bits == 15:
        top = sum(((w[:, j] >> 15) << (14 - j)) for j in range(15))
        return torch.cat([w & 32767, top[:, None]], dim=1)
    raise ValueError(f"no packer for {bits} bits")


def _pack_block(bits: int, a: torch.Tensor) -> torch.Tensor:
    """a: int32 [blocks, elems] in the word type's value range -> int32 [blocks, words]
    (word values, not yet truncated to the word width)"""
    if bits == 1:
        return sum(a[:, k] << k for k in range(8))[:, None]
    if bits == 2:
        return (a[:, 0] | (a[:, 1] << 2) | (a[:, 2] << 4) | (a[:, 3] << 6))[:, None]
    if bits == 3:
        return _cols(a[:, 0] | (a[:, 3] << 3) | (a[:, 6] << 6),
                     a[:, 1] | (a[:, 4] << 3) | (a[:, 7] << 6),
                     a[:, 2] | (a[:, 5] << 3) | ((a[:, 6] << 4) & 64) | ((a[:, 7] << 5) & 128))
    if bits == 4:
        return (a[:, 0] | (a[:, 1] << 4))[:, None]
    if bits == 5:
        return torch.cat([a[:, :3] | (a[:, 5:8] << 5),
                          _cols(a[:, 3] | ((a[:, 5] << 2) & 96) | ((a[:, 7] << 3) & 128),
                                a[:, 4] | ((a[:, 6] << 2) & 96) | ((a[:, 7] << 4) & 128))], dim=1)
    if bits == 6:
        return _cols(*[a[:, j] | ((a[:, 3] << (2 + 2 * j)) & 192) for j in range(3)])
    if bits == 7:
        return _cols(*[a[:, j] | ((a[:, 7] << (j + 1)) & 128) for j in range(7)])
    if bits in (8, 16):
        return a
    if bits == 9:
        w8 = (((a[:, 8] >> 7) & 3) | ((a[:, 9] >> 5) & 12) | ((a[:, 10] >> 3) & 48) | ((a[:, 11] >> 1) & 192)
              | ((a[:, 12] << 1) & 768) | ((a[:, 13] << 3) & 3072) | ((a[:, 14] << 5) & 12288)
              | ((a[:, 15] << 7) & 49152))
        return torch.cat([a[:, :8] | (a[:, 8:] << 9), w8[:, None]], dim=1)
    if bits == 10:
        return torch.cat([a[:, :3] | (a[:, 5:8] << 10),
                          _cols(a[:, 3] | ((a[:, 5] << 4) & 15360) | ((a[:, 7] << 6) & 49152),
                                a[:, 4] | ((a[:, 6] << 4) & 15360) | ((a[:, 7] << 8) & 49152))], dim=1)
    if bits == 11:
        w8 = ((a[:, 8] >> 5) & 63) | ((a[:, 11] << 1) & 4032) | ((a[:, 14] << 7) & 0xF000)
        w9 = ((a[:, 9] >> 5) & 63) | ((a[:, 12] << 1) & 4032) | ((a[:, 15] << 7) & 0xF000)
        w10 = (((a[:, 10] >> 5) & 63) | ((a[:, 13] << 1) & 4032) | ((a[:, 14] << 3) & 12288)
               | ((a[:, 15] << 5) & 0xC000))
        return torch.cat([a[:, :8] | (a[:, 8:] << 11), _cols(w8, w9, w10)], dim=1)
    if bits == 12:
        return _cols(*[a[:, j] | ((a[:, 3] << (4 + 4 * j)) & 61440) for j in range(3)])
    if bits == 13:
        shifts = (13, 10, 7, 4)
        words = [a[:, j] | ((a[:, 13 + j % 3] << shifts[j // 3]) & 57344) for j in range(12)]
        words.append(a[:, 12] | ((((a[:, 13] << 1) & 8192) | ((a[:, 14] << 2) & 16384)
                                  | ((a[:, 15] << 3) & 32768)) & 57344))
        return _cols(*words)
    if bits == 14:
        return _cols(*[a[:, j] | ((a[:, 7] << (2 + 2 * j)) & 49152) for j in range(7)])
    if bits == 15:
        return _cols(*[a[:, j] | ((a[:, 15] << (j + 1)) & 32768) for j in range(15)])
    raise ValueError(f"no packer for {bits} bits")


def _word_mask(t: SdnqType) -> int:
    return 0xFF if t.bits <= 8 else 0xFFFF


def unpack(t: SdnqType, words: torch.Tensor, n: int) -> torch.Tensor:
    """file words of a packed type -> n stored codes (int32)"""
    w = words.reshape(-1)
    if w.dtype in (torch.int16, torch.uint16, torch.int8, torch.uint8):
        w = w.view({1: torch.uint8, 2: torch.int16}[w.element_size()]).to(torch.int32)
    else:
        w = w.to(torch.int32) if w.dtype != torch.int64 else (w & 0xFF).to(torch.int32)
    w = (w & _word_mask(t)).reshape(-1, t.block_words)
    return _unpack_block(t.bits, w).reshape(-1)[:n].contiguous()


def pack(t: SdnqType, codes: torch.Tensor) -> torch.Tensor:
    """stored codes (int32) -> file words, in sdnq's packed shape and storage dtype"""
    n = codes.numel()
    t.storage_numel(n)  # validates the block multiple
    a = codes.reshape(-1, t.block_elems).to(torch.int32)
    a = (a != 0).to(torch.int32) if t.bits == 1 else a & _word_mask(t)
    w = _pack_block(t.bits, a).reshape(-1)
    if t.bits == 1:
        out = w.to(torch.int64)
    elif t.bits <= 8:
        out = (w & 0xFF).to(torch.uint8)
    elif t.bits == 16:
        out = (w & 0xFFFF).to(torch.int32).to(torch.uint16)
    else:
        out = (((w & 0xFFFF) ^ 0x8000) - 0x8000).to(torch.int16)
    return out.reshape(t.packed_shape(n))


# ---------------------------------------------------------------------------
# code values


def _pow2(e: int) -> float:
    return math.ldexp(1.0, e)


def floatx_decode(t: SdnqType, codes: torch.Tensor) -> torch.Tensor:
    """custom float codes -> fp32 (subnormals, no inf/NaN, both zeros -> +0)"""
    c = codes.to(torch.int32)
    e, m = t.exponent, t.mantissa
    bias = (1 << (e - 1)) - 1
    mant = c & ((1 << m) - 1)
    expo = (c >> m) & ((1 << e) - 1)
    normal = (((expo - bias + 127) << 23) | (mant << (23 - m))).view(torch.float32)
    sub = mant.to(torch.float32) * _pow2(1 - bias - m)
    v = torch.where(expo == 0, sub, normal)
    if t.family == "FLOATX":
        v = torch.where(((c >> (t.bits - 1)) & 1) == 1, -v, v)
    return torch.where((expo == 0) & (mant == 0), torch.zeros_like(v), v)


def floatx_encode(t: SdnqType, x: torch.Tensor) -> torch.Tensor:
    """fp32 -> custom float codes with sdnq's rounding (see csrc/codec.h)"""
    e, m, bits = t.exponent, t.mantissa, t.bits
    md, ed = 23 - m, 8 - e
    xi = x.to(torch.float32).contiguous().view(torch.int32)
    top4 = xi & ((-(1 << (md - 4))) & ~(-(1 << md)))
    xi = torch.where(top4 > (1 << (md - 1)), xi + (1 << md), xi)
    min_normal = _pow2(2 - (1 << (e - 1)))
    a = xi.view(torch.float32).abs()
    r = torch.round(a * _pow2(m - 2 + (1 << (e - 1)))).to(torch.int32)
    xi = torch.where(a < min_normal, (xi & -0x80000000) | (r << md), xi)
    xs = xi >> md
    sign_mask = (1 << (bits - 1)) | (1 << (bits - 2)) if t.family == "FLOATX" else (1 << (bits - 1))
    return (((xs >> ed) & sign_mask) | (xs & ~sign_mask)) & ((1 << bits) - 1)


def weight_values(t: SdnqType, raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What dequantization multiplies: each code's value converted to the scale dtype,
    as sdnq converts it (signed packed integers: code, then + min, in that dtype).
    raw: stored codes (int32) for packed types, the file tensor for native ones."""
    if not t.is_packed:
        return raw.to(dtype)
    if t.family == "INT":
        return raw.to(dtype).add_(int(t.min))
    if t.family == "UINT":
        return raw.to(dtype)
    return floatx_decode(t, raw).to(dtype)


# ---------------------------------------------------------------------------
# dequantization (elementwise stage) and its dense follow-ups


def dequantize(t: SdnqType, raw: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
               view: tuple[int, int, int], codebook: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """-> [outer, red, inner] in out_dtype. scale/zero_point: [outer or 1, 1 or levels, inner or 1]."""
    o, r, i = view
    if codebook:
        idx = raw.reshape(o, r, i).to(torch.int64)
        levels = scale.expand(o, scale.shape[1], i)
        out = torch.gather(levels, 1, idx)
    else:
        v = weight_values(t, raw.reshape(-1), scale.dtype).reshape(o, r, i)
        out = torch.addcmul(zero_point, v, scale) if t.is_unsigned else v * scale
    return out.to(out_dtype)


def svd_add_(w: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """w [rows, cols] += up [rows, r] @ down [r, cols], fp32 accumulation, in place"""
    w.copy_(w.float() + up.float() @ down.float())
    return w


def hadamard_matrix(h: int, use_h4: bool, dtype: torch.dtype, device=None) -> torch.Tensor:
    """normalized Hadamard matrix with entries rounded to dtype, as sdnq builds it: kron
    powers of H4 when use_h4 and h is a power of 4 (sdnq >= 0.2.1), of H2 otherwise"""
    pow4 = h & (h - 1) == 0 and (h.bit_length() - 1) % 2 == 0
    base = torch.tensor([[1.0, 1.0, 1.0, -1.0], [1.0, 1.0, -1.0, 1.0], [1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, 1.0, 1.0]]
                        if use_h4 and pow4 else [[1.0, 1.0], [1.0, -1.0]], device=device)
    mat = base
    while mat.shape[0] < h:
        mat = torch.kron(mat, base)
    c = torch.tensor(1.0 / math.sqrt(h), dtype=torch.float32).to(dtype).float()
    return (mat * c).to(dtype)


def hadamard_(w: torch.Tensor, h: int, use_h4: bool) -> torch.Tensor:
    """rows of w [rows, cols] in blocks of h -> block @ H, fp32 accumulation, in place"""
    mat = hadamard_matrix(h, use_h4, w.dtype, w.device).float()
    rows, cols = w.shape
    w.copy_((w.float().reshape(-1, h) @ mat).reshape(rows, cols))
    return w


# ---------------------------------------------------------------------------
# quantization (elementwise stage)


def quantize(t: SdnqType, w: torch.Tensor, view: tuple[int, int, int], tensorwise: bool,
             scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """fp32 w -> (stored codes int32 [outer, red, inner], scale, zero_point) as sdnq's quantize_weight.
    scale/zero_point: [outer, 1, inner] (or [1, 1, 1] tensor-wise) in scale_dtype."""
    o, r, i = view
    x = w.reshape(o, r, i).to(torch.float32)
    dims = (0, 1, 2) if tensorwise else 1
    if t.is_unsigned:
        lo = torch.amin(x, dim=dims, keepdim=True)
        hi = torch.amax(x, dim=dims, keepdim=True)
        scale = (hi - lo).div_(t.max - t.min).to(scale_dtype)
        zero_point = lo.to(scale_dtype)
        q = torch.sub(x, zero_point).div_(scale)
    else:
        scale = torch.amax(x.abs(), dim=dims, keepdim=True).div_(t.max).to(scale_dtype)
        zero_point = None
        q = torch.div(x, scale)
    return _codes(t, q), scale, zero_point


def _codes(t: SdnqType, q: torch.Tensor) -> torch.Tensor:
    if t.is_integer:
        q = q.round_().clamp_(t.min, t.max)
        if not t.is_packed:
            if t.storage == "U32":
                return q.to(torch.uint32).view(torch.int32)
            return q.to(t.storage_dtype).to(torch.int32)
        if t.bits == 1:
            return q.to(torch.bool).to(torch.int32)
        code_dtype = torch.int16 if t.bits > 8 else (torch.int8 if t.family == "INT" else torch.uint8)
        c = q.to(code_dtype)
        if t.family == "INT":
            c = c.sub(int(t.min))
        if t.bits < 8:
            return c.to(torch.uint8).to(torch.int32)
        return c.to(torch.int32)
    q = q.nan_to_num_().clamp_(t.min, t.max)
    if t.is_packed:
        return floatx_encode(t, q)
    stored = q.to(t.storage_dtype)
    if stored.element_size() == 4:
        return stored.view(torch.int32)
    if stored.element_size() == 2:
        return stored.view(torch.int16).to(torch.int32) & 0xFFFF
    return stored.view(torch.uint8).to(torch.int32)
