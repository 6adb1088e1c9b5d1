/*
 * pack.c - SDNQ bit packing: stored codes <-> file words.
 *
 * One block packer and one block unpacker per bit width, each written from
 * the layout sdnq's packers produce (docs/format.md has the tables). Packers
 * reproduce sdnq's word arithmetic exactly, so a code of 2^bits (uint9..15
 * quantize their group maximum to it) spills into the neighbouring field the
 * same way. The unpackers (fields extracted by mask, what sdnq's unpackers
 * compute for any word contents) live in blocks.h, shared with the CUDA
 * kernels.
 *
 * Word types: uint8 for 2..7 bits, 16-bit words (int16 in files) for 9..15,
 * int64 words holding one byte for 1 bit (sdnq packs bool into int64), and
 * one uint8/uint16 per element for 8- and 16-bit custom float codes.
 */
#include <stdint.h>

#include "blocks.h"
#include "check.h"
#include "internal.h"

/* ------------------------------------------------------------------------ */
/* block packers: a[block_elems] (already in the word type) -> w[block_words] */

static void pack1(const uint32_t *a, void *wp) {
    int64_t v = 0;
    for (int k = 0; k < 8; k++) v |= (int64_t)a[k] << k;
    *(int64_t *)wp = v;
}

static void pack2(const uint32_t *a, void *wp) {
    *(uint8_t *)wp = (uint8_t)(a[0] | (a[1] << 2) | (a[2] << 4) | (a[3] << 6));
}

static void pack3(const uint32_t *a, void *wp) {
    uint8_t *w = (uint8_t *)wp;
    w[0] = (uint8_t)(a[0] | (a[3] << 3) | (a[6] << 6));
    w[1] = (uint8_t)(a[1] | (a[4] << 3) | (a[7] << 6));
    w[2] = (uint8_t)(a[2] | (a[5] << 3) | ((a[6] << 4) & 64u) | ((a[7] << 5) & 128u));
}

static void pack4(const uint32_t *a, void *wp) { *(uint8_t *)wp = (uint8_t)(a[0] | (a[1] << 4)); }

static void pack5(const uint32_t *a, void *wp) {
    uint8_t *w = (uint8_t *)wp;
    for (int j = 0; j < 3; j++) w[j] = (uint8_t)(a[j] | (a[5 + j] << 5));
    w[3] = (uint8_t)(a[3] | ((a[5] << 2) & 96u) | ((a[7] << 3) & 128u));
    w[4] = (uint8_t)(a[4] | ((a[6] << 2) & 96u) | ((a[7] << 4) & 128u));
}

static void pack6(const uint32_t *a, void *wp) {
    uint8_t *w = (uint8_t *)wp;
    for (int j = 0; j < 3; j++) w[j] = (uint8_t)(a[j] | ((a[3] << (2 + 2 * j)) & 192u));
}

static void pack7(const uint32_t *a, void *wp) {
    uint8_t *w = (uint8_t *)wp;
    for (int j = 0; j < 7; j++) w[j] = (uint8_t)(a[j] | ((a[7] << (j + 1)) & 128u));
}

static void pack8(const uint32_t *a, void *wp) { *(uint8_t *)wp = (uint8_t)a[0]; }

static void pack9(const uint32_t *a, void *wp) {
    uint16_t *w = (uint16_t *)wp;
    for (int j = 0; j < 8; j++) w[j] = (uint16_t)(a[j] | (a[8 + j] << 9));
    w[8] = (uint16_t)(((a[8] >> 7) & 3u) | ((a[9] >> 5) & 12u) | ((a[10] >> 3) & 48u) | ((a[11] >> 1) & 192u) |
                      ((a[12] << 1) & 768u) | ((a[13] << 3) & 3072u) | ((a[14] << 5) & 12288u) |
                      ((a[15] << 7) & 49152u));
}

static void pack10(const uint32_t *a, void *wp) {
    uint16_t *w = (uint16_t *)wp;
    for (int j = 0; j < 3; j++) w[j] = (uint16_t)(a[j] | (a[5 + j] << 10));
    w[3] = (uint16_t)(a[3] | ((a[5] << 4) & 15360u) | ((a[7] << 6) & 49152u));
    w[4] = (uint16_t)(a[4] | ((a[6] << 4) & 15360u) | ((a[7] << 8) & 49152u));
}

static void pack11(const uint32_t *a, void *wp) {
    uint16_t *w = (uint16_t *)wp;
    for (int j = 0; j < 8; j++) w[j] = (uint16_t)(a[j] | (a[8 + j] << 11));
    w[8] = (uint16_t)(((a[8] >> 5) & 63u) | ((a[11] << 1) & 4032u) | ((a[14] << 7) & 0xF000u));
    w[9] = (uint16_t)(((a[9] >> 5) & 63u) | ((a[12] << 1) & 4032u) | ((a[15] << 7) & 0xF000u));
    w[10] = (uint16_t)(((a[10] >> 5) & 63u) | ((a[13] << 1) & 4032u) | ((a[14] << 3) & 12288u) |
                       ((a[15] << 5) & 0xC000u));
}

static void pack12(const uint32_t *a, void *wp) {
    uint16_t *w = (uint16_t *)wp;
    for (int j = 0; j < 3; j++) w[j] = (uint16_t)(a[j] | ((a[3] << (4 + 4 * j)) & 61440u));
}

static void pack13(const uint32_t *a, void *wp) {
    uint16_t *w = (uint16_t *)wp;
    static const int shift[4] = {13, 10, 7, 4};
    for (int j = 0; j < 12; j++) w[j] = (uint16_t)(a[j] | ((a[13 + j % 3] << shift[j / 3]) & 57344u));
    w[12] = (uint16_t)(a[12] | ((((a[13] << 1) & 8192u) | ((a[14] << 2) & 16384u) | ((a[15] << 3) & 32768u)) & 57344u));
}

static void pack14(const uint32_t *a, void *wp) {
    uint16_t *w = (uint16_t *)wp;
    for (int j = 0; j < 7; j++) w[j] = (uint16_t)(a[j] | ((a[7] << (2 + 2 * j)) & 49152u));
}

static void pack15(const uint32_t *a, void *wp) {
    uint16_t *w = (uint16_t *)wp;
    for (int j = 0; j < 15; j++) w[j] = (uint16_t)(a[j] | ((a[15] << (j + 1)) & 32768u));
}

static void pack16(const uint32_t *a, void *wp) { *(uint16_t *)wp = (uint16_t)a[0]; }

/* ------------------------------------------------------------------------ */
/* block unpackers: blocks.h (shared with the CUDA kernels), behind one      */
/* signature so a table can pick them                                        */

static void unpack1(const void *wp, int32_t *a) { sdnq_unpack1((uint64_t) * (const int64_t *)wp, a); }
#define UNPACK_BYTES(n) \
    static void unpack##n(const void *wp, int32_t *a) { sdnq_unpack##n((const uint8_t *)wp, a); }
#define UNPACK_WORDS(n) \
    static void unpack##n(const void *wp, int32_t *a) { sdnq_unpack##n((const uint16_t *)wp, a); }
UNPACK_BYTES(2) UNPACK_BYTES(3) UNPACK_BYTES(4) UNPACK_BYTES(5) UNPACK_BYTES(6) UNPACK_BYTES(7) UNPACK_BYTES(8)
UNPACK_WORDS(9) UNPACK_WORDS(10) UNPACK_WORDS(11) UNPACK_WORDS(12) UNPACK_WORDS(13) UNPACK_WORDS(14)
UNPACK_WORDS(15) UNPACK_WORDS(16)
#undef UNPACK_BYTES
#undef UNPACK_WORDS

typedef void (*pack_block_fn)(const uint32_t *a, void *w);
typedef void (*unpack_block_fn)(const void *w, int32_t *a);

static const pack_block_fn pack_block[17] = {NULL,   pack1,  pack2,  pack3,  pack4,  pack5,
                                             pack6,  pack7,  pack8,  pack9,  pack10, pack11,
                                             pack12, pack13, pack14, pack15, pack16};
static const unpack_block_fn unpack_block[17] = {NULL,     unpack1,  unpack2,  unpack3,  unpack4,  unpack5,
                                                 unpack6,  unpack7,  unpack8,  unpack9,  unpack10, unpack11,
                                                 unpack12, unpack13, unpack14, unpack15, unpack16};

/* A code as sdnq's packer sees it after converting to the storage dtype:
 * uint8 (wrapping), int16 (wrapping; kept as its 16-bit pattern) or bool. */
static uint32_t to_word_type(int32_t code, int32_t bits) {
    if (bits == 1) return code != 0;
    if (bits <= 8) return (uint8_t)code;
    return (uint16_t)code;
}

/* ------------------------------------------------------------------------ */
/* block access shared with dequant.c (geometry checks: check.h)           */

void sdnq_unpack_blocks(const sdnq_type_traits *t, const void *src, int64_t b0, int64_t nb, int32_t *codes) {
    unpack_block_fn f = unpack_block[t->bits];
    const int64_t wbytes = (int64_t)t->block_words * sdnq_dtype_size(t->storage);
    const uint8_t *s = (const uint8_t *)src + b0 * wbytes;
    for (int64_t b = 0; b < nb; b++) f(s + b * wbytes, codes + b * t->block_elems);
}

int32_t sdnq_code_at(const sdnq_type_traits *t, const void *src, int64_t e) {
    int32_t block[16];
    int64_t b = e / t->block_elems;
    sdnq_unpack_blocks(t, src, b, 1, block);
    return block[e - b * t->block_elems];
}

/* ------------------------------------------------------------------------ */
/* reference entry points: one block at a time, no threads                  */

sdnq_status sdnq_pack_ref(int32_t type, const int32_t *codes, int64_t n, void *dst, int64_t dst_bytes) {
    const sdnq_type_traits *t;
    int64_t blocks;
    sdnq_status st = sdnq_packed_geometry(type, n, dst_bytes, &t, &blocks);
    if (st != SDNQ_OK) return st;
    if (n > 0 && (codes == NULL || dst == NULL)) return SDNQ_ERR_NULL;
    const int64_t wbytes = (int64_t)t->block_words * sdnq_dtype_size(t->storage);
    for (int64_t b = 0; b < blocks; b++) {
        uint32_t a[16];
        for (int k = 0; k < t->block_elems; k++) a[k] = to_word_type(codes[b * t->block_elems + k], t->bits);
        pack_block[t->bits](a, (uint8_t *)dst + b * wbytes);
    }
    return SDNQ_OK;
}

sdnq_status sdnq_unpack_ref(int32_t type, const void *src, int64_t src_bytes, int64_t n, int32_t *codes) {
    const sdnq_type_traits *t;
    int64_t blocks;
    sdnq_status st = sdnq_packed_geometry(type, n, src_bytes, &t, &blocks);
    if (st != SDNQ_OK) return st;
    if (n > 0 && (codes == NULL || src == NULL)) return SDNQ_ERR_NULL;
    for (int64_t e = 0; e < n; e++) codes[e] = sdnq_code_at(t, src, e);
    return SDNQ_OK;
}

/* ------------------------------------------------------------------------ */
/* fast entry points: runs of blocks per thread, loops the compiler unrolls */

#define CHUNK_BLOCKS 4096

sdnq_status sdnq_pack(int32_t type, const int32_t *codes, int64_t n, void *dst, int64_t dst_bytes, int32_t nthreads) {
    const sdnq_type_traits *t;
    int64_t blocks;
    sdnq_status st = sdnq_packed_geometry(type, n, dst_bytes, &t, &blocks);
    if (st != SDNQ_OK) return st;
    if (n > 0 && (codes == NULL || dst == NULL)) return SDNQ_ERR_NULL;
    const int64_t wbytes = (int64_t)t->block_words * sdnq_dtype_size(t->storage);
    const int64_t nchunks = (blocks + CHUNK_BLOCKS - 1) / CHUNK_BLOCKS;
    const pack_block_fn f = pack_block[t->bits];
    const int32_t bits = t->bits, be = t->block_elems;
    int64_t c;
#pragma omp parallel for num_threads(sdnq_threads(nthreads, nchunks)) schedule(static)
    for (c = 0; c < nchunks; c++) {
        int64_t b1 = (c + 1) * CHUNK_BLOCKS < blocks ? (c + 1) * CHUNK_BLOCKS : blocks;
        for (int64_t b = c * CHUNK_BLOCKS; b < b1; b++) {
            uint32_t a[16];
            const int32_t *src = codes + b * be;
            for (int k = 0; k < be; k++) a[k] = to_word_type(src[k], bits);
            f(a, (uint8_t *)dst + b * wbytes);
        }
    }
    return SDNQ_OK;
}

sdnq_status sdnq_unpack(int32_t type, const void *src, int64_t src_bytes, int64_t n, int32_t *codes, int32_t nthreads) {
    const sdnq_type_traits *t;
    int64_t blocks;
    sdnq_status st = sdnq_packed_geometry(type, n, src_bytes, &t, &blocks);
    if (st != SDNQ_OK) return st;
    if (n > 0 && (codes == NULL || src == NULL)) return SDNQ_ERR_NULL;
    const int64_t nchunks = (blocks + CHUNK_BLOCKS - 1) / CHUNK_BLOCKS;
    int64_t c;
#pragma omp parallel for num_threads(sdnq_threads(nthreads, nchunks)) schedule(static)
    for (c = 0; c < nchunks; c++) {
        int64_t b0 = c * CHUNK_BLOCKS;
        int64_t nb = blocks - b0 < CHUNK_BLOCKS ? blocks - b0 : CHUNK_BLOCKS;
        sdnq_unpack_blocks(t, src, b0, nb, codes + b0 * t->block_elems);
    }
    return SDNQ_OK;
}
