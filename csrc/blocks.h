/*
 * blocks.h - comfy_sdnq internal header: sdnq's packing blocks, unpacked.
 *
 * One unpacker per bit width, written from the layout sdnq's packers produce
 * (docs/format.md has the tables). A block is `elems` codes in `words` storage
 * words (SDNQ_BLOCK lines of types.def). Unpackers extract fields by mask,
 * which is what sdnq's unpackers compute for any word contents.
 *
 * Every function is SDNQ_HD (host and device): the C core (pack.c) and the
 * CUDA kernels (csrc/cuda) share these bit layouts; there is no second copy.
 * Words are passed typed: the 1-bit block is one int64 word (sdnq packs bool
 * into int64; only its low 8 bits hold codes), 2..8 bits use uint8 words,
 * 9..16 bits 16-bit words (int16 in files, read as their bit pattern).
 */
#ifndef SDNQ_BLOCKS_H
#define SDNQ_BLOCKS_H

#include <stdint.h>

#include "codec.h" /* SDNQ_HD */

SDNQ_HD void sdnq_unpack1(uint64_t v, int32_t *a) {
    for (int k = 0; k < 8; k++) a[k] = (int32_t)((v >> k) & 1u);
}

SDNQ_HD void sdnq_unpack2(const uint8_t *w, int32_t *a) {
    uint32_t v = w[0];
    for (int k = 0; k < 4; k++) a[k] = (int32_t)((v >> (2 * k)) & 3u);
}

SDNQ_HD void sdnq_unpack3(const uint8_t *w, int32_t *a) {
    for (int j = 0; j < 3; j++) {
        a[j] = w[j] & 7;
        a[3 + j] = (w[j] >> 3) & 7;
    }
    a[6] = ((w[0] >> 6) | ((w[2] >> 4) & 4)) & 7;
    a[7] = ((w[1] >> 6) | ((w[2] >> 5) & 4)) & 7;
}

SDNQ_HD void sdnq_unpack4(const uint8_t *w, int32_t *a) {
    uint32_t v = w[0];
    a[0] = (int32_t)(v & 15u);
    a[1] = (int32_t)(v >> 4);
}

SDNQ_HD void sdnq_unpack5(const uint8_t *w, int32_t *a) {
    for (int j = 0; j < 5; j++) a[j] = w[j] & 31;
    a[5] = (w[0] >> 5) | ((w[3] >> 2) & 24);
    a[6] = (w[1] >> 5) | ((w[4] >> 2) & 24);
    a[7] = (w[2] >> 5) | ((w[3] >> 3) & 16) | ((w[4] >> 4) & 8);
}

SDNQ_HD void sdnq_unpack6(const uint8_t *w, int32_t *a) {
    for (int j = 0; j < 3; j++) a[j] = w[j] & 63;
    a[3] = ((w[0] >> 2) & 48) | ((w[1] >> 4) & 12) | (w[2] >> 6);
}

SDNQ_HD void sdnq_unpack7(const uint8_t *w, int32_t *a) {
    int32_t top = 0;
    for (int j = 0; j < 7; j++) {
        a[j] = w[j] & 127;
        top |= (w[j] >> 7) << (6 - j);
    }
    a[7] = top;
}

SDNQ_HD void sdnq_unpack8(const uint8_t *w, int32_t *a) { a[0] = w[0]; }

SDNQ_HD void sdnq_unpack9(const uint16_t *w, int32_t *a) {
    for (int j = 0; j < 8; j++) {
        a[j] = w[j] & 511;
        a[8 + j] = ((w[j] >> 9) & 127) | (((w[8] >> (2 * j)) & 3) << 7);
    }
}

SDNQ_HD void sdnq_unpack10(const uint16_t *w, int32_t *a) {
    for (int j = 0; j < 5; j++) a[j] = w[j] & 1023;
    a[5] = ((w[0] >> 10) & 63) | ((w[3] >> 4) & 960);
    a[6] = ((w[1] >> 10) & 63) | ((w[4] >> 4) & 960);
    a[7] = ((w[2] >> 10) & 63) | ((w[3] >> 6) & 768) | ((w[4] >> 8) & 192);
}

SDNQ_HD void sdnq_unpack11(const uint16_t *w, int32_t *a) {
    for (int j = 0; j < 8; j++) a[j] = w[j] & 2047;
    for (int j = 0; j < 3; j++) {
        a[8 + j] = ((w[j] >> 11) & 31) | ((w[8 + j] << 5) & 2016);
        a[11 + j] = ((w[3 + j] >> 11) & 31) | ((w[8 + j] >> 1) & 2016);
    }
    a[14] = ((w[6] >> 11) & 31) | ((w[8] >> 7) & 480) | ((w[10] >> 3) & 1536);
    a[15] = ((w[7] >> 11) & 31) | ((w[9] >> 7) & 480) | ((w[10] >> 5) & 1536);
}

SDNQ_HD void sdnq_unpack12(const uint16_t *w, int32_t *a) {
    for (int j = 0; j < 3; j++) a[j] = w[j] & 4095;
    a[3] = ((w[0] >> 4) & 3840) | ((w[1] >> 8) & 240) | ((w[2] >> 12) & 15);
}

SDNQ_HD void sdnq_unpack13(const uint16_t *w, int32_t *a) {
    for (int j = 0; j < 13; j++) a[j] = w[j] & 8191;
    for (int k = 0; k < 3; k++)
        a[13 + k] = ((w[k] >> 13) & 7) | ((w[3 + k] >> 10) & 56) | ((w[6 + k] >> 7) & 448) |
                    ((w[9 + k] >> 4) & 3584) | ((w[12] >> (k + 1)) & 4096);
}

SDNQ_HD void sdnq_unpack14(const uint16_t *w, int32_t *a) {
    int32_t top = 0;
    for (int j = 0; j < 7; j++) {
        a[j] = w[j] & 16383;
        top |= (w[j] >> 14) << (12 - 2 * j);
    }
    a[7] = top;
}

SDNQ_HD void sdnq_unpack15(const uint16_t *w, int32_t *a) {
    int32_t top = 0;
    for (int j = 0; j < 15; j++) {
        a[j] = w[j] & 32767;
        top |= (w[j] >> 15) << (14 - j);
    }
    a[15] = top;
}

SDNQ_HD void sdnq_unpack16(const uint16_t *w, int32_t *a) { a[0] = w[0]; }

/* One block of `bits` codes starting at w (the block's first storage word,
 * aligned to the word size): the unpacker of that width. */
SDNQ_HD void sdnq_unpack_block(int32_t bits, const void *w, int32_t *a) {
    switch (bits) {
    case 1: sdnq_unpack1((uint64_t) * (const int64_t *)w, a); break;
    case 2: sdnq_unpack2((const uint8_t *)w, a); break;
    case 3: sdnq_unpack3((const uint8_t *)w, a); break;
    case 4: sdnq_unpack4((const uint8_t *)w, a); break;
    case 5: sdnq_unpack5((const uint8_t *)w, a); break;
    case 6: sdnq_unpack6((const uint8_t *)w, a); break;
    case 7: sdnq_unpack7((const uint8_t *)w, a); break;
    case 8: sdnq_unpack8((const uint8_t *)w, a); break;
    case 9: sdnq_unpack9((const uint16_t *)w, a); break;
    case 10: sdnq_unpack10((const uint16_t *)w, a); break;
    case 11: sdnq_unpack11((const uint16_t *)w, a); break;
    case 12: sdnq_unpack12((const uint16_t *)w, a); break;
    case 13: sdnq_unpack13((const uint16_t *)w, a); break;
    case 14: sdnq_unpack14((const uint16_t *)w, a); break;
    case 15: sdnq_unpack15((const uint16_t *)w, a); break;
    case 16: sdnq_unpack16((const uint16_t *)w, a); break;
    default: break;
    }
}

#endif /* SDNQ_BLOCKS_H */
