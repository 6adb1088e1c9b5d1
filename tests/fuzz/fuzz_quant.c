/*
 * fuzz_quant.c - libFuzzer harness for sdnq_quantize / sdnq_quantize_ref (argument validation,
 * group-wise and tensor-wise scales and zero-points, code rounding) and, on success, the way
 * back: the codes packed with sdnq_pack and dequantized with sdnq_dequantize.
 *
 * Input: type id, flags (tensor-wise, scale dtype, zero-point pointer, contiguous counts), thread
 * count, outer / red / inner, element counts (or the exact ones plus a delta), then the fp32
 * weights as raw bits (NaN, inf, subnormals included). Contract: a defined status; reference
 * and fast path agree on status and on every byte of scale, zero-point and codes; stored codes
 * of packed types lie in [0, 2^bits] (2^bits: sdnq's uint9..uint15 quirk, -2^15 for uint15 once
 * torch has cast it to int16); what quantize
 * produced packs and dequantizes without error, fast path equal to the reference.
 */
#include "fuzz_common.h"

#define CAP_ELEMS (1 << 15)

static int64_t cap(int64_t v) { return v > CAP_ELEMS ? CAP_ELEMS : v; }

/* codes -> the file words / native elements dequantize reads; 0 when the geometry is not packable */
static void *to_storage(const sdnq_type_traits *t, const int32_t *codes, int64_t n, int64_t *bytes) {
    const int64_t es = sdnq_dtype_size(t->storage);
    if (!t->is_packed) {
        uint8_t *b = (uint8_t *)malloc(n > 0 ? (size_t)(n * es) : 1);
        for (int64_t k = 0; k < n; k++) memcpy(b + k * es, &codes[k], (size_t)es); /* little-endian low bytes */
        *bytes = n * es;
        return b;
    }
    int64_t words;
    if (sdnq_storage_words(t->id, n, &words) != SDNQ_OK) return NULL;
    *bytes = words * es;
    uint8_t *b = (uint8_t *)malloc(*bytes > 0 ? (size_t)*bytes : 1);
    if (sdnq_pack(t->id, codes, n, b, *bytes, 1) != SDNQ_OK) FZ_FAIL("pack of quantized %s codes failed", t->name);
    return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_reader r = {data, size, 0};
    sdnq_quant_desc d;
    memset(&d, 0, sizeof d);
    d.type = fz_u8(&r);
    const uint8_t flags = fz_u8(&r);
    const int32_t nthreads = fz_threads(fz_u8(&r));
    d.tensorwise = flags & 1;
    d.scale_dtype = fz_arith_dtype(&r, flags >> 1);
    d.outer = fz_svar(&r), d.red = fz_svar(&r), d.inner = fz_svar(&r);
    const sdnq_type_traits *t = sdnq_type_get(d.type);
    if (flags & 0x10) {
        const int64_t n = fz_mul(fz_mul(d.outer, d.red), d.inner);
        d.w_numel = d.codes_numel = n;
        d.scale_numel = d.tensorwise ? 1 : fz_mul(d.outer, d.inner);
        const uint8_t which = fz_u8(&r);
        const int64_t delta = fz_svar(&r);
        if (which & 1) d.w_numel = fz_add(d.w_numel, delta);
        if (which & 2) d.codes_numel = fz_add(d.codes_numel, delta);
        if (which & 4) d.scale_numel = fz_add(d.scale_numel, delta);
    } else {
        d.w_numel = fz_svar(&r), d.codes_numel = fz_svar(&r), d.scale_numel = fz_svar(&r);
    }
    d.w_numel = cap(d.w_numel), d.codes_numel = cap(d.codes_numel), d.scale_numel = cap(d.scale_numel);
    const int want_zp = (t != NULL && t->is_unsigned) ? !(flags & 8) : (flags & 8) != 0;
    const int64_t ssz = fz_dt_size(d.scale_dtype);
    const int64_t sb = d.scale_numel > 0 ? d.scale_numel * ssz : 0, cb = d.codes_numel > 0 ? d.codes_numel * 4 : 0;

    float *w = (float *)fz_buffer(&r, d.w_numel > 0 ? d.w_numel * 4 : 0, 0);
    void *s1 = malloc(sb ? (size_t)sb : 1), *s2 = malloc(sb ? (size_t)sb : 1);
    void *z1 = want_zp ? malloc(sb ? (size_t)sb : 1) : NULL, *z2 = want_zp ? malloc(sb ? (size_t)sb : 1) : NULL;
    int32_t *c1 = (int32_t *)malloc(cb ? (size_t)cb : 1), *c2 = (int32_t *)malloc(cb ? (size_t)cb : 1);
    memset(s1, 0x11, sb ? (size_t)sb : 1), memset(s2, 0x11, sb ? (size_t)sb : 1);
    if (want_zp) memset(z1, 0x22, sb ? (size_t)sb : 1), memset(z2, 0x22, sb ? (size_t)sb : 1);
    memset(c1, 0x33, cb ? (size_t)cb : 1), memset(c2, 0x33, cb ? (size_t)cb : 1);

    sdnq_quant_desc e = d;
    d.w = w, d.scale = s1, d.zero_point = z1, d.codes = c1;
    e.w = w, e.scale = s2, e.zero_point = z2, e.codes = c2;
    const sdnq_status a = sdnq_quantize_ref(&d);
    const sdnq_status b = sdnq_quantize(&e, nthreads);
    FZ_SAME_STATUS("quantize", a, b);
    if (t == NULL && a != SDNQ_ERR_TYPE) FZ_FAIL("quantize: unknown type %d gave %s", d.type, sdnq_status_str(a));
    if (a == SDNQ_OK) {
        fz_same_floats("quantize scale", s1, s2, d.scale_numel, d.scale_dtype);
        if (want_zp) fz_same_floats("quantize zero_point", z1, z2, d.scale_numel, d.scale_dtype);
        fz_same_bytes("quantize codes", c1, c2, cb);
        const int64_t n = d.outer * d.red * d.inner; /* validated: no overflow */
        if (t->is_packed)
            for (int64_t k = 0; k < n; k++)
                if ((c1[k] < 0 || (int64_t)c1[k] > ((int64_t)1 << t->bits)) &&
                    !(t->bits == 15 && c1[k] == -32768)) /* uint15's 2^15 after torch's cast to int16 */
                    FZ_FAIL("quantize %s: stored code %d out of range", t->name, c1[k]);
        /* the way back, for the bf16/f16/f32 scales quantize wrote */
        int64_t bytes = 0;
        void *words = n > 0 ? to_storage(t, c1, n, &bytes) : NULL;
        if (words != NULL) {
            const int64_t groups = d.tensorwise ? 1 : d.outer * d.inner;
            sdnq_dequant_desc q;
            memset(&q, 0, sizeof q);
            q.type = d.type, q.outer = d.outer, q.red = d.red, q.inner = d.inner;
            q.codes = words, q.codes_bytes = bytes;
            q.scale = s1, q.scale_dtype = d.scale_dtype, q.scale_numel = groups;
            q.scale_stride[0] = d.tensorwise ? 0 : d.inner, q.scale_stride[1] = d.tensorwise ? 0 : 1;
            if (t->is_unsigned) {
                q.zero_point = z1, q.zp_numel = groups;
                q.zp_stride[0] = q.scale_stride[0], q.zp_stride[1] = q.scale_stride[1];
            }
            q.out_dtype = d.scale_dtype, q.out_numel = n;
            q.out_stride[0] = d.red * d.inner, q.out_stride[1] = d.inner, q.out_stride[2] = 1;
            const sdnq_status x = fz_dequant_pair("dequantize of quantized", &q, nthreads);
            if (x != SDNQ_OK) FZ_FAIL("dequantize of quantized %s: %s", t->name, sdnq_status_str(x));
            free(words);
        }
    }
    free(w), free(s1), free(s2), free(z1), free(z2), free(c1), free(c2);
    return 0;
}
