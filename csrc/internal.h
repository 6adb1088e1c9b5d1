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

/* ------------------------------------------------------------------------ */
/* CPU dispatch of the fast paths                                            */
/*
 * The core is compiled for the compiler's baseline (x86-64: SSE2, no FMA).
 * With GCC or Clang on x86 the hot kernels of the fast paths (dequant.c,
 * linalg.c) also exist as AVX2+FMA+F16C and AVX-512 (F, BW, DQ, VL) clones,
 * written with intrinsics inside functions carrying __attribute__((target)),
 * and sdnq_cpu_level() picks one at run time. Other compilers (MSVC), other
 * architectures and -DSDNQ_NO_SIMD builds compile only the portable C.
 * Every level gives the same bits: the clones do the reference's arithmetic
 * lane by lane (fp32 mul/add, fused only where the reference calls fmaf, and
 * the reference's integer rounding to bf16); they need -ffp-contract=off like
 * the rest of the core.
 */
#if !defined(SDNQ_NO_SIMD) && (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__x86_64__) || defined(_M_X64) || defined(__i386__))
#define SDNQ_X86_SIMD 1
#else
#define SDNQ_X86_SIMD 0
#endif

enum { SDNQ_CPU_BASELINE = 0, SDNQ_CPU_AVX2 = 1, SDNQ_CPU_AVX512 = 2 };

/* dequant.c: the kernel level this process uses (SDNQ_CPU_*), decided on the
 * first call and fixed after: the best the CPU and OS support, capped by the
 * environment variable COMFY_SDNQ_CPU=baseline|avx2|avx512 (tests,
 * benchmarks). The cached value is the core's only mutable global; it is
 * written once (every thread that races to initialise it writes the same
 * value) and read with relaxed atomics. */
int sdnq_cpu_level(void);

#if SDNQ_X86_SIMD
#include <immintrin.h>

#define SDNQ_TARGET_AVX2 __attribute__((target("avx,avx2,fma,f16c,bmi,bmi2")))
#define SDNQ_TARGET_AVX512 \
    __attribute__((target("avx,avx2,fma,f16c,bmi,bmi2,avx512f,avx512bw,avx512dq,avx512vl")))

/* --- AVX-512: 16 fp32 lanes, masked tails --------------------------------- */

/* fp32 -> bf16 bits in the low half of each lane, exactly sdnq_f32_to_bf16 */
SDNQ_TARGET_AVX512 static inline __m512i sdnq_v16_bf16_bits(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
    return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
}

/* fp32 -> fp16 bits, exactly sdnq_f32_to_f16 (hardware RNE; NaN -> sign | 0x7E00) */
SDNQ_TARGET_AVX512 static inline __m256i sdnq_v16_f16_bits(__m512 x) {
    __m256i h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    if (nan) {
        const __m512i u = _mm512_castps_si512(x);
        const __m512i q = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000)),
                                          _mm512_set1_epi32(0x7E00));
        h = _mm256_mask_mov_epi16(h, nan, _mm512_cvtepi32_epi16(q));
    }
    return h;
}

/* sdnq_round_to for 16 lanes */
SDNQ_TARGET_AVX512 static inline __m512 sdnq_v16_round(__m512 x, int32_t dt) {
    if (dt == SDNQ_DT_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(sdnq_v16_bf16_bits(x), 16));
    if (dt == SDNQ_DT_F16) return _mm512_cvtph_ps(sdnq_v16_f16_bits(x));
    return x;
}

/* sdnq_load_float of elements i .. i+15 (lanes outside m read nothing and are 0); a
 * full mask takes plain loads and stores (masked stores are slow on some cores) */
SDNQ_TARGET_AVX512 static inline __m512 sdnq_v16_load(const void *p, int64_t i, int32_t dt, __mmask16 m) {
    if (dt == SDNQ_DT_F32)
        return m == 0xFFFF ? _mm512_loadu_ps((const float *)p + i) : _mm512_maskz_loadu_ps(m, (const float *)p + i);
    const __m256i h = m == 0xFFFF ? _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i))
                                  : _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i);
    if (dt == SDNQ_DT_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* sdnq_store_float of 16 lanes (only those in m) at elements i .. i+15 */
SDNQ_TARGET_AVX512 static inline void sdnq_v16_store(void *p, int64_t i, int32_t dt, __m512 x, __mmask16 m) {
    if (dt == SDNQ_DT_F32) {
        if (m == 0xFFFF)
            _mm512_storeu_ps((float *)p + i, x);
        else
            _mm512_mask_storeu_ps((float *)p + i, m, x);
        return;
    }
    const __m256i h = dt == SDNQ_DT_BF16 ? _mm512_cvtepi32_epi16(sdnq_v16_bf16_bits(x)) : sdnq_v16_f16_bits(x);
    if (m == 0xFFFF)
        _mm256_storeu_si256((__m256i *)((uint16_t *)p + i), h);
    else
        _mm256_mask_storeu_epi16((uint16_t *)p + i, m, h);
}

/* lanes 0 .. n-1 (none for n <= 0) */
SDNQ_TARGET_AVX512 static inline __mmask16 sdnq_v16_mask(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* --- AVX2: 8 fp32 lanes, full vectors only (callers finish tails in C) ----- */

/* 8 int32 lanes holding values in [0, 0xFFFF] -> 8 uint16 */
SDNQ_TARGET_AVX2 static inline __m128i sdnq_v8_narrow16(__m256i x) {
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(x, x), 0x08));
}

SDNQ_TARGET_AVX2 static inline __m256i sdnq_v8_bf16_bits(__m256 x) {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC0)),
                                                nan));
}

SDNQ_TARGET_AVX2 static inline __m128i sdnq_v8_f16_bits(__m256 x) {
    __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    if (_mm256_movemask_ps(nan)) {
        const __m256i u = _mm256_castps_si256(x);
        const __m256i q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x8000)),
                                          _mm256_set1_epi32(0x7E00));
        const __m128i m16 = _mm_packs_epi32(_mm256_castsi256_si128(_mm256_castps_si256(nan)),
                                            _mm256_extracti128_si256(_mm256_castps_si256(nan), 1));
        h = _mm_blendv_epi8(h, sdnq_v8_narrow16(q), m16);
    }
    return h;
}

SDNQ_TARGET_AVX2 static inline __m256 sdnq_v8_round(__m256 x, int32_t dt) {
    if (dt == SDNQ_DT_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(sdnq_v8_bf16_bits(x), 16));
    if (dt == SDNQ_DT_F16) return _mm256_cvtph_ps(sdnq_v8_f16_bits(x));
    return x;
}

SDNQ_TARGET_AVX2 static inline __m256 sdnq_v8_load(const void *p, int64_t i, int32_t dt) {
    if (dt == SDNQ_DT_F32) return _mm256_loadu_ps((const float *)p + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (dt == SDNQ_DT_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

SDNQ_TARGET_AVX2 static inline void sdnq_v8_store(void *p, int64_t i, int32_t dt, __m256 x) {
    if (dt == SDNQ_DT_F32)
        _mm256_storeu_ps((float *)p + i, x);
    else if (dt == SDNQ_DT_BF16)
        _mm_storeu_si128((__m128i *)((uint16_t *)p + i), sdnq_v8_narrow16(sdnq_v8_bf16_bits(x)));
    else
        _mm_storeu_si128((__m128i *)((uint16_t *)p + i), sdnq_v8_f16_bits(x));
}
#endif /* SDNQ_X86_SIMD */

/* pack.c (sdnq_packed_geometry and the other argument checks: check.h) */
void sdnq_unpack_blocks(const sdnq_type_traits *t, const void *src, int64_t b0, int64_t nb, int32_t *codes);
int32_t sdnq_code_at(const sdnq_type_traits *t, const void *src, int64_t e);

#endif /* SDNQ_INTERNAL_H */
