/*
 * internal.h - comfy_sdnq internal header: helpers shared by the C core's
 * translation units. Not part of the public API.
 */
#ifndef SDNQ_INTERNAL_H
#define SDNQ_INTERNAL_H

#include <stdint.h>

#include "sdnq/sdnq.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Threads to use: the caller's request (<= 0: one), never more than tasks. */
static inline int sdnq_threads(int32_t requested, int64_t tasks) {
#ifdef _OPENMP
    int64_t n = requested > 0 ? requested : 1;
    if (n > tasks) n = tasks > 0 ? tasks : 1;
    return (int)n;
#else
    (void)requested;
    (void)tasks;
    return 1;
#endif
}

/* a*b without overflow, or -1 when either is negative or it overflows */
static inline int64_t sdnq_mul64(int64_t a, int64_t b) {
    if (a < 0 || b < 0) return -1;
    if (a != 0 && b > INT64_MAX / a) return -1;
    return a * b;
}

/* largest flat index reached by i0 in [0,n0) ... with the given strides, or -1 */
static inline int64_t sdnq_max_index3(int64_t n0, int64_t s0, int64_t n1, int64_t s1, int64_t n2, int64_t s2) {
    if (n0 <= 0 || n1 <= 0 || n2 <= 0) return 0;
    if (s0 < 0 || s1 < 0 || s2 < 0) return -1;
    int64_t a = sdnq_mul64(n0 - 1, s0), b = sdnq_mul64(n1 - 1, s1), c = sdnq_mul64(n2 - 1, s2);
    if (a < 0 || b < 0 || c < 0 || a > INT64_MAX - b || a + b > INT64_MAX - c) return -1;
    return a + b + c;
}

/* pack.c */
sdnq_status sdnq_packed_geometry(int32_t type, int64_t n, int64_t bytes, const sdnq_type_traits **t,
                                 int64_t *blocks);
void sdnq_unpack_blocks(const sdnq_type_traits *t, const void *src, int64_t b0, int64_t nb, int32_t *codes);
int32_t sdnq_code_at(const sdnq_type_traits *t, const void *src, int64_t e);

#endif /* SDNQ_INTERNAL_H */
