/*
 * linalg.c - the two dense steps of SDNQ dequantization after the
 * elementwise one: the SVD low-rank correction W += up @ down and the
 * Hadamard un-rotation W = W.unflatten(-1, (-1, h)) @ H.
 *
 * sdnq runs both as torch matmuls, whose accumulation order is unspecified,
 * so these are exact only up to that order: fp32 accumulation, one rounding
 * to the weight dtype. The fast SVD path keeps the reference's order (same
 * bits; register-blocked AVX2 / AVX-512 clones where the CPU has them, see
 * internal.h); the fast Hadamard is a butterfly transform and differs from
 * the reference by summation order only.
 */
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "codec.h"
#include "internal.h"

/* ------------------------------------------------------------------------ */
/* SVD correction                                                            */

sdnq_status sdnq_svd_add_ref(const sdnq_svd_desc *d) {
    sdnq_status st = sdnq_svd_check(d);
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

/* baseline: per task one row and SVD_COLS columns, one k at a time (the reference's order per column) */
static void svd_add_c(const sdnq_svd_desc *d, int32_t nthreads) {
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
}

#if SDNQ_X86_SIMD
/*
 * Blocked kernels (AVX2, AVX-512): a task is SVD_RB rows; their up factors
 * are converted to fp32 once, then for each block of SVD_CB columns the down
 * factors are converted (zero past the last column) and tiles of 4 rows x
 * SVD_CB columns accumulate in registers over k = 0, 1, ... rank-1, each
 * step acc + up*down rounded like the reference (no fused multiply-add):
 * the same operations in the same order per element, hence the same bits.
 */
#define SVD_RB 32    /* rows per task */
#define SVD_CB 64    /* columns per block */
#define SVD_KMAX 128 /* largest rank the blocked kernels take (stack buffers) */

/* up[r0 .. r0+nr) as fp32: upf[i * rank + k] */
static void svd_load_up(const sdnq_svd_desc *d, int64_t r0, int64_t nr, float *upf) {
    for (int64_t i = 0; i < nr; i++)
        for (int64_t k = 0; k < d->rank; k++)
            upf[i * d->rank + k] =
                sdnq_load_float(d->up, (r0 + i) * d->up_stride[0] + k * d->up_stride[1], d->up_dtype);
}

/* down[:, c0 .. c0+nc) as fp32: dn[k * SVD_CB + c], 0 for nc <= c < SVD_CB */
static void svd_load_down(const sdnq_svd_desc *d, int64_t c0, int64_t nc, float *dn) {
    const int64_t s0 = d->down_stride[0], s1 = d->down_stride[1];
    for (int64_t k = 0; k < d->rank; k++) {
        float *row = dn + k * SVD_CB;
        const int64_t base = k * s0 + c0 * s1;
        int64_t c;
        if (d->down_dtype == SDNQ_DT_F32) {
            const float *p = (const float *)d->down + base;
            for (c = 0; c < nc; c++) row[c] = p[c * s1];
        } else if (d->down_dtype == SDNQ_DT_BF16) {
            const uint16_t *p = (const uint16_t *)d->down + base;
            for (c = 0; c < nc; c++) row[c] = sdnq_bf16_to_f32(p[c * s1]);
        } else {
            const uint16_t *p = (const uint16_t *)d->down + base;
            for (c = 0; c < nc; c++) row[c] = sdnq_f16_to_f32(p[c * s1]);
        }
        for (; c < SVD_CB; c++) row[c] = 0.0f;
    }
}

/* --- AVX-512: 4 rows x 4 vectors of 16 columns ----------------------------- */

SDNQ_TARGET_AVX512 __attribute__((always_inline)) static inline void
svd_tile_avx512(const sdnq_svd_desc *d, const float *upf, const float *dn, int64_t r, int64_t c0, int64_t nc,
                const int R) {
    const int64_t rank = d->rank;
    const int64_t wsize = sdnq_dtype_size(d->w_dtype);
    __m512 acc[4][4];
    /* these rows come back to the next column block after the task's other
     * rows: fetch it now (one stream per row is more than the prefetchers follow) */
    if (c0 + 2 * SVD_CB <= d->cols)
        for (int i = 0; i < R; i++)
            for (int64_t b = 0; b < SVD_CB * wsize; b += 64)
                _mm_prefetch((const char *)d->w + ((r + i) * d->cols + c0 + SVD_CB) * wsize + b, _MM_HINT_T0);
    for (int i = 0; i < R; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < rank; k++) {
        const float *dk = dn + k * SVD_CB;
        const __m512 d0 = _mm512_loadu_ps(dk), d1 = _mm512_loadu_ps(dk + 16);
        const __m512 d2 = _mm512_loadu_ps(dk + 32), d3 = _mm512_loadu_ps(dk + 48);
        for (int i = 0; i < R; i++) {
            const __m512 u = _mm512_set1_ps(upf[i * rank + k]);
            acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_mul_ps(u, d0));
            acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_mul_ps(u, d1));
            acc[i][2] = _mm512_add_ps(acc[i][2], _mm512_mul_ps(u, d2));
            acc[i][3] = _mm512_add_ps(acc[i][3], _mm512_mul_ps(u, d3));
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < 4; j++) {
            const __mmask16 m = sdnq_v16_mask(nc - 16 * j);
            if (!m) break;
            const int64_t e = (r + i) * d->cols + c0 + 16 * j;
            const __m512 w = sdnq_v16_load(d->w, e, d->w_dtype, m);
            sdnq_v16_store(d->w, e, d->w_dtype, _mm512_add_ps(w, acc[i][j]), m);
        }
}

SDNQ_TARGET_AVX512 static void svd_rows_avx512(const sdnq_svd_desc *d, int64_t r0, int64_t nr) {
    float upf[SVD_RB * SVD_KMAX], dn[SVD_KMAX * SVD_CB];
    svd_load_up(d, r0, nr, upf);
    for (int64_t c0 = 0; c0 < d->cols; c0 += SVD_CB) {
        const int64_t nc = d->cols - c0 < SVD_CB ? d->cols - c0 : SVD_CB;
        if (d->down_stride[1] == 1) {
            for (int64_t k = 0; k < d->rank; k++)
                for (int j = 0; j < 4; j++)
                    _mm512_storeu_ps(dn + k * SVD_CB + 16 * j,
                                     sdnq_v16_load(d->down, k * d->down_stride[0] + c0 + 16 * j, d->down_dtype,
                                                   sdnq_v16_mask(nc - 16 * j)));
        } else {
            svd_load_down(d, c0, nc, dn);
        }
        int64_t i = 0;
        for (; i + 4 <= nr; i += 4) svd_tile_avx512(d, upf + i * d->rank, dn, r0 + i, c0, nc, 4);
        for (; i < nr; i++) svd_tile_avx512(d, upf + i * d->rank, dn, r0 + i, c0, nc, 1);
    }
}

/* --- AVX2: 4 rows x 2 vectors of 8 columns, four times per block ----------- */

SDNQ_TARGET_AVX2 __attribute__((always_inline)) static inline void
svd_tile_avx2(const sdnq_svd_desc *d, const float *upf, const float *dn, int64_t r, int64_t c0, int64_t nc,
              const int R) {
    const int64_t rank = d->rank;
    const int64_t wsize = sdnq_dtype_size(d->w_dtype);
    if (c0 + 2 * SVD_CB <= d->cols) /* as svd_tile_avx512 */
        for (int i = 0; i < R; i++)
            for (int64_t b = 0; b < SVD_CB * wsize; b += 64)
                _mm_prefetch((const char *)d->w + ((r + i) * d->cols + c0 + SVD_CB) * wsize + b, _MM_HINT_T0);
    for (int64_t cc = 0; cc < nc; cc += 16) {
        __m256 acc[4][2];
        for (int i = 0; i < R; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        for (int64_t k = 0; k < rank; k++) {
            const __m256 d0 = _mm256_loadu_ps(dn + k * SVD_CB + cc), d1 = _mm256_loadu_ps(dn + k * SVD_CB + cc + 8);
            for (int i = 0; i < R; i++) {
                const __m256 u = _mm256_broadcast_ss(upf + i * rank + k);
                acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_mul_ps(u, d0));
                acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_mul_ps(u, d1));
            }
        }
        for (int i = 0; i < R; i++)
            for (int j = 0; j < 2; j++) {
                const int64_t c = cc + 8 * j, e = (r + i) * d->cols + c0 + c;
                if (c + 8 <= nc) {
                    sdnq_v8_store(d->w, e, d->w_dtype, _mm256_add_ps(sdnq_v8_load(d->w, e, d->w_dtype), acc[i][j]));
                } else if (c < nc) {
                    float a[8];
                    _mm256_storeu_ps(a, acc[i][j]);
                    for (int64_t x = 0; x < nc - c; x++)
                        sdnq_store_float(d->w, e + x, d->w_dtype, sdnq_load_float(d->w, e + x, d->w_dtype) + a[x]);
                }
            }
    }
}

SDNQ_TARGET_AVX2 static void svd_rows_avx2(const sdnq_svd_desc *d, int64_t r0, int64_t nr) {
    float upf[SVD_RB * SVD_KMAX], dn[SVD_KMAX * SVD_CB];
    svd_load_up(d, r0, nr, upf);
    for (int64_t c0 = 0; c0 < d->cols; c0 += SVD_CB) {
        const int64_t nc = d->cols - c0 < SVD_CB ? d->cols - c0 : SVD_CB;
        svd_load_down(d, c0, nc, dn);
        int64_t i = 0;
        for (; i + 4 <= nr; i += 4) svd_tile_avx2(d, upf + i * d->rank, dn, r0 + i, c0, nc, 4);
        for (; i < nr; i++) svd_tile_avx2(d, upf + i * d->rank, dn, r0 + i, c0, nc, 1);
    }
}
#endif /* SDNQ_X86_SIMD */

sdnq_status sdnq_svd_add(const sdnq_svd_desc *d, int32_t nthreads) {
    sdnq_status st = sdnq_svd_check(d);
    if (st != SDNQ_OK || d->rows * d->cols == 0 || d->rank == 0) return st;
#if SDNQ_X86_SIMD
    const int level = sdnq_cpu_level();
    if (level >= SDNQ_CPU_AVX2 && d->rank <= SVD_KMAX) {
        const int64_t tasks = (d->rows + SVD_RB - 1) / SVD_RB;
        int64_t task;
#pragma omp parallel for num_threads(sdnq_threads(nthreads, tasks)) schedule(static)
        for (task = 0; task < tasks; task++) {
            const int64_t r0 = task * SVD_RB, nr = d->rows - r0 < SVD_RB ? d->rows - r0 : SVD_RB;
            if (level >= SDNQ_CPU_AVX512)
                svd_rows_avx512(d, r0, nr);
            else
                svd_rows_avx2(d, r0, nr);
        }
        return SDNQ_OK;
    }
#endif
    svd_add_c(d, nthreads);
    return SDNQ_OK;
}

/* ------------------------------------------------------------------------ */
/* Hadamard                                                                  */

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

sdnq_status sdnq_hadamard_entry(int64_t h, int32_t kind, int32_t dtype, int64_t i, int64_t j, float *value) {
    if (value == NULL) return SDNQ_ERR_NULL;
    if (!sdnq_is_arith_dtype(dtype)) return SDNQ_ERR_DTYPE;
    if (h < 2 || !sdnq_is_pow2(h) || i < 0 || j < 0 || i >= h || j >= h) return SDNQ_ERR_SIZE;
    if (kind != SDNQ_HADAMARD_SYLVESTER && kind != SDNQ_HADAMARD_AUTO) return SDNQ_ERR_UNSUPPORTED;
    *value = (float)hadamard_sign(i, j, sdnq_hadamard_radix(h, kind)) * hadamard_scale(h, dtype);
    return SDNQ_OK;
}

sdnq_status sdnq_hadamard_ref(void *w, int32_t dt, int64_t rows, int64_t cols, int64_t w_numel, int64_t h,
                              int32_t kind) {
    sdnq_status st = sdnq_hadamard_check(w, dt, rows, cols, w_numel, h, kind);
    if (st != SDNQ_OK || rows == 0 || cols == 0) return st; /* rows alone may be huge when cols is 0 */
    const int radix = sdnq_hadamard_radix(h, kind);
    const float c = hadamard_scale(h, dt);
    float x[SDNQ_HADAMARD_MAX], y[SDNQ_HADAMARD_MAX];
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
    sdnq_status st = sdnq_hadamard_check(w, dt, rows, cols, w_numel, h, kind);
    if (st != SDNQ_OK) return st;
    const int radix = sdnq_hadamard_radix(h, kind);
    const float c = hadamard_scale(h, dt);
    const int64_t blocks = rows * (cols / h);
    int64_t blk;
#pragma omp parallel for num_threads(sdnq_threads(nthreads, blocks)) schedule(static)
    for (blk = 0; blk < blocks; blk++) {
        float x[SDNQ_HADAMARD_MAX];
        const int64_t e0 = blk * h;
        for (int64_t i = 0; i < h; i++) x[i] = sdnq_load_float(w, e0 + i, dt);
        fwht(x, h, radix);
        for (int64_t i = 0; i < h; i++) sdnq_store_float(w, e0 + i, dt, x[i] * c);
    }
    return SDNQ_OK;
}
