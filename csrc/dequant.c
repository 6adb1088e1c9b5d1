/*
 * dequant.c - SDNQ dequantization on the CPU: codes + scale (+ zero_point or
 * codebook) -> dense weights, bit-exact with sdnq's elementwise stage.
 *
 * sdnq converts each code to the scale dtype, multiplies by the scale in
 * that dtype (unsigned families: one fused multiply-add with the zero-point,
 * torch's addcmul) and converts the result to the output dtype. The
 * reference does exactly that one element at a time; the fast path unpacks
 * runs of codes, reads their values from a 2^bits lookup table built with
 * the same rounding, and splits the work over threads.
 */
#include <math.h>
#include <stdint.h>

#include "codec.h"
#include "internal.h"

static uint32_t load_raw(const void *p, int64_t e, int32_t dtype) {
    switch (sdnq_dtype_size(dtype)) {
    case 1: return ((const uint8_t *)p)[e];
    case 2: return ((const uint16_t *)p)[e];
    default: return ((const uint32_t *)p)[e];
    }
}

/* sdnq's elementwise step in fp32 opmath, rounded to the scale dtype. For
 * bf16/fp16 scales v*s is exact in fp32, so mul + add equals the fused op. */
static inline float scale_value(float v, float s, float z, int asym, int32_t sdt) {
    float r;
    if (!asym)
        r = v * s;
    else if (sdt == SDNQ_DT_F32)
        r = fmaf(v, s, z);
    else
        r = v * s + z;
    return sdnq_round_to(r, sdt);
}

static sdnq_status dequant_check(const sdnq_dequant_desc *d, const sdnq_type_traits **tp, int64_t *nlevels) {
    if (d == NULL) return SDNQ_ERR_NULL;
    const sdnq_type_traits *t = sdnq_type_get(d->type);
    if (t == NULL) return SDNQ_ERR_TYPE;
    if (d->outer < 0 || d->red < 0 || d->inner < 0) return SDNQ_ERR_SIZE;
    int64_t n = sdnq_mul64(sdnq_mul64(d->outer, d->red), d->inner);
    if (n < 0) return SDNQ_ERR_OVERFLOW;
    if (!sdnq_is_arith_dtype(d->scale_dtype) || !sdnq_is_arith_dtype(d->out_dtype)) return SDNQ_ERR_DTYPE;
    if (d->scale_numel < 0 || d->zp_numel < 0 || d->out_numel < 0 || d->codes_bytes < 0) return SDNQ_ERR_SIZE;

    if (t->is_packed) {
        int64_t blocks;
        sdnq_status st = sdnq_packed_geometry(d->type, n, d->codes_bytes, &t, &blocks);
        if (st != SDNQ_OK) return st;
    } else {
        int64_t need = sdnq_mul64(n, sdnq_dtype_size(t->storage));
        if (need < 0) return SDNQ_ERR_OVERFLOW;
        if (need > d->codes_bytes) return SDNQ_ERR_RANGE;
    }

    int64_t levels = 1;
    if (d->codebook) {
        if (!(t->is_integer && t->is_unsigned) || t->bits > 16) return SDNQ_ERR_TYPE;
        levels = (int64_t)t->max + 1;
    }
    *nlevels = levels;
    *tp = t;
    if (n == 0) return SDNQ_OK;
    if (d->codes == NULL || d->scale == NULL || d->out == NULL) return SDNQ_ERR_NULL;

    int64_t smax = sdnq_max_index3(d->outer, d->scale_stride[0], d->inner, d->scale_stride[1], levels,
                                   d->codebook ? d->scale_stride[2] : 0);
    if (smax < 0) return SDNQ_ERR_SIZE;
    if (smax >= d->scale_numel) return SDNQ_ERR_RANGE;

    if (t->is_unsigned && !d->codebook) {
        if (d->zero_point == NULL) return SDNQ_ERR_NULL;
        int64_t zmax = sdnq_max_index3(d->outer, d->zp_stride[0], d->inner, d->zp_stride[1], 1, 0);
        if (zmax < 0) return SDNQ_ERR_SIZE;
        if (zmax >= d->zp_numel) return SDNQ_ERR_RANGE;
    } else if (d->zero_point != NULL) {
        return SDNQ_ERR_SIZE; /* a zero-point only belongs to unsigned, non-codebook types */
    }

    int64_t omax = sdnq_max_index3(d->outer, d->out_stride[0], d->red, d->out_stride[1], d->inner, d->out_stride[2]);
    if (omax < 0) return SDNQ_ERR_SIZE;
    if (omax >= d->out_numel) return SDNQ_ERR_RANGE;
    return SDNQ_OK;
}

/* ------------------------------------------------------------------------ */
/* reference                                                                 */

sdnq_status sdnq_dequantize_ref(const sdnq_dequant_desc *d) {
    const sdnq_type_traits *t;
    int64_t levels;
    sdnq_status st = dequant_check(d, &t, &levels);
    if (st != SDNQ_OK) return st;
    const int asym = t->is_unsigned && !d->codebook;
    for (int64_t o = 0; o < d->outer; o++)
        for (int64_t j = 0; j < d->red; j++)
            for (int64_t i = 0; i < d->inner; i++) {
                int64_t e = (o * d->red + j) * d->inner + i;
                uint32_t raw = t->is_packed ? (uint32_t)sdnq_code_at(t, d->codes, e) : load_raw(d->codes, e, t->storage);
                int64_t g = o * d->scale_stride[0] + i * d->scale_stride[1];
                float r;
                if (d->codebook) {
                    if ((int64_t)raw >= levels) return SDNQ_ERR_RANGE;
                    r = sdnq_load_float(d->scale, g + (int64_t)raw * d->scale_stride[2], d->scale_dtype);
                } else {
                    float v = sdnq_weight_value(t, raw, d->scale_dtype);
                    float s = sdnq_load_float(d->scale, g, d->scale_dtype);
                    float z = asym ? sdnq_load_float(d->zero_point, o * d->zp_stride[0] + i * d->zp_stride[1],
                                                     d->scale_dtype)
                                   : 0.0f;
                    r = scale_value(v, s, z, asym, d->scale_dtype);
                }
                sdnq_store_float(d->out, o * d->out_stride[0] + j * d->out_stride[1] + i * d->out_stride[2],
                                 d->out_dtype, r);
            }
    return SDNQ_OK;
}

/* ------------------------------------------------------------------------ */
/* fast path                                                                 */

#define RUN 2048 /* codes per task; a multiple of every block size */

/* Row kernel for the common case (one scale per run): the lookup table
 * already holds every code's value in the scale dtype. */
#define ROW_KERNEL(NAME, SDT, ODT, ASYM)                                                                  \
    static void NAME(const float *lut, const int32_t *codes, int64_t n, float s, float z, void *out,       \
                     int64_t o0, int64_t os) {                                                            \
        for (int64_t k = 0; k < n; k++) {                                                                 \
            float v = lut[codes[k]];                                                                      \
            float r = ASYM ? ((SDT) == SDNQ_DT_F32 ? fmaf(v, s, z) : v * s + z) : v * s;                  \
            r = sdnq_round_to(r, SDT);                                                                    \
            sdnq_store_float(out, o0 + k * os, ODT, r);                                                   \
        }                                                                                                 \
    }

#define ROW_KERNELS(SDT, SN)                                                                  \
    ROW_KERNEL(row_##SN##_f32_s, SDT, SDNQ_DT_F32, 0)                                         \
    ROW_KERNEL(row_##SN##_bf16_s, SDT, SDNQ_DT_BF16, 0)                                       \
    ROW_KERNEL(row_##SN##_f16_s, SDT, SDNQ_DT_F16, 0)                                         \
    ROW_KERNEL(row_##SN##_f32_a, SDT, SDNQ_DT_F32, 1)                                         \
    ROW_KERNEL(row_##SN##_bf16_a, SDT, SDNQ_DT_BF16, 1)                                       \
    ROW_KERNEL(row_##SN##_f16_a, SDT, SDNQ_DT_F16, 1)

ROW_KERNELS(SDNQ_DT_F32, f32)
ROW_KERNELS(SDNQ_DT_BF16, bf16)
ROW_KERNELS(SDNQ_DT_F16, f16)

typedef void (*row_kernel_fn)(const float *, const int32_t *, int64_t, float, float, void *, int64_t, int64_t);

static row_kernel_fn pick_row_kernel(int32_t sdt, int32_t odt, int asym) {
#define PICK(SN)                                                                   \
    switch (odt) {                                                                 \
    case SDNQ_DT_F32: return asym ? row_##SN##_f32_a : row_##SN##_f32_s;           \
    case SDNQ_DT_BF16: return asym ? row_##SN##_bf16_a : row_##SN##_bf16_s;        \
    default: return asym ? row_##SN##_f16_a : row_##SN##_f16_s;                    \
    }
    if (sdt == SDNQ_DT_F32) {
        PICK(f32)
    } else if (sdt == SDNQ_DT_BF16) {
        PICK(bf16)
    } else {
        PICK(f16)
    }
#undef PICK
}

/* codes of flat elements [e0, e0 + n) into buf (raw storage for native types) */
static void load_codes(const sdnq_type_traits *t, const void *src, int64_t e0, int64_t n, int32_t *buf) {
    if (!t->is_packed) {
        for (int64_t k = 0; k < n; k++) buf[k] = (int32_t)load_raw(src, e0 + k, t->storage);
        return;
    }
    const int64_t be = t->block_elems;
    int64_t b0 = e0 / be, b1 = (e0 + n + be - 1) / be;
    int64_t lead = e0 - b0 * be;
    if (lead == 0 && (e0 + n) % be == 0) {
        sdnq_unpack_blocks(t, src, b0, b1 - b0, buf);
        return;
    }
    /* unaligned run: unpack the first and last blocks separately */
    int32_t edge[16];
    int64_t k = 0;
    for (int64_t b = b0; b < b1; b++) {
        int64_t lo = b == b0 ? lead : 0;
        int64_t hi = b == b1 - 1 ? e0 + n - b * be : be;
        if (lo == 0 && hi == be) {
            sdnq_unpack_blocks(t, src, b, 1, buf + k);
            k += be;
        } else {
            sdnq_unpack_blocks(t, src, b, 1, edge);
            for (int64_t x = lo; x < hi; x++) buf[k++] = edge[x];
        }
    }
}

sdnq_status sdnq_dequantize(const sdnq_dequant_desc *d, int32_t nthreads) {
    const sdnq_type_traits *t;
    int64_t levels;
    sdnq_status st = dequant_check(d, &t, &levels);
    if (st != SDNQ_OK) return st;
    if (d->outer == 0 || d->red == 0 || d->inner == 0) return SDNQ_OK;
    const int64_t span = d->red * d->inner; /* elements per outer index; bounded by the checked total */

    const int asym = t->is_unsigned && !d->codebook;
    const int use_lut = t->bits <= 8 && !d->codebook;
    float lut[256];
    if (use_lut)
        for (int32_t c = 0; c < (1 << t->bits); c++) lut[c] = sdnq_weight_value(t, (uint32_t)c, d->scale_dtype);
    const row_kernel_fn row = use_lut && d->inner == 1 ? pick_row_kernel(d->scale_dtype, d->out_dtype, asym) : NULL;

    const int64_t runs = (span + RUN - 1) / RUN;
    const int64_t tasks = d->outer * runs;
    int64_t task;
    int bad = 0;
#pragma omp parallel for num_threads(sdnq_threads(nthreads, tasks)) schedule(static) reduction(| : bad)
    for (task = 0; task < tasks; task++) {
        int32_t buf[RUN];
        const int64_t o = task / runs, f0 = (task % runs) * RUN;
        const int64_t n = span - f0 < RUN ? span - f0 : RUN;
        load_codes(t, d->codes, o * span + f0, n, buf);
        if (row != NULL) {
            float s = sdnq_load_float(d->scale, o * d->scale_stride[0], d->scale_dtype);
            float z = asym ? sdnq_load_float(d->zero_point, o * d->zp_stride[0], d->scale_dtype) : 0.0f;
            row(lut, buf, n, s, z, d->out, o * d->out_stride[0] + f0 * d->out_stride[1], d->out_stride[1]);
            continue;
        }
        int64_t j = f0 / d->inner, i = f0 % d->inner;
        for (int64_t k = 0; k < n; k++) {
            const int64_t g = o * d->scale_stride[0] + i * d->scale_stride[1];
            const uint32_t raw = (uint32_t)buf[k];
            float r;
            if (d->codebook) {
                if ((int64_t)raw >= levels) {
                    bad = 1;
                    break;
                }
                r = sdnq_load_float(d->scale, g + (int64_t)raw * d->scale_stride[2], d->scale_dtype);
            } else {
                float v = use_lut ? lut[raw] : sdnq_weight_value(t, raw, d->scale_dtype);
                float s = sdnq_load_float(d->scale, g, d->scale_dtype);
                float z = asym ? sdnq_load_float(d->zero_point, o * d->zp_stride[0] + i * d->zp_stride[1],
                                                 d->scale_dtype)
                               : 0.0f;
                r = scale_value(v, s, z, asym, d->scale_dtype);
            }
            sdnq_store_float(d->out, o * d->out_stride[0] + j * d->out_stride[1] + i * d->out_stride[2],
                             d->out_dtype, r);
            if (++i == d->inner) {
                i = 0;
                j++;
            }
        }
    }
    return bad ? SDNQ_ERR_RANGE : SDNQ_OK;
}
