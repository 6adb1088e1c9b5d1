/*
 * fuzz_pack.c - libFuzzer harness for the packing entry points of every packed type in
 * types.def (signed / unsigned integers 1..15 bits, FLOATX and UFLOATX codes in 8-, 16- and
 * 64-bit words): sdnq_storage_words, sdnq_unpack_ref / sdnq_unpack, sdnq_pack_ref / sdnq_pack,
 * and sdnq_decode_ref of what unpack returns.
 *
 * Input: type id, flags, thread count, n, a byte count (exact for n, or any), then the file
 * words to unpack and the int32 codes to pack. Contract: a defined status; reference and fast
 * path agree on status and on every output byte (the whole output buffer is compared);
 * unpacked codes lie in [0, 2^bits) and decode to finite values; in-range codes survive
 * pack -> unpack unchanged; unknown and native types give ERR_TYPE.
 */
#include <math.h>

#include "fuzz_common.h"

#define CAP_N (1 << 15)
#define CAP_BYTES (1 << 17)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_reader r = {data, size, 0};
    int32_t type = fz_u8(&r);
    if (fz_u8(&r) == 0xFF) type = (int32_t)((uint32_t)type | 0x80000000u); /* a negative id */
    const uint8_t flags = fz_u8(&r);
    const int32_t nthreads = fz_threads(fz_u8(&r));
    int64_t n = fz_svar(&r);
    const sdnq_type_traits *t = sdnq_type_get(type);
    int64_t words = -1;
    const sdnq_status sw = sdnq_storage_words(type, n, &words);
    FZ_STATUS_OK("storage_words", sw);
    if (t == NULL && sw != SDNQ_ERR_TYPE) FZ_FAIL("storage_words: unknown type %d gave %s", type, sdnq_status_str(sw));
    if (sw == SDNQ_OK && (words < 0 || (t->block_elems > 0 && words != n / t->block_elems * t->block_words)))
        FZ_FAIL("storage_words(%d, %lld) = %lld", type, (long long)n, (long long)words);
    int64_t bytes;
    if ((flags & 1) && sw == SDNQ_OK)
        bytes = fz_add(fz_mul(words, sdnq_dtype_size(t->storage)), fz_svar(&r) % 4);
    else
        bytes = fz_svar(&r);
    if (n > CAP_N) n = CAP_N;
    if (bytes > CAP_BYTES) bytes = CAP_BYTES;
    const int64_t nb = n > 0 ? n * 4 : 0;
    const int null0 = (flags & 2) != 0;

    /* unpack: any file words */
    uint8_t *src = (uint8_t *)fz_buffer(&r, bytes, null0);
    int32_t *c_ref = (int32_t *)malloc(nb ? (size_t)nb : 1), *c_fast = (int32_t *)malloc(nb ? (size_t)nb : 1);
    memset(c_ref, 0xA5, nb ? (size_t)nb : 1), memset(c_fast, 0xA5, nb ? (size_t)nb : 1);
    const sdnq_status u1 = sdnq_unpack_ref(type, src, bytes, n, nb || !null0 ? c_ref : NULL);
    const sdnq_status u2 = sdnq_unpack(type, src, bytes, n, nb || !null0 ? c_fast : NULL, nthreads);
    FZ_SAME_STATUS("unpack", u1, u2);
    if ((t == NULL || !t->is_packed) && u1 != SDNQ_ERR_TYPE) FZ_FAIL("unpack: type %d gave %s", type, sdnq_status_str(u1));
    if (u1 == SDNQ_OK) {
        fz_same_bytes("unpack codes", c_ref, c_fast, nb);
        for (int64_t k = 0; k < n; k++)
            if (c_ref[k] < 0 || (t->bits < 31 && c_ref[k] >= (1 << t->bits)))
                FZ_FAIL("unpack %s: code %d at %lld outside [0, 2^%d)", t->name, c_ref[k], (long long)k, t->bits);
        float *v = (float *)malloc(n > 0 ? (size_t)n * 4 : 1);
        const sdnq_status dc = sdnq_decode_ref(type, c_ref, n, v);
        if (dc != SDNQ_OK) FZ_FAIL("decode of unpacked %s codes: %s", t->name, sdnq_status_str(dc));
        for (int64_t k = 0; k < n; k++)
            if (!isfinite(v[k])) FZ_FAIL("decode %s code %d: %g", t->name, c_ref[k], (double)v[k]);
        free(v);
    }

    /* pack: any int32 codes (out-of-range ones spill as sdnq's packer lets them) */
    int32_t *codes = (int32_t *)fz_buffer(&r, nb, null0);
    uint8_t *d_ref = (uint8_t *)malloc(bytes > 0 ? (size_t)bytes : 1), *d_fast = (uint8_t *)malloc(bytes > 0 ? (size_t)bytes : 1);
    memset(d_ref, 0x3C, bytes > 0 ? (size_t)bytes : 1), memset(d_fast, 0x3C, bytes > 0 ? (size_t)bytes : 1);
    const sdnq_status p1 = sdnq_pack_ref(type, codes, n, bytes || !null0 ? d_ref : NULL, bytes);
    const sdnq_status p2 = sdnq_pack(type, codes, n, bytes || !null0 ? d_fast : NULL, bytes, nthreads);
    FZ_SAME_STATUS("pack", p1, p2);
    if (p1 != u1 && codes != NULL && src != NULL) FZ_FAIL("pack %s vs unpack %s on the same geometry", sdnq_status_str(p1), sdnq_status_str(u1));
    if (p1 == SDNQ_OK) {
        fz_same_bytes("packed words", d_ref, d_fast, bytes);
        /* in-range codes round-trip */
        for (int64_t k = 0; k < n; k++) codes[k] &= (int32_t)((1u << t->bits) - 1u);
        const sdnq_status p3 = sdnq_pack(type, codes, n, d_fast, bytes, nthreads);
        const sdnq_status u3 = sdnq_unpack(type, d_fast, bytes, n, c_fast, nthreads);
        if (p3 != SDNQ_OK || u3 != SDNQ_OK) FZ_FAIL("round trip: %s / %s", sdnq_status_str(p3), sdnq_status_str(u3));
        for (int64_t k = 0; k < n; k++)
            if (c_fast[k] != codes[k]) FZ_FAIL("round trip %s: code %d came back as %d", t->name, codes[k], c_fast[k]);
    }
    free(src), free(c_ref), free(c_fast), free(codes), free(d_ref), free(d_fast);
    return 0;
}
