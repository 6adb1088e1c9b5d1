/*
 * check.h - comfy_sdnq internal header: argument validation shared by the C
 * core and the CUDA launchers (csrc/cuda). Header-only (static inline), so
 * both extension modules carry the very same checks: a descriptor the CPU
 * core accepts, the CUDA launchers accept, and the same ones are refused
 * with the same status.
 */
#ifndef SDNQ_CHECK_H
#define SDNQ_CHECK_H

#include <stdint.h>

#include "codec.h"
#include "internal.h"

#define SDNQ_HADAMARD_MAX 4096 /* largest Hadamard block; sdnq's default group is 256 */

/* Packed type, n codes, words in `bytes`: the type's traits and the number of
 * packing blocks, or why not. */
static inline sdnq_status sdnq_packed_geometry(int32_t type, int64_t n, int64_t bytes, const sdnq_type_traits **tp,
                                               int64_t *blocks) {
    const sdnq_type_traits *t = sdnq_type_get(type);
    if (t == NULL || !t->is_packed) return SDNQ_ERR_TYPE;
    if (n < 0 || bytes < 0) return SDNQ_ERR_SIZE;
    int64_t words;
    sdnq_status st = sdnq_storage_words(type, n, &words);
    if (st != SDNQ_OK) return st;
    int64_t wsize = sdnq_dtype_size(t->storage);
    if (words > INT64_MAX / wsize) return SDNQ_ERR_OVERFLOW;
    if (words * wsize > bytes) return SDNQ_ERR_RANGE;
    *tp = t;
    *blocks = n / t->block_elems;
    return SDNQ_OK;
}

/* Every index a dequantization descriptor lets the kernel touch stays inside
 * its buffer. Gives the traits and the number of codebook levels (1 without). */
static inline sdnq_status sdnq_dequant_check(const sdnq_dequant_desc *d, const sdnq_type_traits **tp,
                                             int64_t *nlevels) {
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

static inline sdnq_status sdnq_svd_check(const sdnq_svd_desc *d) {
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

static inline int sdnq_is_pow2(int64_t h) { return h > 0 && (h & (h - 1)) == 0; }

static inline int sdnq_is_pow4(int64_t h) {
    if (!sdnq_is_pow2(h)) return 0;
    int b = 0;
    while ((h >> b) != 1) b++;
    return (b & 1) == 0;
}

/* radix of the Hadamard construction: 4 (H4 kron) or 2 (Sylvester) */
static inline int sdnq_hadamard_radix(int64_t h, int32_t kind) {
    return kind == SDNQ_HADAMARD_AUTO && sdnq_is_pow4(h) ? 4 : 2;
}

static inline sdnq_status sdnq_hadamard_check(const void *w, int32_t dt, int64_t rows, int64_t cols, int64_t w_numel,
                                              int64_t h, int32_t kind) {
    if (!sdnq_is_arith_dtype(dt)) return SDNQ_ERR_DTYPE;
    if (kind != SDNQ_HADAMARD_SYLVESTER && kind != SDNQ_HADAMARD_AUTO) return SDNQ_ERR_UNSUPPORTED;
    if (rows < 0 || cols < 0 || w_numel < 0 || h < 2 || !sdnq_is_pow2(h)) return SDNQ_ERR_SIZE;
    if (h > SDNQ_HADAMARD_MAX) return SDNQ_ERR_UNSUPPORTED;
    if (cols % h != 0) return SDNQ_ERR_SIZE;
    int64_t n = sdnq_mul64(rows, cols);
    if (n < 0) return SDNQ_ERR_OVERFLOW;
    if (n > w_numel) return SDNQ_ERR_RANGE;
    if (n > 0 && w == NULL) return SDNQ_ERR_NULL;
    return SDNQ_OK;
}

#endif /* SDNQ_CHECK_H */
