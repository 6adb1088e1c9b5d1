/*
 * fuzz_dequant.c - libFuzzer harness for sdnq_dequantize / sdnq_dequantize_ref: the descriptor
 * validation (type, index space, packed geometry, scale / zero-point / output strides and element
 * counts, codebooks) and every dequantization kernel (row fast path per CPU level, generic loop).
 *
 * Input: type id, flags, thread count, outer / red / inner, then either explicit strides and
 * element counts, or (flag) the contiguous layout a file gives plus one adjusted count; then the
 * code words, scales and zero-points. Contract: a defined status, the same status from reference
 * and fast path, bit-identical outputs on success (NaN payloads aside: fz_same_floats; the output
 * buffer is compared whole, so an element written by one and not the other shows), ERR_TYPE for unknown type ids; ASan/UBSan
 * catch any access outside the declared buffers.
 */
#include "fuzz_common.h"

#define CAP_ELEMS (1 << 16) /* scale / zero-point / output elements */
#define CAP_BYTES (1 << 18) /* code bytes */

static int64_t cap(int64_t v, int64_t c) { return v > c ? c : v; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_reader r = {data, size, 0};
    sdnq_dequant_desc d;
    memset(&d, 0, sizeof d);
    d.type = fz_u8(&r);
    const uint8_t flags = fz_u8(&r);
    const int32_t nthreads = fz_threads(fz_u8(&r));
    d.codebook = flags & 1;
    d.scale_dtype = fz_arith_dtype(&r, flags >> 2);
    d.out_dtype = fz_arith_dtype(&r, flags >> 4);
    d.outer = fz_svar(&r);
    d.red = fz_svar(&r);
    d.inner = fz_svar(&r);
    const sdnq_type_traits *t = sdnq_type_get(d.type);

    if (flags & 0x40) {
        /* the layout of a file: contiguous [outer, red, inner] codes and output, scale [outer, inner]
         * (with a codebook [outer, levels, inner]), one count adjusted by a small signed delta */
        const int64_t o = d.outer, n_red = d.red, in = d.inner;
        int64_t levels = 1;
        if (d.codebook && t != NULL && t->is_integer && t->is_unsigned && t->bits <= 16)
            levels = (int64_t)t->max + 1;
        d.scale_stride[0] = fz_mul(levels, in), d.scale_stride[1] = 1, d.scale_stride[2] = in;
        d.zp_stride[0] = in, d.zp_stride[1] = 1;
        d.out_stride[0] = fz_mul(n_red, in), d.out_stride[1] = in, d.out_stride[2] = 1;
        d.scale_numel = fz_mul(fz_mul(o, in), levels);
        d.zp_numel = fz_mul(o, in);
        d.out_numel = fz_mul(fz_mul(o, n_red), in);
        int64_t words = -1;
        if (t != NULL && sdnq_storage_words(d.type, d.out_numel, &words) == SDNQ_OK)
            d.codes_bytes = fz_mul(words, sdnq_dtype_size(t->storage));
        else
            d.codes_bytes = fz_svar(&r);
        const uint8_t which = fz_u8(&r);
        const int64_t delta = fz_svar(&r);
        switch (which & 3) {
        case 0: d.scale_numel = fz_add(d.scale_numel, delta); break;
        case 1: d.zp_numel = fz_add(d.zp_numel, delta); break;
        case 2: d.out_numel = fz_add(d.out_numel, delta); break;
        default: d.codes_bytes = fz_add(d.codes_bytes, delta); break;
        }
    } else {
        for (int k = 0; k < 3; k++) d.scale_stride[k] = fz_svar(&r);
        for (int k = 0; k < 2; k++) d.zp_stride[k] = fz_svar(&r);
        for (int k = 0; k < 3; k++) d.out_stride[k] = fz_svar(&r);
        d.scale_numel = fz_svar(&r);
        d.zp_numel = fz_svar(&r);
        d.out_numel = fz_svar(&r);
        d.codes_bytes = fz_svar(&r);
    }
    /* what the harness can allocate; the call is told the truth about it */
    d.scale_numel = cap(d.scale_numel, CAP_ELEMS);
    d.zp_numel = cap(d.zp_numel, CAP_ELEMS);
    d.out_numel = cap(d.out_numel, CAP_ELEMS);
    d.codes_bytes = cap(d.codes_bytes, CAP_BYTES);

    const int want_zp = (flags & 2) != 0;
    const int64_t ssz = fz_dt_size(d.scale_dtype);
    void *codes = fz_buffer(&r, d.codes_bytes, 0);
    void *scale = fz_buffer(&r, d.scale_numel > 0 ? d.scale_numel * ssz : 0, 0);
    void *zp = want_zp ? fz_buffer(&r, d.zp_numel > 0 ? d.zp_numel * ssz : 0, 0) : NULL;
    d.codes = codes, d.scale = scale, d.zero_point = zp;

    const sdnq_status a = fz_dequant_pair("dequantize", &d, nthreads);
    if (t == NULL && a != SDNQ_ERR_TYPE) FZ_FAIL("dequantize: unknown type %d gave %s", d.type, sdnq_status_str(a));

    free(codes), free(scale), free(zp);
    return 0;
}
