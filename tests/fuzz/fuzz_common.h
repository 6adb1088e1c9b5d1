/*
 * fuzz_common.h - helpers shared by the libFuzzer harnesses of the comfy_sdnq C core.
 *
 * A harness input is a call description followed by the bytes the call reads:
 *   header fields (type ids, dtypes, flags, sizes, strides) read with the fz_* readers below,
 *   then the buffers (codes, scales, weights), filled from what is left of the input.
 * Sizes are zigzag varints, so small values (and small negative ones) are a byte or two and the
 * fuzzer still reaches huge and negative values. Buffers are allocated with exactly the size the
 * description declares, so AddressSanitizer sees any access past what the call was told it may use.
 */
#ifndef SDNQ_FUZZ_COMMON_H
#define SDNQ_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sdnq/sdnq.h"

typedef struct {
    const uint8_t *p;
    size_t n, i;
} fz_reader;

static inline uint8_t fz_u8(fz_reader *r) { return r->i < r->n ? r->p[r->i++] : 0; }

/* unsigned LEB128, up to 10 bytes */
static inline uint64_t fz_uvar(fz_reader *r) {
    uint64_t v = 0;
    for (int s = 0; s < 64; s += 7) {
        uint8_t b = fz_u8(r);
        v |= (uint64_t)(b & 0x7F) << s;
        if (!(b & 0x80)) break;
    }
    return v;
}

/* zigzag varint: 0, -1, 1, -2, 2, ... */
static inline int64_t fz_svar(fz_reader *r) {
    uint64_t u = fz_uvar(r);
    return (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
}

/* a buffer of exactly `bytes` bytes (NULL for 0 when null0 is set), filled from the input
 * (cycling through what is left, zeros when nothing is) */
static inline void *fz_buffer(fz_reader *r, int64_t bytes, int null0) {
    if (bytes <= 0 && null0) return NULL;
    uint8_t *b = (uint8_t *)malloc(bytes > 0 ? (size_t)bytes : 1);
    if (b == NULL) abort();
    size_t left = r->n - r->i;
    for (int64_t k = 0; k < bytes; k++) b[k] = left ? r->p[r->i + (size_t)k % left] : 0;
    size_t take = (size_t)bytes < left ? (size_t)bytes : left;
    r->i += take;
    return b;
}

static inline void *fz_dup(const void *src, int64_t bytes) {
    if (src == NULL) return NULL;
    void *d = malloc(bytes > 0 ? (size_t)bytes : 1);
    if (d == NULL) abort();
    if (bytes > 0) memcpy(d, src, (size_t)bytes);
    return d;
}

/* a dtype index from one byte: mostly the valid ones, sometimes anything */
static inline int32_t fz_dtype(uint8_t b) {
    return b < 0xF0 ? (int32_t)(b % SDNQ_DT_COUNT) : (int32_t)(int8_t)b;
}

/* an arithmetic dtype (F32, BF16, F16) from two bits, or (3) any dtype from the next byte */
static inline int32_t fz_arith_dtype(fz_reader *r, unsigned two_bits) {
    switch (two_bits & 3) {
    case 0: return SDNQ_DT_F32;
    case 1: return SDNQ_DT_BF16;
    case 2: return SDNQ_DT_F16;
    default: return fz_dtype(fz_u8(r));
    }
}

/* a*b, INT64_MAX (or INT64_MIN) where it overflows: the harness's own size arithmetic stays defined */
static inline int64_t fz_mul(int64_t a, int64_t b) {
    int64_t c;
    if (__builtin_mul_overflow(a, b, &c)) return (a < 0) != (b < 0) ? INT64_MIN : INT64_MAX;
    return c;
}

static inline int64_t fz_add(int64_t a, int64_t b) {
    int64_t c;
    if (__builtin_add_overflow(a, b, &c)) return a < 0 ? INT64_MIN : INT64_MAX;
    return c;
}

static inline int64_t fz_dt_size(int32_t dt) {
    int32_t s = sdnq_dtype_size(dt);
    return s > 0 ? s : 4;
}

#define FZ_FAIL(...)                                                                                                   \
    do {                                                                                                               \
        fprintf(stderr, "CONTRACT VIOLATION: " __VA_ARGS__);                                                           \
        fputc('\n', stderr);                                                                                           \
        abort();                                                                                                       \
    } while (0)

/* every call returns a defined status */
#define FZ_STATUS_OK(what, st)                                                                                         \
    do {                                                                                                               \
        if ((int)(st) < 0 || (int)(st) >= SDNQ_STATUS_COUNT) FZ_FAIL("%s returned undefined status %d", what, (int)(st)); \
    } while (0)

#define FZ_SAME_STATUS(what, a, b)                                                                                     \
    do {                                                                                                               \
        FZ_STATUS_OK(what, a);                                                                                         \
        FZ_STATUS_OK(what, b);                                                                                         \
        if ((a) != (b)) FZ_FAIL("%s: reference status %s, fast status %s", what, sdnq_status_str(a), sdnq_status_str(b)); \
    } while (0)

static inline void fz_same_bytes(const char *what, const void *a, const void *b, int64_t bytes) {
    if (bytes <= 0 || a == NULL || b == NULL) return;
    if (memcmp(a, b, (size_t)bytes) != 0) {
        const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
        int64_t k = 0;
        while (x[k] == y[k]) k++;
        FZ_FAIL("%s: reference and fast path differ at byte %lld (0x%02x vs 0x%02x)", what, (long long)k, x[k], y[k]);
    }
}

/* n elements of an F32 / BF16 / F16 buffer: the same bits, or NaN in both (which NaN payload survives
 * an operation on two NaNs depends on the operand order the compiler picks for a commutative add,
 * so payloads are not part of the contract); other dtypes: the same bytes */
static inline int fz_is_nan(const uint8_t *p, int64_t e, int32_t dt) {
    if (dt == SDNQ_DT_F32) {
        uint32_t u;
        memcpy(&u, p + 4 * e, 4);
        return (u & 0x7FFFFFFFu) > 0x7F800000u;
    }
    uint16_t h;
    memcpy(&h, p + 2 * e, 2);
    return dt == SDNQ_DT_BF16 ? (h & 0x7FFFu) > 0x7F80u : (h & 0x7FFFu) > 0x7C00u;
}

static inline void fz_same_floats(const char *what, const void *a, const void *b, int64_t n, int32_t dt) {
    if (n <= 0 || a == NULL || b == NULL) return;
    if (dt != SDNQ_DT_F32 && dt != SDNQ_DT_BF16 && dt != SDNQ_DT_F16) {
        fz_same_bytes(what, a, b, n * fz_dt_size(dt));
        return;
    }
    const int64_t es = sdnq_dtype_size(dt);
    const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
    for (int64_t e = 0; e < n; e++)
        if (memcmp(x + e * es, y + e * es, (size_t)es) != 0 && !(fz_is_nan(x, e, dt) && fz_is_nan(y, e, dt)))
            FZ_FAIL("%s: reference and fast path differ at element %lld (%s)", what, (long long)e, sdnq_dtype_name(dt));
}

/* threads for the fast entry points (they are built without OpenMP here: the value only
 * reaches sdnq_threads, which every thread count must handle) */
static inline int32_t fz_threads(uint8_t b) { return (int32_t)(b % 5) - 1; }

/* d (out unset) through sdnq_dequantize_ref and sdnq_dequantize, each into its own output
 * buffer of d->out_numel elements pre-filled with 0x5A: the same status, and on success the
 * same outputs compared whole (an element written by one and not the other shows) */
static inline sdnq_status fz_dequant_pair(const char *what, const sdnq_dequant_desc *d, int32_t nthreads) {
    const int64_t bytes = d->out_numel > 0 ? d->out_numel * fz_dt_size(d->out_dtype) : 0;
    void *out_ref = malloc(bytes > 0 ? (size_t)bytes : 1);
    if (out_ref == NULL) abort();
    memset(out_ref, 0x5A, bytes > 0 ? (size_t)bytes : 1);
    void *out_fast = fz_dup(out_ref, bytes > 0 ? bytes : 1);
    sdnq_dequant_desc dr = *d, df = *d;
    dr.out = out_ref, df.out = out_fast;
    const sdnq_status a = sdnq_dequantize_ref(&dr);
    const sdnq_status b = sdnq_dequantize(&df, nthreads);
    FZ_SAME_STATUS(what, a, b);
    if (a == SDNQ_OK) fz_same_floats(what, out_ref, out_fast, d->out_numel, d->out_dtype);
    free(out_ref), free(out_fast);
    return a;
}

#endif /* SDNQ_FUZZ_COMMON_H */
