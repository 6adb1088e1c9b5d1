/*
 * test_core.c - unit tests of the comfy_sdnq C core (csrc/, no Python). Build and run: tests/c/run.sh
 *
 * Plain C11, no framework. Expected values are written out by hand, the comments show the arithmetic
 * (layouts from sdnq-format.md 2.4, value rules from sections 2 and 4); they were cross-checked once
 * against sdnq 0.2.8 / torch, never computed by the code under test. Later sections check the error
 * paths of every entry point and compare every fast entry point with its scalar reference on random
 * data (fixed seed). Buffers handed to the core are heap blocks of exactly the size the call needs, so
 * an AddressSanitizer build catches any access past them.
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "sdnq/sdnq.h"

/* ------------------------------------------------------------------------ */
/* harness                                                                   */

static int g_checks, g_fails;
static char g_ctx[192]; /* what a loop iteration is testing, printed on failure */

#define CTX(...) snprintf(g_ctx, sizeof g_ctx, __VA_ARGS__)
#define CTX_END() (g_ctx[0] = 0)

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float ffrom(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static void report(int ok, const char *file, int line, const char *fmt, ...) {
    g_checks++;
    if (ok || ++g_fails > 80) return;
    va_list ap;
    fprintf(stderr, "%s:%d: FAIL ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, g_ctx[0] ? " [%s]\n" : "%s\n", g_ctx);
}
static void check_eq(long long a, long long b, const char *what, const char *file, int line) {
    report(a == b, file, line, "%s (got %lld / 0x%llx, want %lld / 0x%llx)", what, a, (unsigned long long)a, b,
           (unsigned long long)b);
}
static void check_st(sdnq_status s, sdnq_status w, const char *what, const char *file, int line) {
    report(s == w, file, line, "%s -> %d (%s), want %d (%s)", what, (int)s, sdnq_status_str(s), (int)w,
           sdnq_status_str(w));
}
/* bit-exact: tells +0 from -0 and compares NaN payloads */
static void check_f32(float g, float w, const char *what, const char *file, int line) {
    report(fbits(g) == fbits(w), file, line, "%s: got %a (0x%08x), want %a (0x%08x)", what, g, (unsigned)fbits(g), w,
           (unsigned)fbits(w));
}
static void check_mem(const void *got, const void *want, size_t n, const char *what, const char *file, int line) {
    const uint8_t *g = got, *w = want;
    size_t k = 0;
    while (k < n && g[k] == w[k]) k++;
    report(k == n, file, line, "%s differs at byte %zu of %zu (0x%02x, want 0x%02x)", what, k, n, k < n ? g[k] : 0,
           k < n ? w[k] : 0);
}

#define CHECK(c) report(!!(c), __FILE__, __LINE__, "%s", #c)
#define CHECK_EQ(a, b) check_eq((long long)(a), (long long)(b), #a " == " #b, __FILE__, __LINE__)
#define CHECK_ST(expr, want) check_st((expr), (sdnq_status)(want), #expr, __FILE__, __LINE__)
#define CHECK_F32(got, want) check_f32((got), (want), #got, __FILE__, __LINE__)
#define CHECK_MEM(got, want, n) check_mem((got), (want), (size_t)(n), #got, __FILE__, __LINE__)
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* allocations of a test area, freed together (exact sizes for ASan) */
static void *g_allocs[1024];
static int g_nallocs;

static void *talloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (p == NULL || g_nallocs == 1024) fputs("test_core: out of memory or allocation slots\n", stderr), exit(2);
    return g_allocs[g_nallocs++] = p;
}
static void *tdup(const void *src, size_t n) { return memcpy(talloc(n), src, n); }
static void tfree_all(void) { while (g_nallocs) free(g_allocs[--g_nallocs]); }

static uint64_t g_rng = 0x2545F4914F6CDD1Dull; /* xorshift64, fixed seed */
static uint64_t rnd(void) { return g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17; }
static float rnd_float(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() >> 40) / 16777216.0f; }
static void fill_bytes(void *p, size_t n) { for (size_t k = 0; k < n; k++) ((uint8_t *)p)[k] = (uint8_t)rnd(); }
/* n random values in [lo, hi) stored as dtype (F32/BF16/F16) */
static void *rnd_floats(int64_t n, int32_t dt, float lo, float hi) {
    float *x = malloc((size_t)(n ? n : 1) * 4);
    for (int64_t k = 0; k < n; k++) x[k] = rnd_float(lo, hi);
    void *p = talloc((size_t)n * (size_t)sdnq_dtype_size(dt));
    if (sdnq_convert_ref(x, n, p, dt) != SDNQ_OK) exit(2);
    free(x);
    return p;
}

static const sdnq_type_traits *T(int32_t id) { return sdnq_type_get(id); }
static size_t dsize(int32_t dt) { return (size_t)sdnq_dtype_size(dt); }

static const int32_t bad_ids[3] = {0, 9999, -1};
enum { OK = SDNQ_OK, NUL = SDNQ_ERR_NULL, TYP = SDNQ_ERR_TYPE, SIZ = SDNQ_ERR_SIZE, RNG = SDNQ_ERR_RANGE,
       OVF = SDNQ_ERR_OVERFLOW, DTY = SDNQ_ERR_DTYPE, UNS = SDNQ_ERR_UNSUPPORTED };

/* ======================================================================== */
/* type table                                                                */

static void test_table(void) {
    CHECK(*(const uint8_t *)&(const uint16_t){1} == 1); /* expected words below assume a little-endian host */
    CHECK_EQ(sdnq_type_count(), 176);
    CHECK_EQ(sdnq_alias_count(), 36);
    CHECK(T(0) == NULL && T(177) == NULL && T(-1) == NULL && T(9999) == NULL);
    CHECK_EQ(sdnq_type_by_name(NULL), 0);
    const char *an = NULL;
    int32_t at = 0;
    CHECK(sdnq_alias_get(0, &an, &at) == SDNQ_OK && strcmp(an, "fp32") == 0 && at == 34);
    CHECK(sdnq_alias_get(35, &an, &at) == SDNQ_OK && strcmp(an, "bool") == 0 && at == 33);
    CHECK_ST(sdnq_alias_get(36, &an, &at), RNG), CHECK_ST(sdnq_alias_get(-1, &an, &at), RNG);
    CHECK_ST(sdnq_alias_get(0, NULL, &at), NUL), CHECK_ST(sdnq_alias_get(0, &an, NULL), NUL);
    CHECK_ST(sdnq_storage_words(SDNQ_TYPE_UINT4, 2, NULL), NUL);

    const sdnq_type_traits *u4 = T(SDNQ_TYPE_UINT4), *i5 = T(SDNQ_TYPE_INT5), *u9 = T(SDNQ_TYPE_UINT9);
    const sdnq_type_traits *f8s = T(SDNQ_TYPE_FLOAT8_E4M3FN_SDNQ), *f1 = T(SDNQ_TYPE_FLOAT1_E1M0FNU);
    const sdnq_type_traits *i8 = T(SDNQ_TYPE_INT8), *f8 = T(SDNQ_TYPE_FLOAT8_E4M3FN);
    CHECK(u4->family == SDNQ_FAMILY_UINT && u4->bits == 4 && u4->is_packed && u4->is_unsigned && u4->is_integer);
    CHECK(u4->block_elems == 2 && u4->block_words == 1 && u4->storage == SDNQ_DT_U8 && u4->max == 15.0);
    CHECK(i5->family == SDNQ_FAMILY_INT && i5->block_elems == 8 && i5->block_words == 5 && !i5->is_unsigned);
    CHECK(i5->min == -16.0 && i5->max == 15.0 && i5->storage == SDNQ_DT_U8);
    CHECK(u9->max == 512.0 && u9->min == 0.0 && u9->storage == SDNQ_DT_I16 && u9->block_elems == 16); /* 2^9! */
    CHECK(u9->block_words == 9 && f8s->family == SDNQ_FAMILY_FLOATX && f8s->max == 480.0 && f8s->min == -480.0);
    CHECK(f8s->exponent == 4 && f8s->mantissa == 3 && f8s->is_packed && f8s->block_elems == 1 && !f8s->is_integer);
    CHECK(f1->family == SDNQ_FAMILY_UFLOATX && f1->storage == SDNQ_DT_I64 && f1->block_elems == 8 && f1->max == 2.0);
    CHECK(f1->block_words == 1 && f1->is_unsigned && f8s->storage == SDNQ_DT_U8 && i8->max == 127.0);
    CHECK(!i8->is_packed && i8->storage == SDNQ_DT_I8 && i8->block_elems == 1 && f8->family == SDNQ_FAMILY_FLOAT);
    CHECK(!f8->is_packed && f8->storage == SDNQ_DT_F8_E4M3FN && f8->max == 448.0);
    CHECK(T(SDNQ_TYPE_UINT32)->storage == SDNQ_DT_U32 && T(SDNQ_TYPE_FLOAT16_E5M10FN)->storage == SDNQ_DT_U16);

    CHECK(sdnq_dtype_size(SDNQ_DT_F32) == 4 && sdnq_dtype_size(SDNQ_DT_BF16) == 2 && sdnq_dtype_size(SDNQ_DT_I64) == 8);
    CHECK(sdnq_dtype_size(SDNQ_DT_F8_E8M0FNU) == 1 && sdnq_dtype_size(-1) == 0 && sdnq_dtype_size(SDNQ_DT_COUNT) == 0);
    CHECK(strcmp(sdnq_dtype_name(SDNQ_DT_F32), "F32") == 0 && strcmp(sdnq_dtype_name(SDNQ_DT_I8), "I8") == 0);
    CHECK(sdnq_dtype_name(-1) == NULL && sdnq_dtype_name(SDNQ_DT_COUNT) == NULL);
    for (int s = 0; s <= SDNQ_STATUS_COUNT + 1; s++) CHECK(sdnq_status_str((sdnq_status)s) != NULL);
    CHECK(strcmp(sdnq_status_str(SDNQ_OK), "ok") == 0);

    static const struct { const char *name; int32_t id; } names[] = {
        {"int32", 1}, {"int5", 13}, {"uint4", 30}, {"uint1", 33}, {"float8_e4m3fn", 37},
        {"float8_e4m3fn_sdnq", 82}, {"float1_e1m0fnu", 173}, {"float8_e5m2fnuz", 176},
        {"fp8", 37}, {"bool", 33}, {"int1", 33}, {"fp6", 91}, {"fp4", 99}, {"fp10", 73}, {"fp9", 77},
        {"ufp4", 165}, {"fp1", 173}, {"ufp1", 173}, {"bf16", 35},
        {"foo", 0}, {"", 0}, {"UINT4", 0}, {"uint4 ", 0}, {"fp", 0}, {"float8_e4m3", 0}};
    for (size_t k = 0; k < COUNT(names); k++) {
        CTX("name '%s'", names[k].name);
        CHECK_EQ(sdnq_type_by_name(names[k].name), names[k].id);
    }
    for (int32_t id = 1; id <= 176; id++) { /* table self-consistency */
        const sdnq_type_traits *t = T(id);
        CTX("type id %d", id);
        CHECK(t != NULL && t->id == id && t->name != NULL);
        if (t == NULL) continue;
        CHECK_EQ(sdnq_type_by_name(t->name), id);
        CHECK(dsize(t->storage) > 0 && (t->is_packed || (t->block_elems == 1 && t->block_words == 1)));
        /* packed types carry their width's SDNQ_BLOCK line (types.c builds the table from enum constants
         * so that Clang, which rejects array reads in a static initializer, compiles it too) */
        int32_t be = 0, bw = 0;
#define SDNQ_BLOCK(bits_, elems_, words_) if (t->bits == bits_) be = elems_, bw = words_;
#include "sdnq/types.def"
#undef SDNQ_BLOCK
        if (t->is_packed) CHECK(be > 0 && t->block_elems == be && t->block_words == bw);
    }
    for (int32_t i = 0; i < 36; i++) {
        CTX("alias %d", i);
        CHECK_ST(sdnq_alias_get(i, &an, &at), SDNQ_OK);
        CHECK(an != NULL && T(at) != NULL && sdnq_type_by_name(an) == at);
    }
    enum { U4 = SDNQ_TYPE_UINT4, I5 = SDNQ_TYPE_INT5 };
    static const struct { int32_t type; int64_t n; int32_t st; int64_t words; } sw[] = {
        {U4, 10, OK, 5}, {I5, 16, OK, 10}, {SDNQ_TYPE_UINT9, 32, OK, 18}, {SDNQ_TYPE_UINT1, 16, OK, 2},
        {SDNQ_TYPE_INT8, 7, OK, 7}, {U4, 0, OK, 0}, {I5, INT64_MAX / 8 * 8, OK, INT64_MAX / 8 * 5}, /* words <= n */
        {I5, 12, SIZ, 0}, {U4, 3, SIZ, 0}, {U4, -2, SIZ, 0}, {0, 2, TYP, 0}, {9999, 2, TYP, 0}, {-1, 2, TYP, 0}};
    for (size_t k = 0; k < COUNT(sw); k++) {
        int64_t w = -1;
        CTX("storage_words case %zu", k);
        CHECK_ST(sdnq_storage_words(sw[k].type, sw[k].n, &w), sw[k].st);
        if (sw[k].st == SDNQ_OK) CHECK_EQ(w, sw[k].words);
    }
}

/* ======================================================================== */
/* bit packing: one hand-packed block per width                              */

typedef struct pack_case {
    int32_t type;
    int n;
    int32_t codes[16];
    int nw;
    uint64_t words[16]; /* storage words, values as the file holds them           */
    int spills;         /* unpack(words) gives `back`, not `codes` (code 2^bits)   */
    int32_t back[16];
} pack_case;

static const pack_case pack_cases[] = {
    /* 1 bit, one int64 word: b_k = a_k -> 0b10001101 */
    {SDNQ_TYPE_UINT1, 8, {1, 0, 1, 1, 0, 0, 0, 1}, 1, {0x8D}, 0, {0}},
    {SDNQ_TYPE_FLOAT1_E1M0FNU, 8, {0, 1, 0, 1, 1, 0, 0, 0}, 1, {0x1A}, 0, {0}},
    /* 2 bit: 3 | 0<<2 | 2<<4 | 1<<6 = 0x63; int2 q {-2,1,0,-1} stores q+2 = {0,3,2,1} -> 0x6C */
    {SDNQ_TYPE_UINT2, 4, {3, 0, 2, 1}, 1, {0x63}, 0, {0}},
    {SDNQ_TYPE_INT2, 4, {0, 3, 2, 1}, 1, {0x6C}, 0, {0}},
    /* 3 bit: w0 = 1|4<<3|(7&3)<<6 = 0xE1, w1 = 2|5<<3|(5&3)<<6 = 0x6A, w2 = 3|6<<3|1<<6|1<<7 = 0xF3 */
    {SDNQ_TYPE_UINT3, 8, {1, 2, 3, 4, 5, 6, 7, 5}, 3, {0xE1, 0x6A, 0xF3}, 0, {0}},
    /* 4 bit: first element in the low nibble */
    {SDNQ_TYPE_UINT4, 4, {3, 10, 15, 0}, 2, {0xA3, 0x0F}, 0, {0}},
    {SDNQ_TYPE_INT4, 2, {0, 15}, 1, {0xF0}, 0, {0}},
    /* 5 bit: a5=10110 a6=01101 a7=11011; w0 = 0|110<<5, w1 = 31|101<<5, w2 = 17|011<<5,
     * w3 = 5 | a5[3..4]=10<<5 | a7[4]<<7 = 0xC5, w4 = 9 | a6[3..4]=01<<5 | a7[3]<<7 = 0xA9 */
    {SDNQ_TYPE_INT5, 8, {0, 31, 17, 5, 9, 22, 13, 27}, 5, {0xC0, 0xBF, 0x71, 0xC5, 0xA9}, 0, {0}},
    /* 6 bit: a3 = 110110; w0 = 42|11<<6, w1 = 21|01<<6, w2 = 63|10<<6 */
    {SDNQ_TYPE_UINT6, 4, {42, 21, 63, 54}, 3, {0xEA, 0x55, 0xBF}, 0, {0}},
    /* 7 bit: a7 = 89 = 1011001, w_j bit 7 = a7[6-j] */
    {SDNQ_TYPE_INT7, 8, {127, 1, 2, 3, 4, 5, 100, 89}, 7, {0xFF, 0x01, 0x82, 0x83, 0x04, 0x05, 0xE4}, 0, {0}},
    /* 8-bit custom float codes: one byte each */
    {SDNQ_TYPE_FLOAT8_E4M3FN_SDNQ, 4, {0x00, 0x7F, 0xFF, 0x38}, 4, {0x00, 0x7F, 0xFF, 0x38}, 0, {0}},
    /* 9 bit: w_j = a_j | a(8+j)[0..6] << 9; w8 pairs a(8+k)[7..8]: 3 | 3<<2 | 1<<4 | 2<<8 = 0x21F */
    {SDNQ_TYPE_UINT9, 16, {0, 1, 511, 256, 3, 4, 5, 6, 511, 384, 128, 127, 256, 0, 1, 2}, 9,
     {0xFE00, 0x0001, 0x01FF, 0xFF00, 0x0003, 0x0004, 0x0205, 0x0406, 0x021F}, 0, {0}},
    /* 10 bit: a5 = 0x3C5 (lo6 5, hi4 15), a6 = 0x2B7 (55, 10), a7 = 0x1E9 (lo6 41, [6..7] 3, [8..9] 1)
     * w3 = 0x2AA | 15<<10 | 1<<14 = 0x7EAA, w4 = 0x155 | 10<<10 | 3<<14 = 0xE955 */
    {SDNQ_TYPE_INT10, 8, {1023, 0, 512, 682, 341, 965, 695, 489}, 5, {0x17FF, 0xDC00, 0xA600, 0x7EAA, 0xE955}, 0,
     {0}},
    /* 11 bit: w8 = a8[5..10]=45 | a11[5..10]=63<<6 | a14[5..8]=6<<12 = 0x6FED,
     * w9 = 31 | 0 | a15[5..8]=13<<12, w10 = 32 | a13[5..10]=21<<6 | a14[9..10]=3<<12 | a15[9..10]=0 */
    {SDNQ_TYPE_UINT11, 16, {0x7FF, 0, 1, 2, 3, 4, 5, 6, 0x5A5, 0x3FF, 0x400, 0x7E0, 0x01F, 0x2B3, 0x6C9, 0x1AB}, 11,
     {0x2FFF, 0xF800, 0x0001, 0x0002, 0xF803, 0x9804, 0x4805, 0x5806, 0x6FED, 0xD01F, 0x3560}, 0, {0}},
    /* 12 bit: a3 = 0x9E7 -> nibbles 9, E, 7 on top of w0, w1, w2 */
    {SDNQ_TYPE_INT12, 4, {0xABC, 0x123, 0xFFF, 0x9E7}, 3, {0x9ABC, 0xE123, 0x7FFF}, 0, {0}},
    /* 13 bit: a13 = 0x1ABC slices 4,7,2,5,[12]=1; a14 = 0x0F0F: 7,1,4,7,0; a15 = 0x1555: 5,2,5,2,1 */
    {SDNQ_TYPE_UINT13, 16, {0x1FFF, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0x1234, 0x1ABC, 0x0F0F, 0x1555}, 13,
     {0x9FFF, 0xE000, 0xA001, 0xE002, 0x2003, 0x4004, 0x4005, 0x8006, 0xA007, 0xA008, 0xE009, 0x400A, 0xB234}, 0,
     {0}},
    /* 14 bit: a7 = 0x2D39 = 10 11 01 00 11 10 01 (pairs from the top) */
    {SDNQ_TYPE_INT14, 8, {0x3FFF, 0x2000, 1, 2, 3, 4, 5, 0x2D39}, 7,
     {0xBFFF, 0xE000, 0x4001, 0x0002, 0xC003, 0x8004, 0x4005}, 0, {0}},
    /* 15 bit: a15 = 0x4C2B = 100110000101011, w_j bit 15 = a15[14-j] */
    {SDNQ_TYPE_UINT15, 16, {0x7FFF, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0x4C2B}, 15,
     {0xFFFF, 0, 1, 0x8002, 0x8003, 4, 5, 6, 7, 0x8008, 9, 0x800A, 0xB, 0x800C, 0x800D}, 0, {0}},
    /* 16-bit custom float codes: one word each */
    {SDNQ_TYPE_FLOAT16_E5M10FN, 2, {0xABCD, 0x0001}, 2, {0xABCD, 0x0001}, 0, {0}},
    /* Spills of the code 2^bits (uint9..15 quantize their maximum to it), from sdnq's packer:
     * uint9: w0 = a0 | a8<<9 = 512 | 4<<9 = 0x0A00 is not masked, so a8 reads back 5 and a0 0;
     * a15 = 512: a15<<9 and a15<<7 & 0xC000 both leave the 16-bit word, a15 reads back 0. */
    {SDNQ_TYPE_UINT9, 16, {512, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 512}, 9, {0x0A00, 0, 0, 0, 0, 0, 0, 0, 0}, 1,
     {0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0}},
    /* uint12: a0 = 4096 sets bit 12 of w0, which is a3[8]: a3 reads back 256 */
    {SDNQ_TYPE_UINT12, 4, {4096, 0, 0, 0}, 3, {0x1000, 0, 0}, 1, {0, 0, 0, 256}},
    /* uint15: a0 = 32768 sets bit 15 of w0 = a15[14] */
    {SDNQ_TYPE_UINT15, 16, {32768, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 15, {0x8000}, 1,
     {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16384}},
};

static void test_packing(void) {
    for (size_t c = 0; c < COUNT(pack_cases); c++) {
        const pack_case *pc = &pack_cases[c];
        const size_t wsize = dsize(T(pc->type)->storage), bytes = (size_t)pc->nw * wsize, cb = (size_t)pc->n * 4;
        uint8_t *want = talloc(bytes), *dst = talloc(bytes);
        int32_t *codes = tdup(pc->codes, cb), *back = talloc(cb);
        CTX("pack case %zu (%s)", c, T(pc->type)->name);
        for (int k = 0; k < pc->nw; k++) memcpy(want + k * wsize, &pc->words[k], wsize); /* little-endian host */
        const int32_t ty = pc->type, n = pc->n;
        const int64_t nb = (int64_t)bytes;
        for (int v = 0; v < 2; v++) { /* reference, then fast */
            memset(dst, 0xEE, bytes), memset(back, 0xEE, cb);
            CHECK_ST(v ? sdnq_pack(ty, codes, n, dst, nb, 2) : sdnq_pack_ref(ty, codes, n, dst, nb), OK);
            CHECK_MEM(dst, want, bytes);
            CHECK_ST(v ? sdnq_unpack(ty, want, nb, n, back, 2) : sdnq_unpack_ref(ty, want, nb, n, back), OK);
            CHECK_MEM(back, pc->spills ? pc->back : pc->codes, cb);
        }
        tfree_all();
    }
}

/* ======================================================================== */
/* code values and custom float codes                                       */

typedef struct { int32_t type, code; float value; } code_value;

static void test_floatx(void) {
    /* float4_e2m1fn (bias 1, min normal 1): 0, 0.5 subnormal, then 2^(E-1) * (1 + M/2) */
    static const float e2m1[16] = {0.0f, 0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                   0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
    const int32_t codes[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    float out[16];
    CHECK_ST(sdnq_decode_ref(SDNQ_TYPE_FLOAT4_E2M1FN, codes, 16, out), SDNQ_OK);
    for (int k = 0; k < 16; k++) CHECK_F32(out[k], e2m1[k]); /* code 8 (-0) must give +0.0f */
    CHECK(!signbit(out[0]) && !signbit(out[8]));

    enum { E2M1 = SDNQ_TYPE_FLOAT4_E2M1FN, E2M2 = SDNQ_TYPE_FLOAT5_E2M2FN, E3M2 = SDNQ_TYPE_FLOAT6_E3M2FN,
           E4M3 = SDNQ_TYPE_FLOAT8_E4M3FN_SDNQ, U2M2 = SDNQ_TYPE_FLOAT4_E2M2FNU, E1M2 = SDNQ_TYPE_FLOAT4_E1M2FN };
    static const code_value dec[] = {
        /* signed integers store q - min: decoding adds min back */
        {SDNQ_TYPE_INT2, 0, -2.0f}, {SDNQ_TYPE_INT2, 3, 1.0f}, {SDNQ_TYPE_INT4, 0, -8.0f}, {SDNQ_TYPE_INT4, 8, 0.0f},
        {SDNQ_TYPE_INT4, 15, 7.0f}, {SDNQ_TYPE_INT5, 31, 15.0f}, {SDNQ_TYPE_INT15, 0, -16384.0f},
        {SDNQ_TYPE_INT15, 32767, 16383.0f}, {SDNQ_TYPE_UINT4, 15, 15.0f}, {SDNQ_TYPE_UINT9, 511, 511.0f},
        {SDNQ_TYPE_UINT1, 1, 1.0f},
        /* float5_e2m2fn: bias 1, subnormal M/4; float6_e3m2fn: bias 3, min normal 1/4, subnormal M/16 */
        {E2M2, 1, 0.25f}, {E2M2, 3, 0.75f}, {E2M2, 4, 1.0f}, {E2M2, 15, 7.0f}, {E2M2, 19, -0.75f},
        {E2M2, 31, -7.0f}, {E2M2, 16, 0.0f}, {E3M2, 1, 0.0625f}, {E3M2, 12, 1.0f}, {E3M2, 31, 28.0f},
        {E3M2, 38, -0.375f},
        /* float8_e4m3fn_sdnq: bias 7, all-ones exponent is normal: 0x7F = 256 * 1.875 */
        {E4M3, 0x7F, 480.0f}, {E4M3, 0x01, 0.001953125f}, {E4M3, 0x38, 1.0f}, {E4M3, 0xFF, -480.0f},
        {E4M3, 0x80, 0.0f},
        /* unsigned: float4_e2m2fnu (bias 1), float2_e1m1fnu / float1_e1m0fnu (bias 0, min normal 2) */
        {U2M2, 1, 0.25f}, {U2M2, 4, 1.0f}, {U2M2, 10, 3.0f}, {U2M2, 15, 7.0f}, {SDNQ_TYPE_FLOAT2_E1M1FNU, 1, 1.0f},
        {SDNQ_TYPE_FLOAT2_E1M1FNU, 3, 3.0f}, {SDNQ_TYPE_FLOAT1_E1M0FNU, 1, 2.0f}, {E1M2, 5, 2.5f}, {E1M2, 1, 0.5f},
        {SDNQ_TYPE_FLOAT16_E5M10FN, 0x3C00, 1.0f},
    };
    for (size_t k = 0; k < COUNT(dec); k++) {
        float v;
        CTX("decode %s 0x%x", T(dec[k].type)->name, dec[k].code);
        CHECK_ST(sdnq_decode_ref(dec[k].type, &dec[k].code, 1, &v), SDNQ_OK);
        CHECK_F32(v, dec[k].value);
    }
    /* Encoder: rounds up only when the top 4 discarded bits exceed 0b1000, so ties go DOWN where
     * RNE would go up (1.75, 1.375, 1.1875); 1.76 = 1.11 + 0.01 has top4 = 1000: down; 1.79: up.
     * Subnormals: t = |x| * 2^m / min_normal rounded half to even: e2m1 0.25 (t 0.5) -> 0,
     * 0.75 (t 1.5) -> 2 = min normal; e3m2 0.09375 (t 1.5) -> 2, 0.15625 (2.5) -> 2, 0.21875 (3.5) -> 4 */
    static const code_value enc[] = {
        {E2M1, 2, 1.25f}, {E2M1, 3, 1.75f}, {E2M1, 3, 1.76f}, {E2M1, 4, 1.79f}, {E2M1, 12, -1.79f},
        {E2M1, 11, -1.75f}, {E2M1, 0, 0.25f}, {E2M1, 2, 0.75f}, {E2M1, 1, 0.3f}, {E2M1, 8, -0.25f},
        {E2M1, 7, 6.0f}, {E2M1, 8, -0.0f}, {E3M2, 2, 0.09375f}, {E3M2, 2, 0.15625f}, {E3M2, 4, 0.21875f},
        {E3M2, 12, 1.125f}, {E3M2, 13, 1.375f}, {E3M2, 38, -0.375f}, {E3M2, 31, 28.0f}, {E4M3, 0x38, 1.0625f},
        {E4M3, 0x39, 1.1875f}, {E4M3, 0x02, 0.0029296875f}, {E4M3, 0x7F, 480.0f}, {U2M2, 5, 1.375f},
        {U2M2, 11, 3.5f}, {E1M2, 5, 2.5f}, {SDNQ_TYPE_FLOAT1_E1M0FNU, 1, 2.0f},
    };
    for (size_t k = 0; k < COUNT(enc); k++) {
        int32_t c = -1;
        CTX("encode %s %a", T(enc[k].type)->name, enc[k].value);
        CHECK_ST(sdnq_encode_ref(enc[k].type, &enc[k].value, 1, &c), SDNQ_OK);
        CHECK_EQ(c, enc[k].code);
    }
}

/* ======================================================================== */
/* division by a row-quantization scale                                      */

/* sdnq_row_div (the CUDA row quantizer's x / s) against the division, on every finite bf16 and
 * fp16 x up to the row's amax, for 2 x 200 amax values (powers of two, the formats' largest and
 * random mantissas over their exponent ranges) and both qmax (127, 448): the quotient's bits where
 * |x / s| >= 2^-11 or x is +-0, the int8 and e4m3 codes everywhere. */
static void test_row_division(void) {
    uint32_t lcg = 12345u;
    for (int fmt = 0; fmt < 2; fmt++) {
        long mismatched = 0, code_diff = 0, quick_rows = 0;
        const uint32_t maxpat = fmt == 0 ? 0x7F7Fu : 0x7BFFu; /* largest finite positive pattern */
        for (int a = 0; a < 200; a++) {
            uint32_t pat;
            if (a == 0) pat = maxpat;
            else if (a < 20) pat = fmt == 0 ? (uint32_t)(127 - 60 + 6 * a) << 7 : (uint32_t)(a + 5) << 10; /* 2^k */
            else {
                lcg = lcg * 1664525u + 1013904223u;
                pat = (lcg >> 8) % (maxpat + 1);
            }
            const float amax = fmt == 0 ? sdnq_bf16_to_f32((uint16_t)pat) : sdnq_f16_to_f32((uint16_t)pat);
            for (int qi = 0; qi < 2; qi++) {
                const float s = amax / (qi ? 448.0f : 127.0f);
                if (!sdnq_row_div_quick(s)) continue;
                quick_rows++;
                const float r = 1.0f / s;
                for (uint32_t h = 0; h <= 0xFFFFu; h++) {
                    const float x = fmt == 0 ? sdnq_bf16_to_f32((uint16_t)h) : sdnq_f16_to_f32((uint16_t)h);
                    if (!(fabsf(x) <= amax)) continue; /* NaN, inf, beyond the row's amax */
                    const float q = sdnq_row_div(x, s, r), want = x / s;
                    if ((fabsf(want) >= 0x1p-11f || want == 0.0f) && fbits(q) != fbits(want) && mismatched++ == 0)
                        fprintf(stderr, "row_div %a / %a: %a, want %a\n", x, s, q, want);
                    const float qc = fminf(fmaxf(q, -448.0f), 448.0f), wc = fminf(fmaxf(want, -448.0f), 448.0f);
                    if (rintf(fminf(fmaxf(q, -128.0f), 127.0f)) != rintf(fminf(fmaxf(want, -128.0f), 127.0f)) ||
                        sdnq_f32_to_fp8(qc, SDNQ_DT_F8_E4M3FN) != sdnq_f32_to_fp8(wc, SDNQ_DT_F8_E4M3FN))
                        code_diff++;
                }
            }
        }
        CTX("row division, %s x", fmt == 0 ? "bf16" : "fp16");
        CHECK(quick_rows >= 300); /* the quick form covers all but bf16's tiny scales (amax < 2^-83) */
        CHECK_EQ(mismatched, 0);
        CHECK_EQ(code_diff, 0);
    }
    /* outside [2^-90, 2^120] the kernels divide: tiny rows, infinite amax */
    CHECK(!sdnq_row_div_quick(1e-30f) && !sdnq_row_div_quick(INFINITY) && !sdnq_row_div_quick(0.0f));
    CHECK(!sdnq_row_div_quick(NAN) && sdnq_row_div_quick(1.0f / 127.0f));
}

/* ======================================================================== */
/* fp32 -> bf16 / fp16 / fp8                                                 */

static void test_convert(void) {
    /* per destination dtype: fp32 input bits -> expected bits */
    static const struct { int32_t dt; int n; uint32_t x[16], want[16]; } cv[] = {
        /* bf16: 1; ties to even (down, up); above a tie; NaN of either sign -> 0x7FC0 (c10 scalar rule);
         * inf; -2; FLT_MAX overflows to inf; a subnormal */
        {SDNQ_DT_BF16, 10, {0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x7FC00000, 0xFFC00001, 0x7F800000,
                            0xC0000000, 0x7F7FFFFF, 0x00010000},
         {0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x7FC0, 0x7FC0, 0x7F80, 0xC000, 0x7F80, 0x0001}},
        /* fp16: 1; 65504; 65520 (tie) -> inf; just below; 2^-24; 2^-25 (tie -> 0); 1.5*2^-25; 1.5*2^-24
         * (tie -> 2); -0; NaN keeps its sign; 1 + 2^-11 (tie -> 1); 1 + 3*2^-11 (tie -> up); -inf */
        {SDNQ_DT_F16, 14, {0x3F800000, 0x477FE000, 0x477FF000, 0x477FEFFF, 0x33800000, 0x33000000, 0x33400000,
                           0x33C00000, 0x80000000, 0x7FC00000, 0xFFC00000, 0x3F801000, 0x3F803000, 0xFF800000},
         {0x3C00, 0x7BFF, 0x7C00, 0x7BFF, 0x0001, 0x0000, 0x0001, 0x0002, 0x8000, 0x7E00, 0xFE00, 0x3C00, 0x3C02,
          0xFC00}},
        /* e4m3fn: 1; 448; 464 (tie 448/480) -> 448; 479 rounds to 480 = the NaN code; 480; -1000; inf; NaN;
         * 2^-9; 2^-10 (tie -> 0); 1.5*2^-9 (tie -> 2); -1; -0 */
        {SDNQ_DT_F8_E4M3FN, 13, {0x3F800000, 0x43E00000, 0x43E80000, 0x43EF8000, 0x43F00000, 0xC47A0000, 0x7F800000,
                                 0x7FC00000, 0x3B000000, 0x3A800000, 0x3B400000, 0xBF800000, 0x80000000},
         {0x38, 0x7E, 0x7E, 0x7F, 0x7F, 0xFF, 0x7F, 0x7F, 0x01, 0x00, 0x02, 0xB8, 0x80}},
        /* e5m2: 1; 57344; 61440 (tie) -> inf; 1e6 -> inf; -inf; NaN; 2^-16; 2^-17 (tie); 1.125, 1.375 (ties) */
        {SDNQ_DT_F8_E5M2, 10, {0x3F800000, 0x47600000, 0x47700000, 0x49742400, 0xFF800000, 0x7FC00000, 0x37800000,
                               0x37000000, 0x3F900000, 0x3FB00000},
         {0x3C, 0x7B, 0x7C, 0x7C, 0xFC, 0x7F, 0x01, 0x00, 0x3C, 0x3E}},
        /* e4m3fnuz (bias 8, no -0, NaN/overflow -> 0x80): 1; NaN; -0; 240; 300; 248 rounds past 240; -1;
         * 2^-10; 2^-11 (tie); 1.5*2^-10 (tie); inf */
        {SDNQ_DT_F8_E4M3FNUZ, 11, {0x3F800000, 0x7FC00000, 0x80000000, 0x43700000, 0x43960000, 0x43780000,
                                   0xBF800000, 0x3A800000, 0x3A000000, 0x3AC00000, 0x7F800000},
         {0x40, 0x80, 0x00, 0x7F, 0x80, 0x80, 0xC0, 0x01, 0x00, 0x02, 0x80}},
        /* e5m2fnuz (bias 16): 1; 57344; 2^-17; 2^-18 (tie); NaN; 61440 overflows */
        {SDNQ_DT_F8_E5M2FNUZ, 6, {0x3F800000, 0x47600000, 0x37000000, 0x36800000, 0x7FC00000, 0x47700000},
         {0x40, 0x7F, 0x01, 0x00, 0x80, 0x80}},
        /* e8m0fnu (exponent only, sign dropped): 1; 2; 3 -> 4; 0.75 -> 1; -2; NaN; inf; 2.9 -> 2; a subnormal; 0 */
        {SDNQ_DT_F8_E8M0FNU, 10, {0x3F800000, 0x40000000, 0x40400000, 0x3F400000, 0xC0000000, 0x7FC00000,
                                  0x7F800000, 0x4039999A, 0x00400000, 0x00000000},
         {0x7F, 0x80, 0x81, 0x7F, 0x80, 0xFF, 0xFF, 0x80, 0x00, 0x00}},
    };
    for (size_t k = 0; k < COUNT(cv); k++)
        for (int e = 0; e < cv[k].n; e++) {
            float x = ffrom(cv[k].x[e]);
            const size_t sz = dsize(cv[k].dt);
            uint8_t *dst = talloc(sz);
            uint32_t got = 0;
            CTX("convert 0x%08x to %s", (unsigned)cv[k].x[e], sdnq_dtype_name(cv[k].dt));
            CHECK_ST(sdnq_convert_ref(&x, 1, dst, cv[k].dt), SDNQ_OK);
            memcpy(&got, dst, sz); /* little-endian host */
            CHECK_EQ(got, cv[k].want[e]);
            tfree_all();
        }
}

/* ======================================================================== */
/* dequantization, hand examples                                             */

/* a descriptor with contiguous scale [outer, inner] and output [outer, red, inner] */
static sdnq_dequant_desc dq(int32_t type, int64_t outer, int64_t red, int64_t inner, const void *codes,
                            size_t cbytes, const void *scale, int32_t sdt, int64_t snumel, int32_t odt) {
    sdnq_dequant_desc d = {0};
    d.type = type, d.outer = outer, d.red = red, d.inner = inner;
    d.codes = tdup(codes, cbytes), d.codes_bytes = (int64_t)cbytes;
    d.scale = tdup(scale, (size_t)snumel * dsize(sdt)), d.scale_dtype = sdt, d.scale_numel = snumel;
    d.scale_stride[0] = inner, d.scale_stride[1] = 1;
    d.out_numel = outer * red * inner, d.out_dtype = odt, d.out = talloc((size_t)d.out_numel * dsize(odt));
    d.out_stride[0] = red * inner, d.out_stride[1] = inner, d.out_stride[2] = 1;
    return d;
}

static sdnq_dequant_desc with_zp(sdnq_dequant_desc d, const void *zp, int64_t n) {
    d.zero_point = tdup(zp, (size_t)n * dsize(d.scale_dtype));
    d.zp_numel = n, d.zp_stride[0] = d.scale_stride[0], d.zp_stride[1] = d.scale_stride[1];
    return d;
}

/* reference, fast with one thread and fast with three must all give `want` */
static void check_dequant(sdnq_dequant_desc d, const void *want) {
    const size_t bytes = (size_t)d.out_numel * dsize(d.out_dtype);
    for (int v = 0; v < 3; v++) {
        memset(d.out, 0xCD, bytes);
        CHECK_ST(v == 0 ? sdnq_dequantize_ref(&d) : sdnq_dequantize(&d, v == 1 ? 1 : 3), SDNQ_OK);
        CHECK_MEM(d.out, want, bytes);
    }
}

static void test_dequant_hand(void) {
    const int32_t F = SDNQ_DT_F32, B = SDNQ_DT_BF16;
    { /* int4 symmetric, f32 scale: q = code - 8; row0 q {-8,-1,0,7} * 0.5, row1 q {1,2,3,-3} * 0.25 */
        const uint8_t codes[4] = {0x70, 0xF8, 0xA9, 0x5B};
        const float scale[2] = {0.5f, 0.25f}, want[8] = {-4, -0.5f, 0, 3.5f, 0.25f, 0.5f, 0.75f, -0.75f};
        check_dequant(dq(SDNQ_TYPE_INT4, 2, 4, 1, codes, 4, scale, F, 2, F), want);
        /* tensor-wise: one scale, strides {0,0}; int4 codes {8,9,7,0} -> q {0,1,-1,-8} * 0.5 */
        const uint8_t tcodes[2] = {0x98, 0x07};
        const float tscale[1] = {0.5f}, twant[4] = {0, 0.5f, -0.5f, -4};
        sdnq_dequant_desc d = dq(SDNQ_TYPE_INT4, 2, 2, 1, tcodes, 2, tscale, F, 1, F);
        d.scale_stride[0] = d.scale_stride[1] = 0;
        check_dequant(d, twant);
    }
    { /* uint4 asymmetric, bf16 scale 1.0078125 (0x3F81) and zero-point -1: bf16(q*s + zp)
       * q=1: 2^-7 (0x3C00); q=5: 4.0390625 -> 4.03125 (0x4081); q=15: 14.1171875 -> 14.125 (0x4162);
       * with fp32 output the same values (rounded in the bf16 scale dtype first) */
        const uint8_t codes[2] = {0x10, 0xF5};
        const uint16_t scale[1] = {0x3F81}, zp[1] = {0xBF80}, want[4] = {0xBF80, 0x3C00, 0x4081, 0x4162};
        const float want32[4] = {-1.0f, 0.0078125f, 4.03125f, 14.125f};
        check_dequant(with_zp(dq(SDNQ_TYPE_UINT4, 1, 4, 1, codes, 2, scale, B, 1, B), zp, 1), want);
        check_dequant(with_zp(dq(SDNQ_TYPE_UINT4, 1, 4, 1, codes, 2, scale, B, 1, F), zp, 1), want32);
    }
    { /* uint4 asymmetric with f32 scale is one fmaf: s = 0x3EAAAAAB = (2^25+1)/3 * 2^-25,
       * fmaf(3, s, -1) = 2^-25 exactly, where 3*s rounded first would give 0 */
        const uint8_t codes[1] = {0x03};
        const float scale[1] = {ffrom(0x3EAAAAAB)}, zp[1] = {-1.0f}, want[2] = {0x1p-25f, -1.0f};
        check_dequant(with_zp(dq(SDNQ_TYPE_UINT4, 1, 2, 1, codes, 1, scale, F, 1, F), zp, 1), want);
        /* conv-like, inner = 2 with a scale and zero-point per (o, i): uint2 codes {1,2,3,0} = 0x39
         * (0,0): 1*1+0.5, (0,1): 2*10-5, (1,0): 3*1+0.5, (1,1): 0*10-5 */
        const uint8_t c2[1] = {0x39};
        const float s2[2] = {1, 10}, z2[2] = {0.5f, -5}, want2[4] = {1.5f, 15, 3.5f, -5};
        check_dequant(with_zp(dq(SDNQ_TYPE_UINT2, 1, 2, 2, c2, 1, s2, F, 2, F), z2, 2), want2);
    }
    { /* grouped Linear [out=2, G=2, g=2] -> [4, 2, 1], native int8, one scale per group */
        const int8_t codes[8] = {1, -2, 3, -4, 5, -6, 7, -8};
        const float scale[4] = {1, 0.5f, 0.25f, 2}, want[8] = {1, -2, 1.5f, -2, 1.25f, -1.5f, 14, -16};
        check_dequant(dq(SDNQ_TYPE_INT8, 4, 2, 1, codes, 8, scale, F, 4, F), want);
    }
    { /* transposed storage: codes [red=3, inner=2] with a scale per column i (stride {0,1});
       * out_stride {0, 1, red} writes (j, i) at j + 3i, i.e. the [inner, red] matrix */
        const int8_t codes[6] = {1, 2, 3, 4, 5, 6};
        const float scale[2] = {1, 10}, want[6] = {1, 3, 5, 20, 40, 60};
        sdnq_dequant_desc d = dq(SDNQ_TYPE_INT8, 1, 3, 2, codes, 6, scale, F, 2, F);
        d.scale_stride[0] = 0, d.scale_stride[1] = 1;
        d.out_stride[0] = 0, d.out_stride[1] = 1, d.out_stride[2] = 3;
        check_dequant(d, want);
    }
    { /* codebook: uint2 codes index 4 levels per row; levels [outer, 4] -> strides {4, 0, 1}
       * row0 codes {3,2,1,0} = 0x1B, row1 {0,0,3,1} = 0x70 */
        const uint8_t codes[2] = {0x1B, 0x70};
        const float levels[8] = {-1, 0, 0.5f, 2, 10, 20, 30, 40}, want[8] = {2, 0.5f, 0, -1, 10, 10, 40, 20};
        sdnq_dequant_desc d = dq(SDNQ_TYPE_UINT2, 2, 4, 1, codes, 2, levels, F, 8, F);
        d.codebook = 1, d.scale_stride[0] = 4, d.scale_stride[1] = 0, d.scale_stride[2] = 1;
        check_dequant(d, want);
        /* uint9 codebooks have max+1 = 513 levels (sdnq's arange(max + 1)); 512 are too few.
         * "code >= levels -> SDNQ_ERR_RANGE" cannot be reached: unpacked codes are < 2^bits <= levels. */
        const int16_t c9[9] = {0};
        const float zeros[16] = {0};
        float *lv = talloc(513 * 4);
        for (int k = 0; k < 513; k++) lv[k] = (float)k;
        sdnq_dequant_desc e = dq(SDNQ_TYPE_UINT9, 1, 16, 1, c9, sizeof c9, lv, F, 513, F);
        e.codebook = 1, e.scale_stride[0] = e.scale_stride[1] = 0, e.scale_stride[2] = 1;
        check_dequant(e, zeros);
        e.scale_numel = 512;
        CHECK_ST(sdnq_dequantize_ref(&e), SDNQ_ERR_RANGE), CHECK_ST(sdnq_dequantize(&e, 1), SDNQ_ERR_RANGE);
    }
    { /* conv row-wise [out=2, in=2, k=3]: one scale per output channel (stride {1, 0}) */
        const int8_t codes[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
        const float scale[2] = {1, -0.5f}, want[12] = {1, 2, 3, 4, 5, 6, -3.5f, -4, -4.5f, -5, -5.5f, -6};
        sdnq_dequant_desc d = dq(SDNQ_TYPE_INT8, 2, 2, 3, codes, 12, scale, F, 2, F);
        d.scale_stride[0] = 1, d.scale_stride[1] = 0;
        check_dequant(d, want);
    }
    tfree_all();
}

/* ======================================================================== */
/* quantization, hand examples                                               */

static sdnq_quant_desc qd(int32_t type, int64_t outer, int64_t red, int64_t inner, int tensorwise, const float *w,
                          int32_t sdt) {
    sdnq_quant_desc d = {0};
    const int64_t n = outer * red * inner, g = tensorwise ? 1 : outer * inner;
    d.type = type, d.outer = outer, d.red = red, d.inner = inner, d.tensorwise = tensorwise;
    d.w = tdup(w, (size_t)n * 4), d.w_numel = n;
    d.scale_dtype = sdt, d.scale = talloc((size_t)g * dsize(sdt)), d.scale_numel = g;
    if (T(type)->is_unsigned) d.zero_point = talloc((size_t)g * dsize(sdt));
    d.codes = talloc((size_t)n * 4), d.codes_numel = n;
    return d;
}

static void check_quant(sdnq_quant_desc d, const int32_t *codes, const void *scale, const void *zp) {
    const size_t n = (size_t)d.codes_numel, sb = (size_t)d.scale_numel * dsize(d.scale_dtype);
    for (int v = 0; v < 3; v++) {
        memset(d.codes, 0x5A, n * 4);
        memset(d.scale, 0x5A, sb);
        if (d.zero_point) memset(d.zero_point, 0x5A, sb);
        CHECK_ST(v == 0 ? sdnq_quantize_ref(&d) : sdnq_quantize(&d, v == 1 ? 1 : 3), SDNQ_OK);
        CHECK_MEM(d.codes, codes, n * 4);
        CHECK_MEM(d.scale, scale, sb);
        if (zp) CHECK_MEM(d.zero_point, zp, sb);
    }
}

static void test_quant_hand(void) {
    const int32_t F = SDNQ_DT_F32;
    { /* int8 symmetric: amax 127 -> scale 1; round half to even: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2 */
        const float w[8] = {2.5f, 3.5f, -127, -2.5f, 0.5f, 1.5f, 126.6f, -0.49f}, s[1] = {1};
        const int32_t c[8] = {2, 4, -127, -2, 0, 2, 127, 0};
        check_quant(qd(SDNQ_TYPE_INT8, 1, 8, 1, 0, w, F), c, s, NULL);
    }
    { /* bf16 scale: 1/127 rounds to 0x3C01 = 0.00787353515625 before dividing: 0.5/s = 63.50 -> 64 */
        const float w[2] = {1, 0.5f};
        const uint16_t s[1] = {0x3C01};
        const int32_t c[2] = {127, 64};
        check_quant(qd(SDNQ_TYPE_INT8, 1, 2, 1, 0, w, SDNQ_DT_BF16), c, s, NULL);
    }
    { /* uint4 asymmetric: zp = min = -1, scale = (14 - -1)/15 = 1; (w+1) = {0, 1.5, 2.5, 15} */
        const float w[4] = {-1, 0.5f, 1.5f, 14}, s[1] = {1}, z[1] = {-1};
        const int32_t c[4] = {0, 2, 2, 15};
        check_quant(qd(SDNQ_TYPE_UINT4, 1, 4, 1, 0, w, F), c, s, z);
    }
    { /* all-zero group: scale 0, 0/0 = NaN, NaN -> int 0, stored 0 - min = 8; row 1: {7, -3.5->-4} + 8 */
        const float w[4] = {0, 0, 7, -3.5f}, s[2] = {0, 1};
        const int32_t c[4] = {8, 8, 15, 4};
        check_quant(qd(SDNQ_TYPE_INT4, 2, 2, 1, 0, w, F), c, s, NULL);
        /* constant uint4 group: scale 0, zp 3, (3-3)/0 = NaN -> code 0 */
        const float w3[2] = {3, 3}, s0[1] = {0}, z3[1] = {3};
        const int32_t c0[2] = {0, 0};
        check_quant(qd(SDNQ_TYPE_UINT4, 1, 2, 1, 0, w3, F), c0, s0, z3);
    }
    { /* tensor-wise int8: one group over all 4 values, amax 127 -> scale 1, 63.5 -> 64 */
        const float w[4] = {1, -2, 63.5f, 127}, s[1] = {1};
        const int32_t c[4] = {1, -2, 64, 127};
        check_quant(qd(SDNQ_TYPE_INT8, 2, 2, 1, 1, w, F), c, s, NULL);
        /* inner > 1: groups are (o, i) columns; column 0 amax 127, column 1 amax 254 -> scale 2;
         * -63.5 -> -64 (even), 5/2 = 2.5 -> 2 */
        const float w2[4] = {127, 254, -63.5f, 5}, s2[2] = {1, 2};
        const int32_t c2[4] = {127, 127, -64, 2};
        check_quant(qd(SDNQ_TYPE_INT8, 1, 2, 2, 0, w2, F), c2, s2, NULL);
    }
    { /* float4_e2m1fn: scale 6/6 = 1, codes via the custom encoder (1.75 ties down to 1.5);
       * native float8_e4m3fn: scale 448/448 = 1, codes are the fp8 bits */
        const float w[4] = {6, -3, 1.75f, 0.25f}, w8[3] = {448, -1, 0.5f}, s[1] = {1};
        const int32_t c[4] = {7, 13, 3, 0}, c8[3] = {0x7E, 0xB8, 0x30};
        check_quant(qd(SDNQ_TYPE_FLOAT4_E2M1FN, 1, 4, 1, 0, w, F), c, s, NULL);
        check_quant(qd(SDNQ_TYPE_FLOAT8_E4M3FN, 1, 3, 1, 0, w8, F), c8, s, NULL);
    }
    { /* uint9 quirk: max 512, so the group maximum quantizes to code 512 (spills when packed) */
        const float w[2] = {0, 512}, s[1] = {1}, z[1] = {0};
        const int32_t c[2] = {0, 512};
        check_quant(qd(SDNQ_TYPE_UINT9, 1, 2, 1, 0, w, F), c, s, z);
    }
    tfree_all();
}

/* ======================================================================== */
/* SVD correction and Hadamard, hand examples                                */

static sdnq_svd_desc svd(void *w, int32_t wdt, int64_t rows, int64_t cols, int64_t rank, const void *up, int32_t udt,
                         const void *down, int32_t ddt) {
    sdnq_svd_desc d = {0};
    d.w = w, d.w_dtype = wdt, d.rows = rows, d.cols = cols, d.w_numel = rows * cols, d.rank = rank;
    d.up = up, d.up_dtype = udt, d.up_numel = rows * rank, d.up_stride[0] = rank, d.up_stride[1] = 1;
    d.down = down, d.down_dtype = ddt, d.down_numel = rank * cols, d.down_stride[0] = cols, d.down_stride[1] = 1;
    return d;
}

static void test_linalg_hand(void) {
    const int32_t F = SDNQ_DT_F32;
    /* W [2,2] + up [2,1] @ down [1,2]: up {0.5, -1}, down {3, 0.25} -> {1.5, 0.125, -3, -0.25} */
    const float w0[4] = {1, 2, 3, 4}, up[2] = {0.5f, -1}, down[2] = {3, 0.25f}, want[4] = {2.5f, 2.125f, 0, 3.75f};
    /* bf16 weight, rank 2, up stored transposed (up[r,k] at r + 2k): up = [[1, 0.5], [2, 0]],
     * down = [[1, 2], [1, -4]] -> up @ down = [[1.5, 0], [2, 4]];
     * 256 + 1.5 = 257.5 rounds to 258 in bf16 (ulp 2 there): 0x4380 -> 0x4381 */
    const uint16_t wb[4] = {0x4380, 0x3F80, 0, 0}, want_b[4] = {0x4381, 0x3F80, 0x4000, 0x4080};
    const float upt[4] = {1, 2, 0.5f, 0}, dn[4] = {1, 2, 1, -4};
    for (int v = 0; v < 2; v++) {
        float *w = tdup(w0, 16);
        sdnq_svd_desc d = svd(w, F, 2, 2, 1, tdup(up, 8), F, tdup(down, 8), F);
        CHECK_ST(v ? sdnq_svd_add(&d, 2) : sdnq_svd_add_ref(&d), SDNQ_OK);
        CHECK_MEM(w, want, 16);
        uint16_t *w16 = tdup(wb, 8);
        d = svd(w16, SDNQ_DT_BF16, 2, 2, 2, tdup(upt, 16), F, tdup(dn, 16), F);
        d.up_stride[0] = 1, d.up_stride[1] = 2;
        CHECK_ST(v ? sdnq_svd_add(&d, 2) : sdnq_svd_add_ref(&d), SDNQ_OK);
        CHECK_MEM(w16, want_b, 8);
    }
    /* Hadamard h = 4: Sylvester sign(i,j) = (-1)^popcount(i&j); H4-kron (AUTO) is -1 on the
     * anti-diagonal. 1/sqrt(4) = 0.5, so x @ H is exact:
     * {2,4,6,10} Sylvester -> {11,-3,-5,1}, AUTO -> {1,5,7,9}; {1,0,0,0} -> first row of H */
    const float x[8] = {2, 4, 6, 10, 1, 0, 0, 0};
    const float syl[8] = {11, -3, -5, 1, 0.5f, 0.5f, 0.5f, 0.5f}, h4[8] = {1, 5, 7, 9, 0.5f, 0.5f, 0.5f, -0.5f};
    for (int v = 0; v < 4; v++) {
        float *w = tdup(x, 32);
        const int32_t kind = v & 1 ? SDNQ_HADAMARD_AUTO : SDNQ_HADAMARD_SYLVESTER;
        CHECK_ST(v < 2 ? sdnq_hadamard_ref(w, F, 2, 4, 8, 4, kind) : sdnq_hadamard(w, F, 2, 4, 8, 4, kind, 2), SDNQ_OK);
        CHECK_MEM(w, kind ? h4 : syl, 32);
    }
    /* h = 2 (AUTO falls back to Sylvester): {1,3} -> {4, -2}/sqrt(2) within fp32 rounding */
    for (int v = 0; v < 2; v++) {
        float w[2] = {1, 3};
        CHECK_ST(v ? sdnq_hadamard(w, F, 1, 2, 2, 2, 1, 1) : sdnq_hadamard_ref(w, F, 1, 2, 2, 2, 1), SDNQ_OK);
        CHECK(fabsf(w[0] - 2.8284271f) < 1e-6f && fabsf(w[1] + 1.4142135f) < 1e-6f);
    }
    enum { S = SDNQ_HADAMARD_SYLVESTER, A = SDNQ_HADAMARD_AUTO, F32 = SDNQ_DT_F32, B16 = SDNQ_DT_BF16 };
    static const struct { int64_t h; int32_t kind, dt; int64_t i, j; float v; } ent[] = {
        {4, A, F32, 0, 0, 0.5f}, {4, A, F32, 0, 3, -0.5f}, {4, A, F32, 1, 2, -0.5f}, {4, A, F32, 1, 1, 0.5f},
        {4, S, F32, 1, 1, -0.5f}, {4, S, F32, 0, 3, 0.5f}, {4, S, F32, 3, 3, 0.5f},
        {16, A, F32, 5, 10, 0.25f}, /* base-4 digits (1,1) x (2,2): two -1 */
        {16, A, F32, 3, 0, -0.25f}, {8, A, F32, 7, 7, -0.35355339f}, /* 8 is not a power of 4 */
        {2, S, B16, 0, 0, 0.70703125f}, {2, S, F32, 1, 1, -0.70710677f}}; /* bf16(1/sqrt 2) = 0x3F35 */
    for (size_t k = 0; k < COUNT(ent); k++) {
        float v = 0;
        CTX("hadamard_entry h=%lld (%lld,%lld)", (long long)ent[k].h, (long long)ent[k].i, (long long)ent[k].j);
        CHECK_ST(sdnq_hadamard_entry(ent[k].h, ent[k].kind, ent[k].dt, ent[k].i, ent[k].j, &v), SDNQ_OK);
        CHECK_F32(v, ent[k].v);
    }
    tfree_all();
}

/* ======================================================================== */
/* error paths of every entry point                                          */


/* 0 pack_ref, 1 pack, 2 unpack_ref, 3 unpack */
static sdnq_status packer(int f, int32_t type, int32_t *codes, int64_t n, void *words, int64_t bytes) {
    switch (f) {
    case 0: return sdnq_pack_ref(type, codes, n, words, bytes);
    case 1: return sdnq_pack(type, codes, n, words, bytes, 2);
    case 2: return sdnq_unpack_ref(type, words, bytes, n, codes);
    default: return sdnq_unpack(type, words, bytes, n, codes, 2);
    }
}

static void test_errors_codes(void) {
    const int32_t U4 = SDNQ_TYPE_UINT4, U9 = SDNQ_TYPE_UINT9, E2M1 = SDNQ_TYPE_FLOAT4_E2M1FN, BF = SDNQ_DT_BF16;
    for (int f = 0; f < 4; f++) {
        int32_t *c = memset(talloc(64), 0, 64);
        uint8_t *w4 = memset(talloc(2), 0, 2), *w9 = memset(talloc(18), 0, 18); /* exact sizes */
        CTX("packer %d", f);
        CHECK_ST(packer(f, U4, c, 4, w4, 2), OK), CHECK_ST(packer(f, U9, c, 16, w9, 18), OK);
        CHECK_ST(packer(f, U4, NULL, 0, NULL, 0), OK);
        CHECK_ST(packer(f, U4, c, 4, w4, 1), RNG), CHECK_ST(packer(f, U9, c, 16, w9, 17), RNG); /* 1 byte short */
        CHECK_ST(packer(f, U4, c, INT64_MAX - 1, w4, 2), RNG);
        CHECK_ST(packer(f, U4, NULL, 4, w4, 2), NUL), CHECK_ST(packer(f, U4, c, 4, NULL, 2), NUL);
        for (int k = 0; k < 3; k++) CHECK_ST(packer(f, bad_ids[k], c, 4, w4, 2), TYP);
        CHECK_ST(packer(f, SDNQ_TYPE_INT8, c, 2, w4, 2), TYP); /* not a packed type */
        CHECK_ST(packer(f, U4, c, -2, w4, 2), SIZ), CHECK_ST(packer(f, U4, c, 4, w4, -1), SIZ);
        CHECK_ST(packer(f, U4, c, 3, w4, 2), SIZ);                    /* not whole blocks */
        CHECK_ST(packer(f, U9, c, INT64_MAX / 16 * 16, w9, 18), OVF); /* words * 2 bytes */
        tfree_all();
    }
    CTX_END();
    int32_t c = 0;
    float x = 1.0f;
    uint8_t b[8];
    for (int k = 0; k < 3; k++) /* unknown type ids */
        CHECK_ST(sdnq_decode_ref(bad_ids[k], &c, 1, &x), TYP), CHECK_ST(sdnq_encode_ref(bad_ids[k], &x, 1, &c), TYP);
    CHECK_ST(sdnq_decode_ref(SDNQ_TYPE_INT8, &c, 1, &x), TYP); /* native: no codes */
    CHECK_ST(sdnq_decode_ref(U4, &c, -1, &x), SIZ), CHECK_ST(sdnq_decode_ref(U4, NULL, 0, NULL), OK);
    CHECK_ST(sdnq_decode_ref(U4, NULL, 1, &x), NUL), CHECK_ST(sdnq_decode_ref(U4, &c, 1, NULL), NUL);
    CHECK_ST(sdnq_encode_ref(U4, &x, 1, &c), TYP);                /* integers have no encoder */
    CHECK_ST(sdnq_encode_ref(SDNQ_TYPE_FLOAT16, &x, 1, &c), TYP); /* native float */
    CHECK_ST(sdnq_encode_ref(E2M1, &x, -1, &c), SIZ), CHECK_ST(sdnq_encode_ref(E2M1, NULL, 0, NULL), OK);
    CHECK_ST(sdnq_encode_ref(E2M1, NULL, 1, &c), NUL), CHECK_ST(sdnq_encode_ref(E2M1, &x, 1, NULL), NUL);
    CHECK_ST(sdnq_convert_ref(&x, -1, b, BF), SIZ), CHECK_ST(sdnq_convert_ref(NULL, 0, NULL, BF), OK);
    CHECK_ST(sdnq_convert_ref(NULL, 1, b, BF), NUL), CHECK_ST(sdnq_convert_ref(&x, 1, NULL, BF), NUL);
    static const int32_t bad_dt[] = {SDNQ_DT_I8,  SDNQ_DT_U8,  SDNQ_DT_I16,   SDNQ_DT_U16, SDNQ_DT_I32,
                                     SDNQ_DT_U32, SDNQ_DT_I64, SDNQ_DT_COUNT, -1,          99};
    for (size_t k = 0; k < COUNT(bad_dt); k++) CHECK_ST(sdnq_convert_ref(&x, 1, b, bad_dt[k]), DTY);
}

/* one field of a valid descriptor changed: reference and fast path must both return `want` */
#define DQ_ERR(mod, want) do { sdnq_dequant_desc e_ = base; mod; \
    CHECK_ST(sdnq_dequantize_ref(&e_), want); CHECK_ST(sdnq_dequantize(&e_, 2), want); } while (0)
#define Q_ERR(mod, want) do { sdnq_quant_desc e_ = qbase; mod; \
    CHECK_ST(sdnq_quantize_ref(&e_), want); CHECK_ST(sdnq_quantize(&e_, 2), want); } while (0)
#define SVD_ERR(mod, want) do { sdnq_svd_desc e_ = sbase; mod; \
    CHECK_ST(sdnq_svd_add_ref(&e_), want); CHECK_ST(sdnq_svd_add(&e_, 2), want); } while (0)
#define HD_ERR(w, dt, rows, cols, numel, h, kind, want) do { \
    CHECK_ST(sdnq_hadamard_ref(w, dt, rows, cols, numel, h, kind), want); \
    CHECK_ST(sdnq_hadamard(w, dt, rows, cols, numel, h, kind, 2), want); } while (0)

static void test_errors_dequant(void) {
    const uint8_t codes[4] = {0x10, 0x32, 0x54, 0x76};
    const float scale[2] = {1, 2}, zp[2] = {0, 1};
    /* uint4 [2, 4, 1]: 4 code bytes, 2 scales, 2 zero-points, 8 outputs, all exact heap blocks */
    const sdnq_dequant_desc base =
        with_zp(dq(SDNQ_TYPE_UINT4, 2, 4, 1, codes, 4, scale, SDNQ_DT_F32, 2, SDNQ_DT_F32), zp, 2);
    DQ_ERR((void)0, OK);
    CHECK_ST(sdnq_dequantize_ref(NULL), NUL), CHECK_ST(sdnq_dequantize(NULL, 1), NUL);
    for (int k = 0; k < 3; k++) DQ_ERR(e_.type = bad_ids[k], TYP);
    /* sizes: negative, overflowing, not whole blocks */
    DQ_ERR(e_.outer = -1, SIZ); DQ_ERR(e_.red = -1, SIZ); DQ_ERR(e_.inner = -2, SIZ);
    DQ_ERR(e_.scale_numel = -1, SIZ); DQ_ERR(e_.zp_numel = -1, SIZ); DQ_ERR(e_.out_numel = -1, SIZ);
    DQ_ERR(e_.codes_bytes = -1, SIZ); DQ_ERR((e_.outer = 1, e_.red = 3), SIZ); /* 3 uint4 codes */
    DQ_ERR(e_.outer = INT64_MAX, OVF); DQ_ERR((e_.outer = (int64_t)1 << 40, e_.red = (int64_t)1 << 40), OVF);
    DQ_ERR((e_.type = SDNQ_TYPE_INT32, e_.outer = INT64_MAX / 2, e_.red = 1), OVF); /* n * 4 bytes */
    DQ_ERR((e_.type = SDNQ_TYPE_UINT9, e_.outer = INT64_MAX / 16 * 16, e_.red = 1), OVF);
    /* dtypes */
    DQ_ERR(e_.scale_dtype = SDNQ_DT_I8, DTY); DQ_ERR(e_.scale_dtype = SDNQ_DT_F8_E4M3FN, DTY);
    DQ_ERR(e_.scale_dtype = 99, DTY); DQ_ERR(e_.out_dtype = SDNQ_DT_I32, DTY);
    DQ_ERR(e_.out_dtype = SDNQ_DT_F8_E5M2, DTY); DQ_ERR(e_.out_dtype = -1, DTY);
    /* pointers */
    DQ_ERR(e_.codes = NULL, NUL); DQ_ERR(e_.scale = NULL, NUL);
    DQ_ERR(e_.out = NULL, NUL); DQ_ERR(e_.zero_point = NULL, NUL);
    DQ_ERR((e_.outer = 0, e_.codes = e_.scale = e_.zero_point = e_.out = NULL), OK); /* nothing to do */
    /* buffers one element short, strides negative or overflowing the index */
    DQ_ERR(e_.codes_bytes = 3, RNG); DQ_ERR(e_.scale_numel = 1, RNG); DQ_ERR(e_.zp_numel = 1, RNG);
    DQ_ERR(e_.out_numel = 7, RNG); DQ_ERR(e_.scale_stride[0] = INT64_MAX, RNG);
    DQ_ERR(e_.scale_stride[0] = -1, SIZ); DQ_ERR(e_.zp_stride[1] = -1, SIZ); DQ_ERR(e_.out_stride[1] = -1, SIZ);
    DQ_ERR(e_.out_stride[0] = INT64_MAX, SIZ); /* 1 * INT64_MAX + 3 * 1 */
    DQ_ERR((e_.outer = 4, e_.red = 2, e_.scale_stride[0] = INT64_MAX / 2), SIZ);
    DQ_ERR((e_.type = SDNQ_TYPE_INT8, e_.zero_point = NULL, e_.codes_bytes = 7), RNG); /* native: 8 bytes */
    /* zero-point and codebook only where they belong */
    DQ_ERR(e_.type = SDNQ_TYPE_INT4, SIZ); /* zero-point given for a symmetric type */
    DQ_ERR((e_.type = SDNQ_TYPE_INT4, e_.codebook = 1, e_.zero_point = NULL), TYP);
    DQ_ERR((e_.type = SDNQ_TYPE_FLOAT4_E2M2FNU, e_.codebook = 1, e_.zero_point = NULL), TYP);
    DQ_ERR((e_.type = SDNQ_TYPE_UINT32, e_.outer = e_.red = 1, e_.codebook = 1, e_.zero_point = NULL), TYP);
    DQ_ERR((e_.codebook = 1, e_.zero_point = NULL, e_.scale_stride[2] = 1), RNG); /* 16 levels needed */
    tfree_all();
}

static void test_errors_quant_linalg(void) {
    const int32_t F = SDNQ_DT_F32, S = SDNQ_HADAMARD_SYLVESTER;
    const float w4[4] = {1, 2, 3, 4};
    const sdnq_quant_desc qbase = qd(SDNQ_TYPE_UINT4, 2, 2, 1, 0, w4, F);
    Q_ERR((void)0, OK); Q_ERR((e_.tensorwise = 1, e_.scale_numel = 1), OK);
    Q_ERR((e_.outer = 0, e_.w = NULL, e_.codes = NULL, e_.scale = e_.zero_point = NULL), OK);
    CHECK_ST(sdnq_quantize_ref(NULL), NUL), CHECK_ST(sdnq_quantize(NULL, 1), NUL);
    for (int k = 0; k < 3; k++) Q_ERR(e_.type = bad_ids[k], TYP);
    Q_ERR(e_.scale_dtype = SDNQ_DT_I8, DTY); Q_ERR(e_.scale_dtype = SDNQ_DT_F8_E4M3FN, DTY);
    Q_ERR(e_.scale_dtype = 99, DTY); Q_ERR(e_.outer = INT64_MAX, OVF);
    Q_ERR(e_.outer = -1, SIZ); Q_ERR(e_.red = -1, SIZ); Q_ERR(e_.inner = -1, SIZ);
    Q_ERR(e_.w_numel = 3, RNG); Q_ERR(e_.codes_numel = 3, RNG); Q_ERR(e_.scale_numel = 1, RNG);
    Q_ERR(e_.w = NULL, NUL); Q_ERR(e_.codes = NULL, NUL);
    Q_ERR(e_.scale = NULL, NUL); Q_ERR(e_.zero_point = NULL, NUL);
    Q_ERR(e_.type = SDNQ_TYPE_INT4, SIZ); /* zero-point buffer for a symmetric type */

    const sdnq_svd_desc sbase = svd(tdup(w4, 16), F, 2, 2, 1, tdup(w4, 8), F, tdup(w4, 8), F);
    SVD_ERR((void)0, OK); SVD_ERR((e_.rank = 0, e_.up = e_.down = NULL), OK);
    CHECK_ST(sdnq_svd_add_ref(NULL), NUL), CHECK_ST(sdnq_svd_add(NULL, 1), NUL);
    SVD_ERR(e_.w_dtype = SDNQ_DT_I8, DTY); SVD_ERR(e_.up_dtype = SDNQ_DT_F8_E4M3FN, DTY);
    SVD_ERR(e_.down_dtype = 99, DTY); SVD_ERR(e_.rows = INT64_MAX, OVF);
    SVD_ERR(e_.rows = -1, SIZ); SVD_ERR(e_.cols = -1, SIZ); SVD_ERR(e_.rank = -1, SIZ);
    SVD_ERR(e_.w_numel = -1, SIZ); SVD_ERR(e_.up_numel = -1, SIZ); SVD_ERR(e_.down_numel = -1, SIZ);
    SVD_ERR(e_.w_numel = 3, RNG); SVD_ERR(e_.up_numel = 1, RNG); SVD_ERR(e_.down_numel = 1, RNG);
    SVD_ERR(e_.w = NULL, NUL); SVD_ERR(e_.up = NULL, NUL); SVD_ERR(e_.down = NULL, NUL);
    SVD_ERR(e_.up_stride[0] = -1, SIZ); SVD_ERR(e_.down_stride[1] = INT64_MAX, RNG);
    SVD_ERR((e_.rank = 2, e_.up_stride[0] = INT64_MAX), SIZ); /* index overflows */

    float *w = memset(talloc(32), 0, 32), v = 0;
    HD_ERR(w, F, 2, 4, 8, 4, S, OK); HD_ERR(NULL, F, 0, 4, 0, 4, S, OK);
    HD_ERR(w, SDNQ_DT_I8, 2, 4, 8, 4, S, DTY); HD_ERR(NULL, F, 2, 4, 8, 4, S, NUL);
    HD_ERR(w, F, 2, 4, 8, 4, 2, UNS); HD_ERR(w, F, 2, 4, 8, 4, -1, UNS);
    HD_ERR(w, F, 1, 8192, 8, 8192, S, UNS); /* larger than HADAMARD_MAX */
    HD_ERR(w, F, -1, 4, 8, 4, S, SIZ); HD_ERR(w, F, 2, -4, 8, 4, S, SIZ); HD_ERR(w, F, 2, 4, -8, 4, S, SIZ);
    HD_ERR(w, F, 2, 4, 8, 3, S, SIZ); HD_ERR(w, F, 2, 4, 8, 1, S, SIZ);
    HD_ERR(w, F, 1, 6, 8, 4, S, SIZ); /* h does not divide cols */
    HD_ERR(w, F, 2, 4, 7, 4, S, RNG); HD_ERR(w, F, INT64_MAX, 4, 8, 4, S, OVF);
    CHECK_ST(sdnq_hadamard_entry(4, S, F, 0, 0, NULL), NUL), CHECK_ST(sdnq_hadamard_entry(4, S, 99, 0, 0, &v), DTY);
    CHECK_ST(sdnq_hadamard_entry(3, S, F, 0, 0, &v), SIZ), CHECK_ST(sdnq_hadamard_entry(0, S, F, 0, 0, &v), SIZ);
    CHECK_ST(sdnq_hadamard_entry(4, S, F, 4, 0, &v), SIZ), CHECK_ST(sdnq_hadamard_entry(4, S, F, 0, -1, &v), SIZ);
    CHECK_ST(sdnq_hadamard_entry(4, 2, F, 0, 0, &v), UNS);
    tfree_all();
}

/* ======================================================================== */
/* fast == reference on random data, every type                              */

static void test_fast_vs_ref_pack(void) {
    int seen_bits[17] = {0}; /* the packer depends on the width only: chunking tested once per width */
    for (int32_t id = 1; id <= 176; id++) {
        const sdnq_type_traits *t = T(id);
        if (!t->is_packed) continue;
        const int64_t n = (int64_t)t->block_elems * (seen_bits[t->bits]++ ? 37 : 4099); /* 4096-block chunks */
        int64_t words;
        sdnq_storage_words(id, n, &words);
        const size_t bytes = (size_t)words * dsize(t->storage), cb = (size_t)n * 4;
        int32_t *in = talloc(cb), *wild = talloc(cb), *c1 = talloc(cb), *c2 = talloc(cb);
        uint8_t *a = talloc(bytes), *b = talloc(bytes);
        for (int64_t k = 0; k < n; k++) {
            in[k] = (int32_t)(rnd() & ((1u << t->bits) - 1u));
            wild[k] = rnd() % 8 ? in[k] : (int32_t)rnd(); /* out of range: must wrap/spill identically */
        }
        CTX("pack fast vs ref %s", t->name);
        const int64_t nb = (int64_t)bytes;
        CHECK_ST(sdnq_pack_ref(id, in, n, a, nb), OK), CHECK_ST(sdnq_pack(id, in, n, b, nb, 3), OK);
        CHECK_MEM(b, a, bytes);
        CHECK_ST(sdnq_unpack(id, a, nb, n, c1, 3), OK);
        CHECK_MEM(c1, in, cb); /* in-range codes round-trip */
        CHECK_ST(sdnq_pack_ref(id, wild, n, a, nb), OK), CHECK_ST(sdnq_pack(id, wild, n, b, nb, 1), OK);
        CHECK_MEM(b, a, bytes);
        fill_bytes(a, bytes); /* any word contents */
        CHECK_ST(sdnq_unpack_ref(id, a, nb, n, c1), OK), CHECK_ST(sdnq_unpack(id, a, nb, n, c2, 3), OK);
        CHECK_MEM(c2, c1, cb);
        int64_t out_of_range = 0;
        for (int64_t k = 0; k < n; k++) out_of_range += c1[k] < 0 || c1[k] >= (1 << t->bits);
        CHECK_EQ(out_of_range, 0);
        tfree_all();
    }
}

enum { DQ_TENSORWISE = 1, DQ_TRANSPOSED = 2, DQ_CODEBOOK = 4 };

/* random codes (any word contents), scales and zero-points; out buffers prefilled alike */
static void cmp_dequant(int32_t type, int64_t outer, int64_t red, int64_t inner, int32_t sdt, int32_t odt, int mode) {
    const sdnq_type_traits *t = T(type);
    const int64_t n = outer * red * inner;
    int64_t words;
    if (sdnq_storage_words(type, n, &words) != SDNQ_OK) return; /* not whole blocks of this type */
    const int cb = (mode & DQ_CODEBOOK) != 0, tw = (mode & DQ_TENSORWISE) != 0;
    const int64_t levels = cb ? (int64_t)t->max + 1 : 1, groups = tw ? 1 : outer * inner;
    sdnq_dequant_desc d = {0};
    d.type = type, d.outer = outer, d.red = red, d.inner = inner, d.codebook = cb;
    d.codes_bytes = words * (int64_t)dsize(t->storage);
    d.codes = talloc((size_t)d.codes_bytes);
    fill_bytes((void *)d.codes, (size_t)d.codes_bytes);
    d.scale_dtype = sdt, d.scale_numel = groups * levels, d.scale = rnd_floats(d.scale_numel, sdt, -2, 2);
    d.scale_stride[0] = tw ? 0 : levels * inner, d.scale_stride[1] = tw ? 0 : 1, d.scale_stride[2] = tw ? 1 : inner;
    if (t->is_unsigned && !cb) {
        d.zero_point = rnd_floats(groups, sdt, -1, 1), d.zp_numel = groups;
        d.zp_stride[0] = tw ? 0 : inner, d.zp_stride[1] = tw ? 0 : 1;
    }
    d.out_dtype = odt, d.out_numel = n;
    if (mode & DQ_TRANSPOSED) /* (o, j, i) -> i*red*outer + j*outer + o */
        d.out_stride[0] = 1, d.out_stride[1] = outer, d.out_stride[2] = red * outer;
    else
        d.out_stride[0] = red * inner, d.out_stride[1] = inner, d.out_stride[2] = 1;
    const size_t ob = (size_t)n * dsize(odt);
    uint8_t *want = memset(talloc(ob), 0xCD, ob), *got = talloc(ob);
    CTX("dequant %s [%lld,%lld,%lld] %s->%s mode %d", t->name, (long long)outer, (long long)red, (long long)inner,
        sdnq_dtype_name(sdt), sdnq_dtype_name(odt), mode);
    d.out = want;
    CHECK_ST(sdnq_dequantize_ref(&d), SDNQ_OK);
    d.out = got;
    for (int th = 1; th <= 4; th += 3) {
        memset(got, 0xCD, ob);
        CHECK_ST(sdnq_dequantize(&d, th), SDNQ_OK);
        CHECK_MEM(got, want, ob);
    }
}

static void test_fast_vs_ref_dequant(void) {
    /* odd sizes, runs crossing the 2048-code task size, rows not starting on a block boundary */
    static const int64_t shapes[][3] = {{3, 48, 1}, {16, 2049, 1}, {4, 16, 3}, {2, 2056, 2},
                                        {16, 5, 3}, {2, 3, 1},     {1, 4096, 1}};
    const int32_t F = SDNQ_DT_F32, B = SDNQ_DT_BF16, H = SDNQ_DT_F16, dts[3] = {F, B, H};
    for (int32_t id = 1; id <= 176; id++) {
        const sdnq_type_traits *t = T(id);
        for (size_t s = 0; s < COUNT(shapes); s++) cmp_dequant(id, shapes[s][0], shapes[s][1], shapes[s][2], F, F, 0);
        cmp_dequant(id, 4, 16, 3, F, B, DQ_TRANSPOSED);
        cmp_dequant(id, 3, 48, 1, B, F, DQ_TENSORWISE | DQ_TRANSPOSED); /* row kernel, strided output */
        cmp_dequant(id, 16, 5, 3, H, H, DQ_TENSORWISE | DQ_TRANSPOSED);
        if (t->is_integer && t->is_unsigned && t->bits <= 16) {
            cmp_dequant(id, 3, 48, 1, F, F, DQ_CODEBOOK);
            cmp_dequant(id, 2, 8, 3, B, H, DQ_CODEBOOK | DQ_TRANSPOSED);
            cmp_dequant(id, 1, 32, 1, F, B, DQ_CODEBOOK | DQ_TENSORWISE);
        }
        tfree_all();
    }
    static const int32_t subset[] = {SDNQ_TYPE_INT4,          SDNQ_TYPE_UINT4,           SDNQ_TYPE_UINT9,
                                     SDNQ_TYPE_INT15,         SDNQ_TYPE_INT8,            SDNQ_TYPE_UINT8,
                                     SDNQ_TYPE_UINT1,         SDNQ_TYPE_INT32,           SDNQ_TYPE_FLOAT4_E2M1FN,
                                     SDNQ_TYPE_FLOAT6_E3M2FN, SDNQ_TYPE_FLOAT16_E5M11FNU, SDNQ_TYPE_FLOAT8_E4M3FN,
                                     SDNQ_TYPE_BFLOAT16,      SDNQ_TYPE_FLOAT32};
    for (size_t k = 0; k < COUNT(subset); k++) {
        for (int v = 0; v < 9; v++) { /* all 3 scale dtypes x 3 output dtypes */
            cmp_dequant(subset[k], 3, 48, 1, dts[v / 3], dts[v % 3], 0);
            cmp_dequant(subset[k], 4, 16, 3, dts[v / 3], dts[v % 3], 0);
            cmp_dequant(subset[k], 16, 5, 3, dts[v / 3], dts[v % 3], DQ_TRANSPOSED);
        }
        tfree_all();
    }
}

/* special: 1 = group (0, 0) all zero, 2 = a NaN, 3 = a -inf */
static void cmp_quant(int32_t type, int64_t outer, int64_t red, int64_t inner, int tw, int32_t sdt, int special) {
    const int64_t n = outer * red * inner;
    float *w = talloc((size_t)n * 4);
    for (int64_t k = 0; k < n; k++) w[k] = rnd_float(-3, 3);
    for (int64_t j = 0; special == 1 && j < red; j++) w[j * inner] = 0;
    if (special == 2) w[n / 2] = NAN;
    if (special == 3) w[n - 1] = -INFINITY;
    sdnq_quant_desc a = qd(type, outer, red, inner, tw, w, sdt), b = qd(type, outer, red, inner, tw, w, sdt);
    const size_t sb = (size_t)a.scale_numel * dsize(sdt);
    CTX("quant %s [%lld,%lld,%lld] tw %d %s special %d", T(type)->name, (long long)outer, (long long)red,
        (long long)inner, tw, sdnq_dtype_name(sdt), special);
    CHECK_ST(sdnq_quantize_ref(&a), SDNQ_OK);
    for (int th = 1; th <= 4; th += 3) {
        memset(b.codes, 0x77, (size_t)n * 4);
        CHECK_ST(sdnq_quantize(&b, th), SDNQ_OK);
        CHECK_MEM(b.codes, a.codes, (size_t)n * 4);
        CHECK_MEM(b.scale, a.scale, sb);
        if (a.zero_point) CHECK_MEM(b.zero_point, a.zero_point, sb);
    }
}

static void test_fast_vs_ref_quant(void) {
    /* {outer, red, inner, tensorwise}; tensor-wise sizes not multiples of the 64 runs, one smaller */
    static const int64_t shapes[][4] = {{3, 37, 1, 0}, {2, 5, 3, 0}, {1, 1000, 1, 1},
                                        {7, 300, 2, 1}, {1, 10, 1, 1}, {5, 64, 1, 0}};
    const int32_t dts[3] = {SDNQ_DT_F32, SDNQ_DT_BF16, SDNQ_DT_F16};
    for (int32_t id = 1; id <= 176; id++) {
        for (size_t s = 0; s < COUNT(shapes); s++)
            for (int d = 0; d < 3; d++)
                cmp_quant(id, shapes[s][0], shapes[s][1], shapes[s][2], (int)shapes[s][3], dts[d], (int)(s + d) % 4);
        tfree_all();
    }
}

static void test_fast_vs_ref_linalg(void) {
    static const int64_t dims[][3] = {{3, 5, 2}, {4, 700, 3}, {2, 1030, 1}, {1, 512, 4}}; /* rows, cols, rank */
    const int32_t dts[3] = {SDNQ_DT_F32, SDNQ_DT_BF16, SDNQ_DT_F16};
    for (size_t k = 0; k < COUNT(dims); k++)
        for (int v = 0; v < 54; v++) { /* 27 dtype combinations, contiguous and transposed factors */
            const int64_t rows = dims[k][0], cols = dims[k][1], rank = dims[k][2];
            const int32_t wdt = dts[v % 3], udt = dts[v / 3 % 3], ddt = dts[v / 9 % 3];
            const size_t wb = (size_t)(rows * cols) * dsize(wdt);
            void *w = rnd_floats(rows * cols, wdt, -1, 1), *w2 = tdup(w, wb);
            sdnq_svd_desc d = svd(w, wdt, rows, cols, rank, rnd_floats(rows * rank, udt, -1, 1), udt,
                                  rnd_floats(rank * cols, ddt, -1, 1), ddt);
            if (v >= 27) d.up_stride[0] = 1, d.up_stride[1] = rows, d.down_stride[0] = 1, d.down_stride[1] = rank;
            CTX("svd [%lld,%lld] rank %lld variant %d", (long long)rows, (long long)cols, (long long)rank, v);
            CHECK_ST(sdnq_svd_add_ref(&d), OK);
            d.w = w2, CHECK_ST(sdnq_svd_add(&d, 3), OK);
            CHECK_MEM(w2, w, wb);
            tfree_all();
        }
    /* Hadamard: butterfly vs matrix product differ in summation order only (linalg.c) */
    static const int64_t hs[] = {2, 4, 8, 16, 32, 64, 256, 1024, 4096};
    for (size_t k = 0; k < COUNT(hs); k++)
        for (int v = 0; v < 4; v++) {
            const int64_t h = hs[k], rows = h <= 256 ? 3 : 1, cols = h * (h <= 64 ? 5 : 1), n = rows * cols;
            const int32_t dt = v & 1 ? SDNQ_DT_BF16 : SDNQ_DT_F32, kind = v / 2;
            const float tol = dt == SDNQ_DT_F32 ? 1e-5f : 1.0f / 128; /* bf16: one ulp */
            void *a = rnd_floats(n, dt, -1, 1), *b = tdup(a, (size_t)n * dsize(dt));
            CTX("hadamard h=%lld %s kind %d", (long long)h, sdnq_dtype_name(dt), kind);
            CHECK_ST(sdnq_hadamard_ref(a, dt, rows, cols, n, h, kind), SDNQ_OK);
            CHECK_ST(sdnq_hadamard(b, dt, rows, cols, n, h, kind, 3), SDNQ_OK);
            int64_t bad = 0;
            for (int64_t e = 0; e < n; e++) {
                float fa = dt == SDNQ_DT_F32 ? ((float *)a)[e] : ffrom((uint32_t)((uint16_t *)a)[e] << 16);
                float fb = dt == SDNQ_DT_F32 ? ((float *)b)[e] : ffrom((uint32_t)((uint16_t *)b)[e] << 16);
                bad += !(fabsf(fa - fb) <= tol * (1.0f + fmaxf(fabsf(fa), fabsf(fb))));
            }
            CHECK_EQ(bad, 0);
            tfree_all();
        }
}

/* ======================================================================== */
/* regressions: size products that once overflowed int64 (UB) before checks  */

static void test_size_overflow_regressions(void) {
    const float w4[4] = {1, 2, 3, 4};
    const int8_t c[4] = {1, 2, 3, 4};
    /* sdnq_dequantize: outer = 0 with red * inner > INT64_MAX holds no elements; the fast
     * path must return before forming red * inner (it once overflowed). Want: OK. */
    sdnq_dequant_desc d = dq(SDNQ_TYPE_INT8, 1, 4, 1, c, 4, w4, SDNQ_DT_F32, 1, SDNQ_DT_F32);
    d.outer = 0, d.red = INT64_MAX, d.inner = 2;
    CHECK_ST(sdnq_dequantize_ref(&d), SDNQ_OK), CHECK_ST(sdnq_dequantize(&d, 1), SDNQ_OK);
    /* quant_check: with red = 0 the element count is 0 but the group count outer * inner
     * overflows int64; it must be reported, not wrapped. Want: SDNQ_ERR_OVERFLOW. */
    sdnq_quant_desc q = qd(SDNQ_TYPE_INT8, 1, 4, 1, 0, w4, SDNQ_DT_F32);
    q.outer = INT64_MAX, q.red = 0, q.inner = 2;
    CHECK_ST(sdnq_quantize_ref(&q), SDNQ_ERR_OVERFLOW), CHECK_ST(sdnq_quantize(&q, 1), SDNQ_ERR_OVERFLOW);
    /* found by fuzzing: with one extent 0 and the others huge there are no elements, but the
     * references looped over the huge extents (outer * red empty iterations for dequantize, rows
     * for the Hadamard transform): a hang. Want: OK at once. */
    d.outer = (int64_t)1 << 31, d.red = (int64_t)1 << 31, d.inner = 0;
    CHECK_ST(sdnq_dequantize_ref(&d), SDNQ_OK), CHECK_ST(sdnq_dequantize(&d, 1), SDNQ_OK);
    d.outer = INT64_MAX, d.red = 0, d.inner = INT64_MAX;
    CHECK_ST(sdnq_dequantize_ref(&d), SDNQ_OK), CHECK_ST(sdnq_dequantize(&d, 1), SDNQ_OK);
    float hw[4] = {1, 2, 3, 4};
    CHECK_ST(sdnq_hadamard_ref(hw, SDNQ_DT_F32, INT64_MAX, 0, 4, 2, SDNQ_HADAMARD_SYLVESTER), SDNQ_OK);
    CHECK_ST(sdnq_hadamard(hw, SDNQ_DT_F32, INT64_MAX, 0, 4, 2, SDNQ_HADAMARD_SYLVESTER, 1), SDNQ_OK);
    CHECK(hw[0] == 1 && hw[3] == 4);
    /* found by fuzzing: sdnq_decode_ref takes any int32 codes; a signed integer code near INT32_MIN
     * plus the type's offset overflowed int (undefined behaviour). Want: the value, computed wide. */
    const int32_t far[2] = {INT32_MIN, INT32_MAX};
    float fv[2];
    CHECK_ST(sdnq_decode_ref(SDNQ_TYPE_INT15, far, 2, fv), SDNQ_OK);
    CHECK(fv[0] == (float)((int64_t)INT32_MIN - 16384) && fv[1] == (float)((int64_t)INT32_MAX - 16384));
    tfree_all();
}

int main(void) {
    static void (*const tests[])(void) = {
        test_table, test_packing, test_floatx, test_row_division, test_convert, test_dequant_hand, test_quant_hand, test_linalg_hand,
        test_errors_codes, test_errors_dequant, test_errors_quant_linalg, test_fast_vs_ref_pack,
        test_fast_vs_ref_dequant, test_fast_vs_ref_quant, test_fast_vs_ref_linalg,
        test_size_overflow_regressions};
    for (size_t k = 0; k < COUNT(tests); k++) tests[k](), CTX_END();
    printf("test_core: %d checks, %d failures\n", g_checks, g_fails);
    return g_fails != 0;
}
