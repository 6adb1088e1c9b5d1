/*
 * codec.h - comfy_sdnq internal header: element codecs shared by the C core
 * and the CUDA kernels (every function is SDNQ_HD: host and device).
 *
 * Float formats: fp32 <-> bf16 / fp16 / fp8 conversions with torch's rounding
 * (round to nearest even) and NaN rules, custom SDNQ float codes, and the
 * value of a stored code in each type family. This is the one place that
 * decodes a family: a new family adds its decoder here.
 */
#ifndef SDNQ_CODEC_H
#define SDNQ_CODEC_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "sdnq/sdnq.h"

#ifdef __CUDACC__
#define SDNQ_HD __host__ __device__ __forceinline__
#else
#define SDNQ_HD static inline
#endif

/* ------------------------------------------------------------------------ */
/* bit casts                                                                 */

SDNQ_HD uint32_t sdnq_f32_bits(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

SDNQ_HD float sdnq_f32_from_bits(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

/* arithmetic right shift of a signed value; portable (C leaves >> on negative
 * values implementation-defined) */
SDNQ_HD int32_t sdnq_asr32(int32_t x, int k) {
    return x >= 0 ? (int32_t)((uint32_t)x >> k) : (int32_t) ~(~(uint32_t)x >> k);
}

/* ------------------------------------------------------------------------ */
/* fp32 <-> bf16 / fp16                                                      */

SDNQ_HD uint16_t sdnq_f32_to_bf16(float f) {
    uint32_t u = sdnq_f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u; /* NaN, as torch */
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

SDNQ_HD float sdnq_bf16_to_f32(uint16_t h) { return sdnq_f32_from_bits((uint32_t)h << 16); }

SDNQ_HD uint16_t sdnq_f32_to_f16(float f) {
    uint32_t u = sdnq_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    u &= 0x7FFFFFFFu;
    if (u > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);  /* NaN keeps its sign */
    if (u >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds past 65504 */
    if (u < 0x38800000u) {                                   /* fp16 subnormal or zero */
        if (u < 0x33000000u) return (uint16_t)sign;          /* below half the smallest subnormal */
        uint32_t e = u >> 23, m = (u & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - e;
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    return (uint16_t)(sign | ((u - 0x38000000u + 0xFFFu + ((u >> 13) & 1u)) >> 13));
}

SDNQ_HD float sdnq_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0x1Fu) return sdnq_f32_from_bits(sign | 0x7F800000u | (m << 13));
    if (e == 0) {
        if (m == 0) return sdnq_f32_from_bits(sign);
        /* subnormal: m * 2^-24, exact in fp32 */
        float v = (float)m * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return sdnq_f32_from_bits(sign | ((e + 112u) << 23) | (m << 13));
}

/* ------------------------------------------------------------------------ */
/* fp8 formats                                                               */

SDNQ_HD float sdnq_fp8_to_f32(uint8_t x, int32_t dtype) {
    uint32_t s = (x >> 7) & 1u;
    float v;
    switch (dtype) {
    case SDNQ_DT_F8_E4M3FN: {
        uint32_t e = (x >> 3) & 0xFu, m = x & 7u;
        if (e == 0xFu && m == 7u) return sdnq_f32_from_bits(0x7FC00000u | (s << 31));
        v = e ? sdnq_f32_from_bits(((e + 120u) << 23) | (m << 20)) : (float)m * 0.001953125f; /* 2^-9 */
        break;
    }
    case SDNQ_DT_F8_E5M2: {
        uint32_t e = (x >> 2) & 0x1Fu, m = x & 3u;
        if (e == 0x1Fu) return sdnq_f32_from_bits((s << 31) | 0x7F800000u | (m << 21));
        v = e ? sdnq_f32_from_bits(((e + 112u) << 23) | (m << 21)) : (float)m * 1.52587890625e-05f; /* 2^-16 */
        break;
    }
    case SDNQ_DT_F8_E4M3FNUZ: {
        if (x == 0x80u) return sdnq_f32_from_bits(0x7FC00000u);
        uint32_t e = (x >> 3) & 0xFu, m = x & 7u;
        v = e ? sdnq_f32_from_bits(((e + 119u) << 23) | (m << 20)) : (float)m * 0.0009765625f; /* 2^-10 */
        break;
    }
    case SDNQ_DT_F8_E5M2FNUZ: {
        if (x == 0x80u) return sdnq_f32_from_bits(0x7FC00000u);
        uint32_t e = (x >> 2) & 0x1Fu, m = x & 3u;
        v = e ? sdnq_f32_from_bits(((e + 111u) << 23) | (m << 21)) : (float)m * 7.62939453125e-06f; /* 2^-17 */
        break;
    }
    case SDNQ_DT_F8_E8M0FNU:
        if (x == 0xFFu) return sdnq_f32_from_bits(0x7FC00000u);
        return x ? sdnq_f32_from_bits((uint32_t)x << 23) : 5.877471754111438e-39f; /* 2^-127 */
    default:
        return 0.0f;
    }
    return s ? -v : v;
}

/* fp32 -> fnuz fp8 (e4m3fnuz bias 8, e5m2fnuz bias 16) as torch converts:
 * round to nearest even, no inf and no negative zero, NaN and overflow -> 0x80 */
SDNQ_HD uint8_t sdnq_f32_to_fnuz(float f, int m, int bias) {
    uint32_t u = sdnq_f32_bits(f);
    uint32_t sign = u >> 31;
    u &= 0x7FFFFFFFu;
    if (u > 0x7F800000u) return 0x80u;
    if (u == 0) return 0;
    int32_t ef = (int32_t)(u >> 23);
    uint32_t code;
    if ((ef ? ef : 1) - 127 < 1 - bias) { /* below the smallest normal: subnormal codes */
        uint32_t mant = (u & 0x7FFFFFu) | (ef ? 0x800000u : 0u);
        int32_t shift = 150 + 1 - bias - m - (ef ? ef : 1);
        if (shift > 25) return 0;
        uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        code = q;
    } else {
        uint32_t r = (u + ((1u << (22 - m)) - 1u) + ((u >> (23 - m)) & 1u)) >> (23 - m);
        code = r - ((uint32_t)(127 - bias) << m);
    }
    if (code > 0x7Fu) return 0x80u;
    return code ? (uint8_t)(code | (sign << 7)) : 0;
}

/* fp32 -> float8_e8m0fnu as torch converts: sign dropped, exponent rounded to
 * nearest (guard/round/sticky, the implied bit as LSB), NaN/inf -> 0xFF */
SDNQ_HD uint8_t sdnq_f32_to_e8m0(float f) {
    uint32_t u = sdnq_f32_bits(f);
    uint32_t e = (u >> 23) & 0xFFu;
    if (e == 0xFFu) return 0xFFu;
    uint32_t g = (u & 0x400000u) != 0, r = (u & 0x200000u) != 0, s = (u & 0x1FFFFFu) != 0, lsb = e > 0;
    if (g && (r || s || lsb)) e++;
    return (uint8_t)e;
}

/* fp32 -> fp8 of any torch fp8 dtype (round to nearest even; e4m3fn has no
 * inf: overflow gives NaN; e5m2 overflows to inf; fnuz/e8m0 as above). */
SDNQ_HD uint8_t sdnq_f32_to_fp8(float f, int32_t dtype) {
    uint32_t u = sdnq_f32_bits(f);
    uint32_t sign = (u >> 24) & 0x80u;
    u &= 0x7FFFFFFFu;
    switch (dtype) {
    case SDNQ_DT_F8_E4M3FN:
        if (u >= 0x43F00000u) return (uint8_t)(sign | 0x7Fu); /* >= 480 or NaN */
        if (u < (121u << 23)) {                               /* below 2^-6: subnormal */
            float t = sdnq_f32_from_bits(u) + sdnq_f32_from_bits(141u << 23);
            return (uint8_t)(sign | (sdnq_f32_bits(t) - (141u << 23)));
        }
        return (uint8_t)(sign | ((u + ((uint32_t)(7 - 127) << 23) + 0x7FFFFu + ((u >> 20) & 1u)) >> 20));
    case SDNQ_DT_F8_E5M2:
        if (u >= (143u << 23)) return (uint8_t)(sign | (u > 0x7F800000u ? 0x7Fu : 0x7Cu));
        if (u < (113u << 23)) {
            float t = sdnq_f32_from_bits(u) + sdnq_f32_from_bits(134u << 23);
            return (uint8_t)(sign | (sdnq_f32_bits(t) - (134u << 23)));
        }
        return (uint8_t)(sign | ((u + ((uint32_t)(15 - 127) << 23) + 0xFFFFFu + ((u >> 21) & 1u)) >> 21));
    case SDNQ_DT_F8_E4M3FNUZ: return sdnq_f32_to_fnuz(f, 3, 8);
    case SDNQ_DT_F8_E5M2FNUZ: return sdnq_f32_to_fnuz(f, 2, 16);
    default: return sdnq_f32_to_e8m0(f);
    }
}

/* ------------------------------------------------------------------------ */
/* division by a per-row quantization scale                                  */

/* Row quantization divides each x of a row by s = amax / qmax (|x| <= amax). With r = 1/s
 * correctly rounded and s in [2^-90, 2^120] (sdnq_row_div_quick), one product and one remainder
 * correction (the fast path nvcc emits for a correctly rounded division, with the row's
 * reciprocal instead of one per element) give x / s correctly rounded wherever |x / s| >= 2^-11;
 * below, where the remainder may underflow, possibly an ulp off, and both round to the same int8
 * (0) and e4m3 (+-0) codes. The sign is x's (the correction turns -0 into +0). tests/c/test_core.c (test_row_division) checks this on every finite
 * bf16 and fp16 x for a spread of scales. */
SDNQ_HD int sdnq_row_div_quick(float s) { return s >= 0x1p-90f && s <= 0x1p+120f; }

SDNQ_HD float sdnq_row_div(float x, float s, float r) {
#ifdef __CUDA_ARCH__
    const float q0 = __fmul_rn(x, r);
    return copysignf(__fmaf_rn(__fmaf_rn(-s, q0, x), r, q0), x); /* -0 / s is -0 */
#else
    const float q0 = x * r;
    return copysignf(fmaf(fmaf(-s, q0, x), r, q0), x);
#endif
}

/* ------------------------------------------------------------------------ */
/* rounding to an arithmetic dtype                                           */

/* v rounded to dtype (F32, BF16, F16) and widened back to fp32 */
SDNQ_HD float sdnq_round_to(float v, int32_t dtype) {
    if (dtype == SDNQ_DT_BF16) return sdnq_bf16_to_f32(sdnq_f32_to_bf16(v));
    if (dtype == SDNQ_DT_F16) return sdnq_f16_to_f32(sdnq_f32_to_f16(v));
    return v;
}

SDNQ_HD float sdnq_load_float(const void *p, int64_t i, int32_t dtype) {
    switch (dtype) {
    case SDNQ_DT_F32: return ((const float *)p)[i];
    case SDNQ_DT_BF16: return sdnq_bf16_to_f32(((const uint16_t *)p)[i]);
    case SDNQ_DT_F16: return sdnq_f16_to_f32(((const uint16_t *)p)[i]);
    default: return 0.0f;
    }
}

SDNQ_HD void sdnq_store_float(void *p, int64_t i, int32_t dtype, float v) {
    switch (dtype) {
    case SDNQ_DT_F32: ((float *)p)[i] = v; break;
    case SDNQ_DT_BF16: ((uint16_t *)p)[i] = sdnq_f32_to_bf16(v); break;
    case SDNQ_DT_F16: ((uint16_t *)p)[i] = sdnq_f32_to_f16(v); break;
    default: break;
    }
}

SDNQ_HD int sdnq_is_arith_dtype(int32_t dtype) {
    return dtype == SDNQ_DT_F32 || dtype == SDNQ_DT_BF16 || dtype == SDNQ_DT_F16;
}

/* ------------------------------------------------------------------------ */
/* custom SDNQ float codes: [sign | exponent (bias 2^(e-1)-1) | mantissa],  */
/* subnormals at exponent 0, no inf or NaN; unsigned codes have no sign.    */

SDNQ_HD float sdnq_floatx_decode(uint32_t code, int bits, int e, int m, int is_signed) {
    uint32_t mant = code & ((1u << m) - 1u);
    uint32_t expo = (code >> m) & ((1u << e) - 1u);
    uint32_t sign = is_signed ? (code >> (bits - 1)) & 1u : 0u;
    int bias = (1 << (e - 1)) - 1;
    float v;
    if (expo == 0) {
        if (mant == 0) return 0.0f; /* both zero codes decode to +0 in sdnq */
        /* min_normal * mant / 2^m = mant * 2^(1 - bias - m), exact */
        v = (float)mant * sdnq_f32_from_bits((uint32_t)(127 + 1 - bias - m) << 23);
    } else {
        v = sdnq_f32_from_bits(((uint32_t)((int)expo - bias + 127) << 23) | (mant << (23 - m)));
    }
    return sign ? -v : v;
}

/* fp32 -> code, exactly as sdnq's packed_float encoder: round up when the top
 * four discarded mantissa bits exceed one half, subnormals by round-half-even
 * of |x| / min_normal * 2^m, then keep sign, exponent and mantissa bits. */
SDNQ_HD uint32_t sdnq_floatx_encode(float f, int bits, int e, int m, int is_signed) {
    int md = 23 - m, ed = 8 - e;
    uint32_t x = sdnq_f32_bits(f);
    uint32_t top4 = x & (((uint32_t)-1 << (md - 4)) & ~((uint32_t)-1 << md));
    if (top4 > (1u << (md - 1))) x += 1u << md;
    if (e < 8) {
        float min_normal = sdnq_f32_from_bits((uint32_t)(127 + 2 - (1 << (e - 1))) << 23);
        float a = sdnq_f32_from_bits(x & 0x7FFFFFFFu);
        if (a < min_normal) {
            /* a * 2^m / min_normal is exact (power of two); round half to even */
            float t = a * sdnq_f32_from_bits((uint32_t)(127 + m - (2 - (1 << (e - 1)))) << 23);
            float r = (float)(int32_t)t;
            float frac = t - r;
            if (frac > 0.5f || (frac == 0.5f && ((int32_t)r & 1))) r += 1.0f;
            x = (x & 0x80000000u) | ((uint32_t)(int32_t)r << md);
        }
    }
    int32_t xs = sdnq_asr32((int32_t)x, md);
    uint32_t sign_mask = is_signed ? (1u << (bits - 1)) | (1u << (bits - 2)) : (1u << (bits - 1));
    uint32_t code = (((uint32_t)sdnq_asr32(xs, ed) & sign_mask) | ((uint32_t)xs & ~sign_mask));
    return code & (uint32_t)((1ull << bits) - 1u);
}

/* ------------------------------------------------------------------------ */
/* value of a stored code, as sdnq's unpackers yield it, in fp32            */

/* Packed types: integers (signed ones carry the offset -min), float codes. */
SDNQ_HD float sdnq_code_value(const sdnq_type_traits *t, int32_t code) {
    switch (t->family) {
    case SDNQ_FAMILY_INT: return (float)((int64_t)code + (int64_t)t->min); /* any int32 code: no overflow */
    case SDNQ_FAMILY_UINT: return (float)code;
    case SDNQ_FAMILY_FLOATX: return sdnq_floatx_decode((uint32_t)code, t->bits, t->exponent, t->mantissa, 1);
    case SDNQ_FAMILY_UFLOATX: return sdnq_floatx_decode((uint32_t)code, t->bits, t->exponent, t->mantissa, 0);
    default: return 0.0f;
    }
}

/* The value dequantization multiplies, already rounded to the arithmetic
 * dtype: sdnq converts codes to the scale dtype first (signed packed
 * integers: code, then + min, both rounded in that dtype). `raw` is the
 * storage element for native types, the stored code for packed ones. */
SDNQ_HD float sdnq_weight_value(const sdnq_type_traits *t, uint32_t raw, int32_t sdt) {
    if (!t->is_packed) {
        switch (t->storage) {
        case SDNQ_DT_I8: return sdnq_round_to((float)(int8_t)raw, sdt);
        case SDNQ_DT_U8: return sdnq_round_to((float)(uint8_t)raw, sdt);
        case SDNQ_DT_I16: return sdnq_round_to((float)(int16_t)raw, sdt);
        case SDNQ_DT_U16: return sdnq_round_to((float)(uint16_t)raw, sdt);
        case SDNQ_DT_I32: return sdnq_round_to((float)(int32_t)raw, sdt);
        case SDNQ_DT_U32: return sdnq_round_to((float)raw, sdt);
        case SDNQ_DT_F32: return sdnq_round_to(sdnq_f32_from_bits(raw), sdt);
        case SDNQ_DT_BF16: return sdnq_round_to(sdnq_bf16_to_f32((uint16_t)raw), sdt);
        case SDNQ_DT_F16: return sdnq_round_to(sdnq_f16_to_f32((uint16_t)raw), sdt);
        default: return sdnq_round_to(sdnq_fp8_to_f32((uint8_t)raw, t->storage), sdt);
        }
    }
    if (t->family == SDNQ_FAMILY_INT)
        return sdnq_round_to(sdnq_round_to((float)(int32_t)raw, sdt) + (float)t->min, sdt);
    return sdnq_round_to(sdnq_code_value(t, (int32_t)raw), sdt);
}

#endif /* SDNQ_CODEC_H */
