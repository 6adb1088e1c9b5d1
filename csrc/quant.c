/*
 * quant.c - SDNQ quantization on the CPU: fp32 weights -> scale,
 * zero_point and stored codes, bit-exact with sdnq's quantize_weight.
 *
 * Per group: symmetric scale = amax|w| / max, or asymmetric zero_point = min
 * and scale = (max - min) / (qmax - qmin); both optionally rounded to
 * bf16/fp16 before use. Codes: integers round half to even and clamp, floats
 * clamp and convert (native dtypes) or encode (custom codes). torch's
 * float -> integer conversion keeps the low bits of a 32-bit truncation
 * (NaN and overflow give INT32_MIN), which is how sdnq's codes come out for
 * empty groups and for the uint9..uint15 maximum; this file follows it.
 */
#include <math.h>
#include <stdint.h>

#include "codec.h"
#include "internal.h"

/* torch's float -> int32 conversion (x86 truncation: NaN/overflow -> INT32_MIN) */
static int32_t f2i32(float q) {
    if (!(q >= -2147483648.0f && q < 2147483648.0f)) return INT32_MIN;
    return (int32_t)q;
}

static int32_t sext8(int32_t x) { return ((x & 0xFF) ^ 0x80) - 0x80; }
static int32_t sext16(int32_t x) { return ((x & 0xFFFF) ^ 0x8000) - 0x8000; }

/* A rounded, clamped integer as the stored code: what sdnq's packer receives
 * after q.to(torch_dtype) (int8/uint8/int16/bool), the signed offset taken in
 * that dtype, and the cast to the storage dtype. Native types: the element. */
static int32_t int_code(const sdnq_type_traits *t, float q) {
    if (t->storage == SDNQ_DT_U32) { /* torch goes through int64 here */
        if (q != q) return INT32_MIN;
        if (!(q >= -9.2233720368547758e18f && q < 9.2233720368547758e18f)) return 0;
        return (int32_t)(uint32_t)(uint64_t)(int64_t)q;
    }
    int32_t v = f2i32(q);
    if (!t->is_packed) {
        switch (t->storage) {
        case SDNQ_DT_I8: return sext8(v);
        case SDNQ_DT_U8: return v & 0xFF;
        case SDNQ_DT_I16: return sext16(v);
        case SDNQ_DT_U16: return v & 0xFFFF;
        default: return v;
        }
    }
    if (t->bits == 1) return v != 0;
    if (t->family == SDNQ_FAMILY_INT) {
        int32_t m = (int32_t)t->min;
        return t->bits < 8 ? sext8(sext8(v) - m) & 0xFF : sext16(sext16(v) - m);
    }
    return t->bits < 8 ? v & 0xFF : sext16(v);
}

static int32_t float_code(const sdnq_type_traits *t, float q) {
    /* nan_to_num then clamp, as sdnq */
    if (q != q) q = 0.0f;
    else if (q == INFINITY) q = 3.4028234663852886e38f;
    else if (q == -INFINITY) q = -3.4028234663852886e38f;
    float lo = (float)t->min, hi = (float)t->max;
    q = q < lo ? lo : (q > hi ? hi : q);
    switch (t->family) {
    case SDNQ_FAMILY_FLOATX: return (int32_t)sdnq_floatx_encode(q, t->bits, t->exponent, t->mantissa, 1);
    case SDNQ_FAMILY_UFLOATX: return (int32_t)sdnq_floatx_encode(q, t->bits, t->exponent, t->mantissa, 0);
    default: break;
    }
    switch (t->storage) {
    case SDNQ_DT_F32: return (int32_t)sdnq_f32_bits(q);
    case SDNQ_DT_BF16: return sdnq_f32_to_bf16(q);
    case SDNQ_DT_F16: return sdnq_f32_to_f16(q);
    default: return sdnq_f32_to_fp8(q, t->storage);
    }
}

static int32_t code_of(const sdnq_type_traits *t, float q) {
    if (!t->is_integer) return float_code(t, q);
    q = nearbyintf(q); /* round half to even */
    float lo = (float)t->min, hi = (float)t->max;
    if (q < lo) q = lo; /* NaN passes through, as torch.clamp */
    if (q > hi) q = hi;
    return int_code(t, q);
}

static sdnq_status quant_check(const sdnq_quant_desc *d, const sdnq_type_traits **tp, int64_t *groups) {
    if (d == NULL) return SDNQ_ERR_NULL;
    const sdnq_type_traits *t = sdnq_type_get(d->type);
    if (t == NULL) return SDNQ_ERR_TYPE;
    if (t->is_unsigned && t->min != 0.0) return SDNQ_ERR_UNSUPPORTED;
    if (!sdnq_is_arith_dtype(d->scale_dtype)) return SDNQ_ERR_DTYPE;
    if (d->outer < 0 || d->red < 0 || d->inner < 0) return SDNQ_ERR_SIZE;
    int64_t n = sdnq_mul64(sdnq_mul64(d->outer, d->red), d->inner);
    if (n < 0) return SDNQ_ERR_OVERFLOW;
    int64_t g = d->tensorwise ? 1 : sdnq_mul64(d->outer, d->inner);
    if (g < 0) return SDNQ_ERR_OVERFLOW;
    if (d->w_numel < n || d->codes_numel < n || d->scale_numel < g) return SDNQ_ERR_RANGE;
    if (n > 0 && (d->w == NULL || d->codes == NULL || d->scale == NULL)) return SDNQ_ERR_NULL;
    if (t->is_unsigned && n > 0 && d->zero_point == NULL) return SDNQ_ERR_NULL;
    if (!t->is_unsigned && d->zero_point != NULL) return SDNQ_ERR_SIZE;
    *tp = t;
    *groups = g;
    return SDNQ_OK;
}

/* Scale (and zero-point) of one group from its extremes; returns the values
 * the division uses (rounded to the scale dtype) and stores them. */
static void group_params(const sdnq_type_traits *t, const sdnq_quant_desc *d, int64_t g, float lo, float hi,
                         float amax, float *s_out, float *z_out) {
    float s, z = 0.0f;
    if (t->is_unsigned) {
        s = (hi - lo) / (float)(t->max - t->min);
        z = lo;
        z = sdnq_round_to(z, d->scale_dtype);
        sdnq_store_float(d->zero_point, g, d->scale_dtype, z);
    } else {
        s = amax / (float)t->max;
    }
    s = sdnq_round_to(s, d->scale_dtype);
    sdnq_store_float(d->scale, g, d->scale_dtype, s);
    *s_out = s;
    *z_out = z;
}

static float qdiv(float w, float s, float z, int asym) { return asym ? (w - z) / s : w / s; }

/* NaN-propagating extremes, like torch.amax/amin */
static void fold(float x, float *lo, float *hi, float *amax, int *nan) {
    if (x != x) *nan = 1;
    if (x < *lo) *lo = x;
    if (x > *hi) *hi = x;
    float a = fabsf(x);
    if (a > *amax) *amax = a;
}

static void finish_fold(float *lo, float *hi, float *amax, int nan) {
    if (nan) *lo = *hi = *amax = NAN;
}

sdnq_status sdnq_quantize_ref(const sdnq_quant_desc *d) {
    const sdnq_type_traits *t;
    int64_t groups;
    sdnq_status st = quant_check(d, &t, &groups);
    if (st != SDNQ_OK) return st;
    const int64_t n = d->outer * d->red * d->inner;
    if (n == 0) return SDNQ_OK;
    const int asym = t->is_unsigned;
    for (int64_t g = 0; g < groups; g++) {
        const int64_t o = d->tensorwise ? 0 : g / d->inner, i = d->tensorwise ? 0 : g % d->inner;
        float lo = INFINITY, hi = -INFINITY, amax = 0.0f, s, z;
        int nan = 0;
        if (d->tensorwise) {
            for (int64_t e = 0; e < n; e++) fold(d->w[e], &lo, &hi, &amax, &nan);
        } else {
            for (int64_t j = 0; j < d->red; j++) fold(d->w[(o * d->red + j) * d->inner + i], &lo, &hi, &amax, &nan);
        }
        finish_fold(&lo, &hi, &amax, nan);
        group_params(t, d, g, lo, hi, amax, &s, &z);
        if (d->tensorwise) {
            for (int64_t e = 0; e < n; e++) d->codes[e] = code_of(t, qdiv(d->w[e], s, z, asym));
        } else {
            for (int64_t j = 0; j < d->red; j++) {
                int64_t e = (o * d->red + j) * d->inner + i;
                d->codes[e] = code_of(t, qdiv(d->w[e], s, z, asym));
            }
        }
    }
    return SDNQ_OK;
}

/* fast path: groups in parallel; contiguous groups (inner == 1) in tight loops,
 * a tensor-wise group split into runs for its two passes */
sdnq_status sdnq_quantize(const sdnq_quant_desc *d, int32_t nthreads) {
    const sdnq_type_traits *t;
    int64_t groups;
    sdnq_status st = quant_check(d, &t, &groups);
    if (st != SDNQ_OK) return st;
    const int64_t n = d->outer * d->red * d->inner;
    if (n == 0) return SDNQ_OK;
    const int asym = t->is_unsigned;

    if (d->tensorwise) {
        enum { RUNS = 64 };
        float los[RUNS], his[RUNS], amaxs[RUNS];
        int nans[RUNS];
        const int64_t run = (n + RUNS - 1) / RUNS;
        int64_t r;
#pragma omp parallel for num_threads(sdnq_threads(nthreads, RUNS)) schedule(static)
        for (r = 0; r < RUNS; r++) {
            float lo = INFINITY, hi = -INFINITY, amax = 0.0f;
            int nan = 0;
            int64_t e1 = (r + 1) * run < n ? (r + 1) * run : n;
            for (int64_t e = r * run; e < e1; e++) fold(d->w[e], &lo, &hi, &amax, &nan);
            los[r] = lo;
            his[r] = hi;
            amaxs[r] = amax;
            nans[r] = nan;
        }
        float lo = INFINITY, hi = -INFINITY, amax = 0.0f, s, z;
        int nan = 0;
        for (int k = 0; k < RUNS; k++) {
            nan |= nans[k];
            if (los[k] < lo) lo = los[k];
            if (his[k] > hi) hi = his[k];
            if (amaxs[k] > amax) amax = amaxs[k];
        }
        finish_fold(&lo, &hi, &amax, nan);
        group_params(t, d, 0, lo, hi, amax, &s, &z);
#pragma omp parallel for num_threads(sdnq_threads(nthreads, RUNS)) schedule(static)
        for (r = 0; r < RUNS; r++) {
            int64_t e1 = (r + 1) * run < n ? (r + 1) * run : n;
            for (int64_t e = r * run; e < e1; e++) d->codes[e] = code_of(t, qdiv(d->w[e], s, z, asym));
        }
        return SDNQ_OK;
    }

    int64_t g;
#pragma omp parallel for num_threads(sdnq_threads(nthreads, groups)) schedule(static)
    for (g = 0; g < groups; g++) {
        const int64_t o = g / d->inner, i = g % d->inner, in = d->inner;
        const float *w = d->w + o * d->red * in + i;
        int32_t *c = d->codes + o * d->red * in + i;
        float lo = INFINITY, hi = -INFINITY, amax = 0.0f, s, z;
        int nan = 0;
        for (int64_t j = 0; j < d->red; j++) fold(w[j * in], &lo, &hi, &amax, &nan);
        finish_fold(&lo, &hi, &amax, nan);
        group_params(t, d, g, lo, hi, amax, &s, &z);
        for (int64_t j = 0; j < d->red; j++) c[j * in] = code_of(t, qdiv(w[j * in], s, z, asym));
    }
    return SDNQ_OK;
}
