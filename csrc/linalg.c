/*
 * linalg.c - the two dense steps of SDNQ dequantization after the
 * elementwise one: the SVD low-rank correction W += up @ down and the
 * Hadamard un-rotation W = W.unflatten(-1, (-1, h)) @ H.
 *
 * sdnq runs both as torch matmuls, whose accumulation order is unspecified,
 * so these are exact only up to that order: fp32 accumulation, one rounding
 * to the weight dtype. The fast SVD path keeps the reference's order (same
 * bits); the fast Hadamard is a butterfly transform and differs from the
 * reference by summation order only.
 */
#include <math.h>
#include <stdint.h>

#include "codec.h"
#include "internal.h"

/* ------------------------------------------------------------------------ */
/* SVD correction                                                            */

static sdnq_status svd_check(const sdnq_svd_desc *d) {
    if (d == NULL) return SDNQ_ERR_NULL;
    if (!sdnq_is_arith_dtype(d->w_dtype) || !sdnq_is_arith_dtype(d->up_dtype) || !sdnq_is_arith_dtype(d->down_dtype))
        return SDNQ_ERR_DTYPE;
    if (d->rows < 0 || d->cols < 0 || d->rank < 0 || d->w_numel < 0 || d->up_numel < 0 || d->down_numel < 0)
        return SDNQ_ERR_SIZE;
    int64_t n = sdnq_mul64(d->rows, d->cols);
    if (n < 0) return SDNQ_ERR_OVERFLOW;
    if (n > d->w_numel) return SDNQ_ERR_RANGE;
    if (n == 0 || d->rank == 0) return SDNQ_OK;
    if (d->w == NULL || d->up == NULL || d->down == NULL) return SDNQ_ERR_NULL;
    int64_t umax = sdnq_max_index3(d->rows, d->up_stride[0], d->rank, d->up_stride[1], 1, 0);
    int64_t dmax = sdnq_max_index3(d->rank, d->down_stride[0], d->cols, d->down_stride[1], 1, 0);
    if (umax < 0 || dmax < 0) return SDNQ_ERR_SIZE;
    if (umax >= d->up_numel || dmax >= d->down_numel) return SDNQ_ERR_RANGE;
    return SDNQ_OK;
}

sdnq_status sdnq_svd_add_ref(const sdnq_svd_desc *d) {
    sdnq_status st = svd_check(d);
    if (st != SDNQ_OK || d->rows * d->cols == 0 || d->rank == 0) return st;
    for (int64_t r = 0; r < d->rows; r++)
        for (int64_t c = 0; c < d->cols; c++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < d->rank; k++)
                acc += sdnq_load_float(d->up, r * d->up_stride[0] + k * d->up_stride[1], d->up_dtype) *
                       sdnq_load_float(d->down, k * d->down_stride[0] + c * d->down_stride[1], d->down_dtype);
            int64_t e = r * d->cols + c;
            sdnq_store_float(d->w, e, d->w_dtype, sdnq_load_float(d->w, e, d->w_dtype) + acc);
        }
    return SDNQ_OK;
}

#define SVD_COLS 512

sdnq_status sdnq_svd_add(const sdnq_svd_desc *d, int32_t nthreads) {
    sdnq_status st = svd_check(d);
    if (st != SDNQ_OK || d->rows * d->cols == 0 || d->rank == 0) return st;
    const int64_t chunks = (d->cols + SVD_COLS - 1) / SVD_COLS;
    const int64_t tasks = d->rows * chunks;
    int64_t task;
#pragma omp parallel for num_threads(sdnq_threads(nthreads, tasks)) schedule(static)
    for (task = 0; task < tasks; task++) {
        float acc[SVD_COLS];
        const int64_t r = task / chunks, c0 = (task % chunks) * SVD_COLS;
        const int64_t nc = d->cols - c0 < SVD_COLS ? d->cols - c0 : SVD_COLS;
        for (int64_t c = 0; c < nc; c++) acc[c] = 0.0f;
        for (int64_t k = 0; k < d->rank; k++) {
            /* same order as the reference: one k at a time, per column */
            const float u = sdnq_load_float(d->up, r * d->up_stride[0] + k * d->up_stride[1], d->up_dtype);
            const int64_t base = k * d->down_stride[0] + c0 * d->down_stride[1];
            if (d->down_dtype == SDNQ_DT_BF16 && d->down_stride[1] == 1) {
                const uint16_t *dn = (const uint16_t *)d->down + base;
                for (int64_t c = 0; c < nc; c++) acc[c] += u * sdnq_bf16_to_f32(dn[c]);
            } else {
                for (int64_t c = 0; c < nc; c++)
                    acc[c] += u * sdnq_load_float(d->down, base + c * d->down_stride[1], d->down_dtype);
            }
        }
        const int64_t e0 = r * d->cols + c0;
        for (int64_t c = 0; c < nc; c++)
            sdnq_store_float(d->w, e0 + c, d->w_dtype, sdnq_load_float(d->w, e0 + c, d->w_dtype) + acc[c]);
    }
    return SDNQ_OK;
}

/* ------------------------------------------------------------------------ */
/* Hadamard                                                                  */

#define HADAMARD_MAX 4096 /* largest block; sdnq's default group is 256 */

static int is_pow2(int64_t h) { return h > 0 && (h & (h - 1)) == 0; }

static int is_pow4(int64_t h) {
    if (!is_pow2(h)) return 0;
    int b = 0;
    while ((h >> b) != 1) b++;
    return (b & 1) == 0;
}

/* radix of the construction: 4 (H4 kron) or 2 (Sylvester) */
static int radix_of(int64_t h, int32_t kind) { return kind == SDNQ_HADAMARD_AUTO && is_pow4(h) ? 4 : 2; }

/* sign of the unnormalized entry (i, j) */
static int hadamard_sign(int64_t i, int64_t j, int radix) {
    int neg = 0;
    if (radix == 2) {
        uint64_t x = (uint64_t)(i & j);
        while (x) {
            neg ^= 1;
            x &= x - 1;
        }
        return neg ? -1 : 1;
    }
    while (i || j) {
        neg ^= (int)((i & 3) + (j & 3) == 3); /* H4 is -1 on its anti-diagonal */
        i >>= 2;
        j >>= 2;
    }
    return neg ? -1 : 1;
}

/* 1/sqrt(h) in the matrix dtype, as sdnq's H.div_(h ** 0.5) rounds it */
static float hadamard_scale(int64_t h, int32_t dtype) {
    return sdnq_round_to(1.0f / (float)sqrt((double)h), dtype);
}

static sdnq_status hadamard_check(void *w, int32_t dt, int64_t rows, int64_t cols, int64_t w_numel, int64_t h,
                                  int32_t kind) {
    if (!sdnq_is_arith_dtype(dt)) return SDNQ_ERR_DTYPE;
    if (kind != SDNQ_HADAMARD_SYLVESTER && kind != SDNQ_HADAMARD_AUTO) return SDNQ_ERR_UNSUPPORTED;
    if (rows < 0 || cols < 0 || w_numel < 0 || h < 2 || !is_pow2(h)) return SDNQ_ERR_SIZE;
    if (h > HADAMARD_MAX) return SDNQ_ERR_UNSUPPORTED;
    if (cols % h != 0) return SDNQ_ERR_SIZE;
    int64_t n = sdnq_mul64(rows, cols);
    if (n < 0) return SDNQ_ERR_OVERFLOW;
    if (n > w_numel) return SDNQ_ERR_RANGE;
    if (n > 0 && w == NULL) return SDNQ_ERR_NULL;
    return SDNQ_OK;
}

sdnq_status sdnq_hadamard_entry(int64_t h, int32_t kind, int32_t dtype, int64_t i, int64_t j, float *value) {
    if (value == NULL) return SDNQ_ERR_NULL;
    if (!sdnq_is_arith_dtype(dtype)) return SDNQ_ERR_DTYPE;
    if (h < 2 || !is_pow2(h) || i < 0 || j < 0 || i >= h || j >= h) return SDNQ_ERR_SIZE;
    if (kind != SDNQ_HADAMARD_SYLVESTER && kind != SDNQ_HADAMARD_AUTO) return SDNQ_ERR_UNSUPPORTED;
    *value = (float)hadamard_sign(i, j, radix_of(h, kind)) * hadamard_scale(h, dtype);
    return SDNQ_OK;
}

sdnq_status sdnq_hadamard_ref(void *w, int32_t dt, int64_t rows, int64_t cols, int64_t w_numel, int64_t h,
                              int32_t kind) {
    sdnq_status st = hadamard_check(w, dt, rows, cols, w_numel, h, kind);
    if (st != SDNQ_OK) return st;
    const int radix = radix_of(h, kind);
    const float c = hadamard_scale(h, dt);
    float x[HADAMARD_MAX], y[HADAMARD_MAX];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < cols; b += h) {
            int64_t e0 = r * cols + b;
            for (int64_t i = 0; i < h; i++) x[i] = sdnq_load_float(w, e0 + i, dt);
            for (int64_t j = 0; j < h; j++) {
                float acc = 0.0f;
                for (int64_t i = 0; i < h; i++) acc += x[i] * ((float)hadamard_sign(i, j, radix) * c);
                y[j] = acc;
            }
            for (int64_t j = 0; j < h; j++) sdnq_store_float(w, e0 + j, dt, y[j]);
        }
    return SDNQ_OK;
}

/* in-place butterfly transform of one block: y = x @ (K (x) K (x) ... ) */
static void fwht(float *x, int64_t h, int radix) {
    if (radix == 4) {
        for (int64_t s = 1; s < h; s *= 4)
            for (int64_t base = 0; base < h; base += 4 * s)
                for (int64_t k = base; k < base + s; k++) {
                    float a0 = x[k], a1 = x[k + s], a2 = x[k + 2 * s], a3 = x[k + 3 * s];
                    x[k] = a0 + a1 + a2 - a3;
                    x[k + s] = a0 + a1 - a2 + a3;
                    x[k + 2 * s] = a0 - a1 + a2 + a3;
                    x[k + 3 * s] = -a0 + a1 + a2 + a3;
                }
        return;
    }
    for (int64_t s = 1; s < h; s *= 2)
        for (int64_t base = 0; base < h; base += 2 * s)
            for (int64_t k = base; k < base + s; k++) {
                float a = x[k], b = x[k + s];
                x[k] = a + b;
                x[k + s] = a - b;
            }
}

sdnq_status sdnq_hadamard(void *w, int32_t dt, int64_t rows, int64_t cols, int64_t w_numel, int64_t h, int32_t kind,
                          int32_t nthreads) {
    sdnq_status st = hadamard_check(w, dt, rows, cols, w_numel, h, kind);
    if (st != SDNQ_OK) return st;
    const int radix = radix_of(h, kind);
    const float c = hadamard_scale(h, dt);
    const int64_t blocks = rows * (cols / h);
    int64_t blk;
#pragma omp parallel for num_threads(sdnq_threads(nthreads, blocks)) schedule(static)
    for (blk = 0; blk < blocks; blk++) {
        float x[HADAMARD_MAX];
        const int64_t e0 = blk * h;
        for (int64_t i = 0; i < h; i++) x[i] = sdnq_load_float(w, e0 + i, dt);
        fwht(x, h, radix);
        for (int64_t i = 0; i < h; i++) sdnq_store_float(w, e0 + i, dt, x[i] * c);
    }
    return SDNQ_OK;
}
