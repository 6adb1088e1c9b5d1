/*
 * dequant.c - SDNQ dequantization on the CPU: codes + scale (+ zero_point or
 * codebook) -> dense weights, bit-exact with sdnq's elementwise stage.
 *
 * sdnq converts each code to the scale dtype, multiplies by the scale in
 * that dtype (unsigned families: one fused multiply-add with the zero-point,
 * torch's addcmul) and converts the result to the output dtype. The
 * reference does exactly that one element at a time; the fast path unpacks
 * runs of codes, reads their values from a 2^bits lookup table built with
 * the same rounding, and splits the work over threads. Its inner loops exist
 * in portable C and as AVX2 / AVX-512 clones chosen at run time
 * (sdnq_cpu_level, internal.h); all give the reference's bits.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
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

/* ------------------------------------------------------------------------ */
/* reference                                                                 */

sdnq_status sdnq_dequantize_ref(const sdnq_dequant_desc *d) {
    const sdnq_type_traits *t;
    int64_t levels;
    sdnq_status st = sdnq_dequant_check(d, &t, &levels);
    if (st != SDNQ_OK) return st;
    /* no elements: return before looping over the other, possibly huge, extents */
    if (d->outer == 0 || d->red == 0 || d->inner == 0) return SDNQ_OK;
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
/* CPU dispatch                                                              */

#if SDNQ_X86_SIMD
static int detect_cpu_level(void) {
    int level = SDNQ_CPU_BASELINE;
    __builtin_cpu_init();
    /* every CPU with AVX2 and FMA also has F16C; the checks include OS support of the state */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        level = SDNQ_CPU_AVX2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
            level = SDNQ_CPU_AVX512;
    }
    const char *cap = getenv("COMFY_SDNQ_CPU");
    if (cap != NULL) {
        if (strcmp(cap, "baseline") == 0) level = SDNQ_CPU_BASELINE;
        else if (strcmp(cap, "avx2") == 0 && level > SDNQ_CPU_AVX2) level = SDNQ_CPU_AVX2;
    }
    return level;
}

int sdnq_cpu_level(void) {
    static int level = -1; /* see internal.h: set once, then only read */
    int l = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (l < 0) {
        l = detect_cpu_level();
        __atomic_store_n(&level, l, __ATOMIC_RELAXED);
    }
    return l;
}
#else
int sdnq_cpu_level(void) { return SDNQ_CPU_BASELINE; }
#endif

/* ------------------------------------------------------------------------ */
/* fast path                                                                 */
/*
 * Work is cut into runs of at most RUN consecutive codes. With inner == 1 and
 * unit output stride along the reduction (the row layout: every Linear
 * weight), a run holds several whole groups when groups are short, or part of
 * one group, and goes through two stages, each one function per CPU level:
 *   values: codes -> their value in the scale dtype (the 2^bits lookup table
 *           built with the reference's rounding), as fp32 lanes: 8-, 4- and
 *           2-bit codes straight from the file bytes (vector permutes of the
 *           table, gathers for 8-bit tables, conversion where the table is
 *           the identity of the signed or unsigned byte: int8, uint8), other
 *           widths unpacked into an int32 buffer first;
 *   scale:  per group: v * s, or fmaf(v, s, z) (fp32 scales) / v * s + z
 *           rounded once more (bf16/fp16 scales) for unsigned types, rounded
 *           to the scale dtype and stored in the output dtype.
 * Any other layout (inner > 1, strided rows, codebooks, codes wider than
 * 8 bits) takes the generic loop below, one element at a time.
 */

#define RUN 2048 /* codes per task; a multiple of every block size */

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

/* how the values stage reads codes: one byte per code, whose value is the
 * signed byte / the unsigned byte / a table entry; 4-bit or 2-bit fields of
 * bytes (low bits first); 3-, 5- and 6-bit blocks (vector unpacking where
 * the level has it, else as DEC_BUF); any width through the int32 buffer */
enum { DEC_S8, DEC_U8, DEC_LUT8, DEC_NIB, DEC_CRUMB, DEC_PACK, DEC_BUF };

typedef struct {
    const sdnq_type_traits *t;
    const uint8_t *src; /* file words / native elements */
    int64_t src_bytes;
    const float *lut;   /* 256 entries: the value of each code in the scale dtype, 0 past 2^bits */
    int dec;
} dq_plan;

/* values of codes [e0, e0 + n) into v; buf: RUN int32 of scratch */
typedef void (*values_fn)(const dq_plan *p, int64_t e0, int64_t n, float *v, int32_t *buf);
/* one group's run: out[o0 + k] = value v[k] scaled, k < n */
typedef void (*scale_fn)(const float *v, int64_t n, float s, float z, void *out, int64_t o0);

static inline float nib_value(const dq_plan *p, int64_t e) {
    return p->lut[(p->src[e >> 1] >> (4 * (e & 1))) & 15u];
}

static inline float crumb_value(const dq_plan *p, int64_t e) {
    return p->lut[(p->src[e >> 2] >> (2 * (e & 3))) & 3u];
}

/* --- portable C ----------------------------------------------------------- */

static void values_c(const dq_plan *p, int64_t e0, int64_t n, float *v, int32_t *buf) {
    switch (p->dec) {
    case DEC_S8:
    case DEC_U8:
    case DEC_LUT8:
        for (int64_t k = 0; k < n; k++) v[k] = p->lut[p->src[e0 + k]];
        break;
    case DEC_NIB:
        for (int64_t k = 0; k < n; k++) v[k] = nib_value(p, e0 + k);
        break;
    case DEC_CRUMB:
        for (int64_t k = 0; k < n; k++) v[k] = crumb_value(p, e0 + k);
        break;
    default:
        load_codes(p->t, p->src, e0, n, buf);
        for (int64_t k = 0; k < n; k++) v[k] = p->lut[buf[k]];
        break;
    }
}

#define SCALE_C(SN, ON, SDT, ODT, ASYM)                                                                   \
    static void scale_c_##SN##_##ON##_##ASYM(const float *v, int64_t n, float s, float z, void *out,       \
                                             int64_t o0) {                                                \
        for (int64_t k = 0; k < n; k++) {                                                                 \
            float r = ASYM ? ((SDT) == SDNQ_DT_F32 ? fmaf(v[k], s, z) : v[k] * s + z) : v[k] * s;         \
            sdnq_store_float(out, o0 + k, ODT, sdnq_round_to(r, SDT));                                    \
        }                                                                                                 \
    }

/* one definition per (scale dtype, out dtype, asymmetric) of a level's scale stage, and its table */
#define SCALE_ALL(X)                                                                                      \
    X(f32, f32, SDNQ_DT_F32, SDNQ_DT_F32, 0) X(f32, f32, SDNQ_DT_F32, SDNQ_DT_F32, 1)                     \
    X(f32, bf16, SDNQ_DT_F32, SDNQ_DT_BF16, 0) X(f32, bf16, SDNQ_DT_F32, SDNQ_DT_BF16, 1)                 \
    X(f32, f16, SDNQ_DT_F32, SDNQ_DT_F16, 0) X(f32, f16, SDNQ_DT_F32, SDNQ_DT_F16, 1)                     \
    X(bf16, f32, SDNQ_DT_BF16, SDNQ_DT_F32, 0) X(bf16, f32, SDNQ_DT_BF16, SDNQ_DT_F32, 1)                 \
    X(bf16, bf16, SDNQ_DT_BF16, SDNQ_DT_BF16, 0) X(bf16, bf16, SDNQ_DT_BF16, SDNQ_DT_BF16, 1)             \
    X(bf16, f16, SDNQ_DT_BF16, SDNQ_DT_F16, 0) X(bf16, f16, SDNQ_DT_BF16, SDNQ_DT_F16, 1)                 \
    X(f16, f32, SDNQ_DT_F16, SDNQ_DT_F32, 0) X(f16, f32, SDNQ_DT_F16, SDNQ_DT_F32, 1)                     \
    X(f16, bf16, SDNQ_DT_F16, SDNQ_DT_BF16, 0) X(f16, bf16, SDNQ_DT_F16, SDNQ_DT_BF16, 1)                 \
    X(f16, f16, SDNQ_DT_F16, SDNQ_DT_F16, 0) X(f16, f16, SDNQ_DT_F16, SDNQ_DT_F16, 1)
#define SCALE_TABLE(P)                                                                                    \
    {{{P##f32_f32_0, P##f32_f32_1}, {P##f32_bf16_0, P##f32_bf16_1}, {P##f32_f16_0, P##f32_f16_1}},         \
     {{P##bf16_f32_0, P##bf16_f32_1}, {P##bf16_bf16_0, P##bf16_bf16_1}, {P##bf16_f16_0, P##bf16_f16_1}},   \
     {{P##f16_f32_0, P##f16_f32_1}, {P##f16_bf16_0, P##f16_bf16_1}, {P##f16_f16_0, P##f16_f16_1}}}

SCALE_ALL(SCALE_C)
static const scale_fn scale_c[3][3][2] = SCALE_TABLE(scale_c_);

/* table index of an arithmetic dtype */
static int dt_index(int32_t dt) { return dt == SDNQ_DT_F32 ? 0 : dt == SDNQ_DT_BF16 ? 1 : 2; }

#if SDNQ_X86_SIMD
/* --- AVX-512 -------------------------------------------------------------- */

/* the table entries of 16 codes < 2^bits: one permute up to 16 entries, else
 * permutes of 32-entry pairs merged by the higher code bits (gathers are slow
 * on several cores) */
SDNQ_TARGET_AVX512 __attribute__((always_inline)) static inline __m512 lut_avx512(__m512i c, const __m512 *tab,
                                                                                   int bits) {
    if (bits <= 4) return _mm512_permutexvar_ps(c, tab[0]);
    __m512 x[8];
    const int pairs = 1 << (bits - 5);
    for (int q = 0; q < pairs; q++) x[q] = _mm512_permutex2var_ps(tab[2 * q], c, tab[2 * q + 1]);
    for (int bit = 5, n = pairs; bit < bits; bit++) {
        const __mmask16 m = _mm512_test_epi32_mask(c, _mm512_set1_epi32(1 << bit));
        n /= 2;
        for (int q = 0; q < n; q++) x[q] = _mm512_mask_blend_ps(m, x[2 * q], x[2 * q + 1]);
    }
    return x[0];
}

/* 16 codes of a 3-, 5- or 6-bit type from the 2*bits bytes of whole blocks
 * they fill: lane l takes up to four of those bytes (ctl, a byte shuffle;
 * -128: none) as one 32-bit x and its code is the OR over three terms of
 * (x >> sh) & mk - blocks.h's unpackers, rewritten per lane (2, 2 and 4
 * blocks of sdnq's layouts; tests compare every width with the reference) */
typedef struct {
    int8_t ctl[64];
    uint32_t sh[3][16], mk[3][16];
} pack_lanes;

static const pack_lanes lanes3 = {
    {0, -128, -128, -128, 1, -128, -128, -128, 2, -128, -128, -128, 0, -128, -128, -128,
     1, -128, -128, -128, 2, -128, -128, -128, 0, 2, -128, -128, 1, 2, -128, -128,
     3, -128, -128, -128, 4, -128, -128, -128, 5, -128, -128, -128, 3, -128, -128, -128,
     4, -128, -128, -128, 5, -128, -128, -128, 3, 5, -128, -128, 4, 5, -128, -128},
    {{0, 0, 0, 3, 3, 3, 6, 6, 0, 0, 0, 3, 3, 3, 6, 6},
     {0, 0, 0, 0, 0, 0, 12, 13, 0, 0, 0, 0, 0, 0, 12, 13},
     {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
    {{7, 7, 7, 7, 7, 7, 3, 3, 7, 7, 7, 7, 7, 7, 3, 3},
     {0, 0, 0, 0, 0, 0, 4, 4, 0, 0, 0, 0, 0, 0, 4, 4},
     {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}};

static const pack_lanes lanes5 = {
    {0, -128, -128, -128, 1, -128, -128, -128, 2, -128, -128, -128, 3, -128, -128, -128,
     4, -128, -128, -128, 0, 3, -128, -128, 1, 4, -128, -128, 2, 3, 4, -128,
     5, -128, -128, -128, 6, -128, -128, -128, 7, -128, -128, -128, 8, -128, -128, -128,
     9, -128, -128, -128, 5, 8, -128, -128, 6, 9, -128, -128, 7, 8, 9, -128},
    {{0, 0, 0, 0, 0, 5, 5, 5, 0, 0, 0, 0, 0, 5, 5, 5},
     {0, 0, 0, 0, 0, 10, 10, 11, 0, 0, 0, 0, 0, 10, 10, 11},
     {0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 20}},
    {{31, 31, 31, 31, 31, 7, 7, 7, 31, 31, 31, 31, 31, 7, 7, 7},
     {0, 0, 0, 0, 0, 24, 24, 16, 0, 0, 0, 0, 0, 24, 24, 16},
     {0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 8}}};

static const pack_lanes lanes6 = {
    {0, -128, -128, -128, 1, -128, -128, -128, 2, -128, -128, -128, 0, 1, 2, -128,
     3, -128, -128, -128, 4, -128, -128, -128, 5, -128, -128, -128, 3, 4, 5, -128,
     6, -128, -128, -128, 7, -128, -128, -128, 8, -128, -128, -128, 6, 7, 8, -128,
     9, -128, -128, -128, 10, -128, -128, -128, 11, -128, -128, -128, 9, 10, 11, -128},
    {{0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2},
     {0, 0, 0, 12, 0, 0, 0, 12, 0, 0, 0, 12, 0, 0, 0, 12},
     {0, 0, 0, 22, 0, 0, 0, 22, 0, 0, 0, 22, 0, 0, 0, 22}},
    {{63, 63, 63, 48, 63, 63, 63, 48, 63, 63, 63, 48, 63, 63, 63, 48},
     {0, 0, 0, 12, 0, 0, 0, 12, 0, 0, 0, 12, 0, 0, 0, 12},
     {0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 3}}};

SDNQ_TARGET_AVX512 __attribute__((always_inline)) static inline void
values_pack_avx512(const dq_plan *p, int64_t e0, int64_t n, float *v, int32_t *buf, const int bits) {
    const pack_lanes *L = bits == 3 ? &lanes3 : bits == 5 ? &lanes5 : &lanes6;
    const int64_t be = p->t->block_elems, bb = p->t->block_words; /* uint8 words */
    const __m512i ctl = _mm512_loadu_si512(L->ctl);
    const __m512i s0 = _mm512_loadu_si512(L->sh[0]), s1 = _mm512_loadu_si512(L->sh[1]);
    const __m512i s2 = _mm512_loadu_si512(L->sh[2]), m0 = _mm512_loadu_si512(L->mk[0]);
    const __m512i m1 = _mm512_loadu_si512(L->mk[1]), m2 = _mm512_loadu_si512(L->mk[2]);
    const __mmask16 bytes = (__mmask16)((1u << (2 * bits)) - 1u);
    __m512 tab[4];
    for (int q = 0; q < 4; q++) tab[q] = _mm512_loadu_ps(p->lut + 16 * q);
    int64_t k = (be - e0 % be) % be; /* codes before the first block boundary */
    if (k > n) k = n;
    if (k > 0) {
        load_codes(p->t, p->src, e0, k, buf);
        for (int64_t x = 0; x < k; x++) v[x] = p->lut[buf[x]];
    }
    for (; k + 16 <= n; k += 16) {
        const int64_t at = (e0 + k) / be * bb; /* 16 bytes where the buffer has them, else the 2*bits used */
        const __m128i w = at + 16 <= p->src_bytes ? _mm_loadu_si128((const __m128i *)(p->src + at))
                                                  : _mm_maskz_loadu_epi8(bytes, p->src + at);
        const __m512i x = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(w), ctl);
        const __m512i c = _mm512_or_si512(
            _mm512_or_si512(_mm512_and_si512(_mm512_srlv_epi32(x, s0), m0), _mm512_and_si512(_mm512_srlv_epi32(x, s1), m1)),
            _mm512_and_si512(_mm512_srlv_epi32(x, s2), m2));
        _mm512_storeu_ps(v + k, lut_avx512(c, tab, bits));
    }
    if (k < n) {
        load_codes(p->t, p->src, e0 + k, n - k, buf);
        for (int64_t x = 0; x < n - k; x++) v[k + x] = p->lut[buf[x]];
    }
}

SDNQ_TARGET_AVX512 static void values_avx512(const dq_plan *p, int64_t e0, int64_t n, float *v, int32_t *buf) {
    const uint8_t *b = p->src;
    const float *lut = p->lut;
    const __m512 tab0 = _mm512_loadu_ps(lut);
    int64_t k = 0;
    switch (p->dec) {
    case DEC_S8:
        for (; k + 16 <= n; k += 16) {
            const __m128i x = _mm_loadu_si128((const __m128i *)(b + e0 + k));
            _mm512_storeu_ps(v + k, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(x)));
        }
        for (; k < n; k++) v[k] = lut[b[e0 + k]];
        break;
    case DEC_U8:
        for (; k + 16 <= n; k += 16) {
            const __m128i x = _mm_loadu_si128((const __m128i *)(b + e0 + k));
            _mm512_storeu_ps(v + k, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(x)));
        }
        for (; k < n; k++) v[k] = lut[b[e0 + k]];
        break;
    case DEC_LUT8: {
        __m512 tab[16];
        for (int q = 0; q < 16; q++) tab[q] = _mm512_loadu_ps(lut + 16 * q);
        for (; k + 16 <= n; k += 16) {
            const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + e0 + k)));
            _mm512_storeu_ps(v + k, lut_avx512(c, tab, 8));
        }
        for (; k < n; k++) v[k] = lut[b[e0 + k]];
        break;
    }
    case DEC_NIB: {
        const __m128i lo4 = _mm_set1_epi8(15);
        for (; k < n && ((e0 + k) & 1); k++) v[k] = nib_value(p, e0 + k);
        for (; k + 32 <= n; k += 32) { /* 16 bytes: low nibble first */
            const __m128i x = _mm_loadu_si128((const __m128i *)(b + ((e0 + k) >> 1)));
            const __m128i lo = _mm_and_si128(x, lo4), hi = _mm_and_si128(_mm_srli_epi16(x, 4), lo4);
            const __m512i c0 = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
            const __m512i c1 = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi));
            _mm512_storeu_ps(v + k, _mm512_permutexvar_ps(c0, tab0));
            _mm512_storeu_ps(v + k + 16, _mm512_permutexvar_ps(c1, tab0));
        }
        for (; k < n; k++) v[k] = nib_value(p, e0 + k);
        break;
    }
    case DEC_CRUMB: {
        const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i three = _mm512_set1_epi32(3);
        for (; k < n && ((e0 + k) & 3); k++) v[k] = crumb_value(p, e0 + k);
        for (; k + 16 <= n; k += 16) { /* 4 bytes */
            uint32_t w;
            memcpy(&w, b + ((e0 + k) >> 2), 4);
            const __m512i c = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int32_t)w), sh), three);
            _mm512_storeu_ps(v + k, _mm512_permutexvar_ps(c, tab0));
        }
        for (; k < n; k++) v[k] = crumb_value(p, e0 + k);
        break;
    }
    case DEC_PACK:
        if (p->t->bits == 3)
            values_pack_avx512(p, e0, n, v, buf, 3);
        else if (p->t->bits == 5)
            values_pack_avx512(p, e0, n, v, buf, 5);
        else
            values_pack_avx512(p, e0, n, v, buf, 6);
        break;
    default: {
        const int bits = p->t->bits;
        __m512 tab[16];
        for (int q = 0; q < 16; q++) tab[q] = _mm512_loadu_ps(lut + 16 * q);
        load_codes(p->t, p->src, e0, n, buf);
#define BUF_LOOP(B)                                                                                       \
    for (; k + 16 <= n; k += 16) _mm512_storeu_ps(v + k, lut_avx512(_mm512_loadu_si512(buf + k), tab, B)); \
    for (; k < n; k++) v[k] = lut[buf[k]];
        if (bits <= 4) {
            BUF_LOOP(4)
        } else if (bits == 5) {
            BUF_LOOP(5)
        } else if (bits == 6) {
            BUF_LOOP(6)
        } else if (bits == 7) {
            BUF_LOOP(7)
        } else {
            BUF_LOOP(8)
        }
#undef BUF_LOOP
        break;
    }
    }
}

SDNQ_TARGET_AVX512 __attribute__((always_inline)) static inline void
scale_avx512(const float *v, int64_t n, float s, float z, void *out, int64_t o0, int32_t sdt, int32_t odt, int asym) {
    const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z);
    for (int64_t k = 0; k < n; k += 16) {
        const __mmask16 m = sdnq_v16_mask(n - k); /* all lanes but in the tail: plain loads and stores */
        const __m512 x = sdnq_v16_load(v, k, SDNQ_DT_F32, m);
        __m512 r = !asym                ? _mm512_mul_ps(x, vs)
                   : sdt == SDNQ_DT_F32 ? _mm512_fmadd_ps(x, vs, vz)
                                        : _mm512_add_ps(_mm512_mul_ps(x, vs), vz);
        if (sdt != odt) r = sdnq_v16_round(r, sdt); /* rounding twice to one dtype is rounding once */
        sdnq_v16_store(out, o0 + k, odt, r, m);
    }
}

#define SCALE_AVX512(SN, ON, SDT, ODT, ASYM)                                                              \
    SDNQ_TARGET_AVX512 static void scale_avx512_##SN##_##ON##_##ASYM(const float *v, int64_t n, float s,   \
                                                                     float z, void *out, int64_t o0) {    \
        scale_avx512(v, n, s, z, out, o0, SDT, ODT, ASYM);                                                \
    }
SCALE_ALL(SCALE_AVX512)
static const scale_fn scale_avx512_fns[3][3][2] = SCALE_TABLE(scale_avx512_);

/* --- AVX2 ----------------------------------------------------------------- */

/* table lookup of 8 codes < 2^bits (bits <= 4) */
SDNQ_TARGET_AVX2 static inline __m256 lut8_avx2(__m256i c, __m256 lo, __m256 hi, int bits) {
    const __m256 a = _mm256_permutevar8x32_ps(lo, c);
    if (bits <= 3) return a;
    return _mm256_blendv_ps(a, _mm256_permutevar8x32_ps(hi, c), _mm256_castsi256_ps(_mm256_slli_epi32(c, 28)));
}

SDNQ_TARGET_AVX2 static void values_avx2(const dq_plan *p, int64_t e0, int64_t n, float *v, int32_t *buf) {
    const uint8_t *b = p->src;
    const float *lut = p->lut;
    const __m256 lo = _mm256_loadu_ps(lut), hi = _mm256_loadu_ps(lut + 8);
    int64_t k = 0;
    switch (p->dec) {
    case DEC_S8:
        for (; k + 8 <= n; k += 8) {
            const __m128i x = _mm_loadl_epi64((const __m128i *)(b + e0 + k));
            _mm256_storeu_ps(v + k, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x)));
        }
        for (; k < n; k++) v[k] = lut[b[e0 + k]];
        break;
    case DEC_U8:
        for (; k + 8 <= n; k += 8) {
            const __m128i x = _mm_loadl_epi64((const __m128i *)(b + e0 + k));
            _mm256_storeu_ps(v + k, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x)));
        }
        for (; k < n; k++) v[k] = lut[b[e0 + k]];
        break;
    case DEC_LUT8:
        for (; k + 8 <= n; k += 8) {
            const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + e0 + k)));
            _mm256_storeu_ps(v + k, _mm256_i32gather_ps(lut, c, 4));
        }
        for (; k < n; k++) v[k] = lut[b[e0 + k]];
        break;
    case DEC_NIB: {
        const __m256i sh = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
        const __m256i mask = _mm256_set1_epi32(15);
        for (; k < n && ((e0 + k) & 1); k++) v[k] = nib_value(p, e0 + k);
        for (; k + 8 <= n; k += 8) { /* 4 bytes */
            uint32_t w;
            memcpy(&w, b + ((e0 + k) >> 1), 4);
            const __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int32_t)w), sh), mask);
            _mm256_storeu_ps(v + k, lut8_avx2(c, lo, hi, 4));
        }
        for (; k < n; k++) v[k] = nib_value(p, e0 + k);
        break;
    }
    case DEC_CRUMB: {
        const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
        const __m256i mask = _mm256_set1_epi32(3);
        for (; k < n && ((e0 + k) & 3); k++) v[k] = crumb_value(p, e0 + k);
        for (; k + 8 <= n; k += 8) { /* 2 bytes */
            const uint32_t w = (uint32_t)b[(e0 + k) >> 2] | (uint32_t)b[((e0 + k) >> 2) + 1] << 8;
            const __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int32_t)w), sh), mask);
            _mm256_storeu_ps(v + k, _mm256_permutevar8x32_ps(lo, c));
        }
        for (; k < n; k++) v[k] = crumb_value(p, e0 + k);
        break;
    }
    default: {
        const int bits = p->t->bits;
        load_codes(p->t, p->src, e0, n, buf);
        for (; k + 8 <= n; k += 8) {
            const __m256i c = _mm256_loadu_si256((const __m256i *)(buf + k));
            _mm256_storeu_ps(v + k, bits <= 4 ? lut8_avx2(c, lo, hi, bits) : _mm256_i32gather_ps(lut, c, 4));
        }
        for (; k < n; k++) v[k] = lut[buf[k]];
        break;
    }
    }
}

SDNQ_TARGET_AVX2 __attribute__((always_inline)) static inline int64_t
scale_avx2(const float *v, int64_t n, float s, float z, void *out, int64_t o0, int32_t sdt, int32_t odt, int asym) {
    const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m256 x = _mm256_loadu_ps(v + k);
        __m256 r = !asym                ? _mm256_mul_ps(x, vs)
                   : sdt == SDNQ_DT_F32 ? _mm256_fmadd_ps(x, vs, vz)
                                        : _mm256_add_ps(_mm256_mul_ps(x, vs), vz);
        if (sdt != odt) r = sdnq_v8_round(r, sdt);
        sdnq_v8_store(out, o0 + k, odt, r);
    }
    return k;
}

#define SCALE_AVX2(SN, ON, SDT, ODT, ASYM)                                                                \
    SDNQ_TARGET_AVX2 static void scale_avx2_##SN##_##ON##_##ASYM(const float *v, int64_t n, float s,       \
                                                                 float z, void *out, int64_t o0) {        \
        int64_t k = scale_avx2(v, n, s, z, out, o0, SDT, ODT, ASYM);                                      \
        if (k < n) scale_c_##SN##_##ON##_##ASYM(v + k, n - k, s, z, out, o0 + k);                         \
    }
SCALE_ALL(SCALE_AVX2)
static const scale_fn scale_avx2_fns[3][3][2] = SCALE_TABLE(scale_avx2_);
#endif /* SDNQ_X86_SIMD */

/* the decoder of a type's codes, from its value table */
static int pick_decoder(const sdnq_type_traits *t, const float *lut) {
    const int bytes = t->is_packed ? t->bits == 8 : sdnq_dtype_size(t->storage) == 1;
    if (bytes) {
        int s8 = 1, u8 = 1;
        for (int c = 0; c < 256; c++) {
            const float fs = (float)(c < 128 ? c : c - 256), fu = (float)c;
            s8 &= memcmp(&lut[c], &fs, sizeof fs) == 0;
            u8 &= memcmp(&lut[c], &fu, sizeof fu) == 0;
        }
        return s8 ? DEC_S8 : u8 ? DEC_U8 : DEC_LUT8;
    }
    if (t->is_packed && t->bits == 4) return DEC_NIB;
    if (t->is_packed && t->bits == 2) return DEC_CRUMB;
    if (t->is_packed && (t->bits == 3 || t->bits == 5 || t->bits == 6)) return DEC_PACK;
    return DEC_BUF;
}

/* row layout: inner == 1, out_stride[1] == 1, value table */
static void dequantize_rows(const sdnq_dequant_desc *d, const sdnq_type_traits *t, const float *lut, int asym,
                            int32_t nthreads) {
    const dq_plan plan = {t, (const uint8_t *)d->codes, d->codes_bytes, lut, pick_decoder(t, lut)};
    values_fn values = values_c;
    scale_fn scale = scale_c[dt_index(d->scale_dtype)][dt_index(d->out_dtype)][asym];
#if SDNQ_X86_SIMD
    const int level = sdnq_cpu_level();
    if (level >= SDNQ_CPU_AVX512) {
        values = values_avx512;
        scale = scale_avx512_fns[dt_index(d->scale_dtype)][dt_index(d->out_dtype)][asym];
    } else if (level >= SDNQ_CPU_AVX2) {
        values = values_avx2;
        scale = scale_avx2_fns[dt_index(d->scale_dtype)][dt_index(d->out_dtype)][asym];
    }
#endif
    const int64_t red = d->red;
    /* a task: groups_per whole groups, or (long groups) RUN codes of one group */
    const int64_t groups_per = red < RUN ? RUN / red : 1;
    const int64_t runs = red < RUN ? 1 : (red + RUN - 1) / RUN;
    const int64_t tasks = red < RUN ? (d->outer + groups_per - 1) / groups_per : d->outer * runs;
    int64_t task;
#pragma omp parallel for num_threads(sdnq_threads(nthreads, tasks)) schedule(static)
    for (task = 0; task < tasks; task++) {
        float v[RUN];
        int32_t buf[RUN];
        int64_t o = task / runs * groups_per, j = (task % runs) * RUN, n;
        if (red < RUN) {
            const int64_t o1 = o + groups_per < d->outer ? o + groups_per : d->outer;
            n = (o1 - o) * red;
        } else {
            n = red - j < RUN ? red - j : RUN;
        }
        values(&plan, o * red + j, n, v, buf);
        for (int64_t k = 0; k < n; o++, j = 0) { /* one group's part per step */
            const int64_t len = red - j < n - k ? red - j : n - k;
            const float s = sdnq_load_float(d->scale, o * d->scale_stride[0], d->scale_dtype);
            const float z = asym ? sdnq_load_float(d->zero_point, o * d->zp_stride[0], d->scale_dtype) : 0.0f;
            scale(v + k, len, s, z, d->out, o * d->out_stride[0] + j);
            k += len;
        }
    }
}

sdnq_status sdnq_dequantize(const sdnq_dequant_desc *d, int32_t nthreads) {
    const sdnq_type_traits *t;
    int64_t levels;
    sdnq_status st = sdnq_dequant_check(d, &t, &levels);
    if (st != SDNQ_OK) return st;
    if (d->outer == 0 || d->red == 0 || d->inner == 0) return SDNQ_OK;
    const int64_t span = d->red * d->inner; /* elements per outer index; bounded by the checked total */

    const int asym = t->is_unsigned && !d->codebook;
    const int use_lut = t->bits <= 8 && !d->codebook;
    float lut[256];
    for (int c = 0; c < 256; c++) lut[c] = 0.0f;
    if (use_lut)
        for (int32_t c = 0; c < (1 << t->bits); c++) lut[c] = sdnq_weight_value(t, (uint32_t)c, d->scale_dtype);
    if (use_lut && d->inner == 1 && d->out_stride[1] == 1) {
        dequantize_rows(d, t, lut, asym, nthreads);
        return SDNQ_OK;
    }

    /* generic: any layout, one element at a time */
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
