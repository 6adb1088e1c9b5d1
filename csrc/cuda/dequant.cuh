/*
 * dequant.cuh - SDNQ dequantization kernels: codes + scale (+ zero-point or
 * codebook levels) -> dense weights, bit for bit what sdnq_dequantize (the C
 * core, csrc/dequant.c) writes.
 *
 * Element (o, j, i) of the [outer, red, inner] index space (sdnq.h) is code
 * e = (o*red + j)*inner + i, group (o, i):
 *   r = round_sdt(value(code) * scale)                    symmetric families
 *   r = round_sdt(fma(value, scale, zp)) (fp32 scales) /
 *       round_sdt(value * scale + zp)   (bf16/fp16: the product is exact)
 *   r = levels[code]                                      codebook
 * then stored rounded to the output dtype. value() is codec.h's
 * sdnq_weight_value, codes come from blocks.h: the CPU core's functions, so
 * the bits agree by construction.
 *
 * Four kernels:
 *
 * dequant_grouped_kernel<BITS, SDT, ODT, ASYM> - the fast path of the linear layouts
 *   (inner == 1, groups of a multiple of 8 codes: each unit of 8 codes lies in one group):
 *   like the flat kernel below, with every dtype and the zero point compile-time and each
 *   unit's scale loaded together with its codes (group = multiply-high, no division), so all of
 *   a thread's loads are in flight at once.
 *
 * dequant_flat_kernel<BITS, SDT> - the other code-order layouts, for types of at most
 *   8 bits (every packed width up to 7, 8-bit codes, int8/uint8/fp8 natives),
 *   no codebook, output contiguous in code order (o*red*inner + j*inner + i:
 *   row-wise, grouped, tensor-wise and conv layouts; not the transposed one).
 *   A thread takes whole units of 8 codes (a whole number of packing blocks
 *   for every such width): one load of the unit's bytes (8/2/4/8 bytes for
 *   1/2/4/8 bits, or 3/5/6/7 bytes), unpacks it in registers, reads the 2^BITS
 *   values from a lookup table in shared memory (built with sdnq_weight_value,
 *   like the C fast path), and writes the 8 results with one 16-byte store
 *   (two for fp32; the output dtype is a run-time switch). Consecutive threads
 *   take consecutive units, so loads and stores are coalesced across a warp;
 *   each thread has 8 (units of <= 4 bytes) or 4 units in flight; the grid is
 *   8 blocks per multiprocessor, looping, so the table is built once per block.
 *   Roundings use the hardware's round-to-nearest-even conversions (codec.h's
 *   bits for every non-NaN value). The scale (and zero-point) is read once per
 *   unit when the unit lies in one group (inner == 1 and the group spans it),
 *   else per element. Assumes: codes and out 16-byte aligned, fewer than 2^31
 *   codes.
 *
 * dequant_svd_kernel<BITS, ODT, SDT> - the same elementwise stage with the SVD
 *   correction (up @ down) added before the output rounding, on 64 x 128
 *   tiles, the rank product on the tensor cores (see below).
 *
 * dequant_general_kernel - everything else (codebooks, strided or transposed
 *   output, 9..16-bit packed types, 16/32-bit native types, unaligned
 *   buffers, the tail of the flat kernel): one packing block per thread
 *   (blocks.h's unpacker for the width, reading the block's words from
 *   global memory), dtypes chosen at run time, every address through the
 *   descriptor's strides.
 */
#ifndef SDNQ_CUDA_DEQUANT_CUH
#define SDNQ_CUDA_DEQUANT_CUH

#include "common.cuh"

namespace sdnq_cuda {

struct DequantArgs {
    sdnq_type_traits t;
    const void *codes, *scale, *zp;
    void *out;
    int64_t outer, red, inner;
    int64_t ss0, ss1, ss2, zs0, zs1, os0, os1, os2;
    int32_t sdt, odt;
    int32_t asym, codebook;
    int64_t levels;
    int64_t block_bytes;      /* bytes per packing block (native: element size) */
    int64_t units;            /* flat, grouped, SVD kernels: full units of 8 codes */
    int64_t b_begin, b_end;   /* general kernel: packing blocks to dequantize  */
    /* grouped kernel: units per scale group (red / 8) and ceil(2^64 / gunits), so that
     * group(u) = __umul64hi(u, gmagic) exactly for every u < 2^32 (gunits >= 2) */
    uint32_t gunits;
    uint64_t gmagic;
    /* int8 output (sdnq_cuda_dequantize_q8, the grouped kernel's Q8 form): each value, rounded to the output
     * dtype, divided by its row's q8_scale and rounded to int8 as quantize_rows does; q8_upr units
     * per row and ceil(2^64 / q8_upr) give a unit's row by a multiply-high */
    const float *q8_scale;
    uint32_t q8_upr;
    uint64_t q8_rmagic;
};

/* 8 values already rounded to their dtype -> clamp(round_half_even(v / s), -128, 127), quantize_rows'
 * codes for a row scale s (zeros where s is 0), 8 bytes at out + e0 (8-byte aligned); v / s as
 * quantize_rows divides (codec.h's sdnq_row_div with the row's reciprocal, the division outside its
 * range of scales) */
__device__ __forceinline__ void store_unit_q8(void *out, int64_t e0, const float (&r)[UNIT], float s) {
    const bool quick = sdnq_row_div_quick(s);
    const float rs = __frcp_rn(s);
    float v[UNIT];
#pragma unroll
    for (int k = 0; k < UNIT; k++) v[k] = row_quotient(r[k], s, rs, quick);
    *(uint2 *)((int8_t *)out + e0) = q8_pack<SDNQ_DT_I8>(v);
}

/* sdnq_cuda_dequantize_q8's derived row scales, a warp per row: the largest |w| of the row's groups'
 * values at codes vlo and vhi (the type's extremes), rounded to ODT as the dequantizer rounds (the
 * lanes take every 32nd group, their loads in flight together; then a shuffle reduction), / 127 as
 * quantize_rows divides. Row r's elements [r * cols, (r + 1) * cols) lie in groups r * cols / red
 * .. ((r + 1) * cols - 1) / red. */
constexpr int Q8_SCALE_THREADS = 256;

template <int SDT, int ODT, bool ASYM>
__global__ void __launch_bounds__(Q8_SCALE_THREADS)
    q8_row_scale_kernel(const DequantArgs a, int64_t rows, int64_t cols, float vlo, float vhi, float *scale) {
    grid_dependency_trigger(); /* the quantizing kernel may start: it waits for these scales */
    const int lane = threadIdx.x % 32;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
        const int64_t g1 = ((r + 1) * cols - 1) / a.red;
        float m = 0.0f;
#pragma unroll 4
        for (int64_t g = r * cols / a.red + lane; g <= g1; g += 32) {
            const float s = ld_float<SDT>(a.scale, g * a.ss0), z = ASYM ? ld_float<SDT>(a.zp, g * a.zs0) : 0.0f;
            const float lo = round_to_hw<ODT>(dq_value<SDT, ODT, ASYM>(vlo, s, z));
            const float hi = round_to_hw<ODT>(dq_value<SDT, ODT, ASYM>(vhi, s, z));
            m = fmaxf(m, fmaxf(fabsf(lo), fabsf(hi)));
        }
#pragma unroll
        for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, off));
        if (lane == 0) scale[r] = __fdiv_rn(m, 127.0f);
    }
}

constexpr int FLAT_THREADS = 256;
constexpr int FLAT_BLOCKS_PER_SM = 8; /* the flat kernel's grid: SMs x this (grid-stride loop) */
constexpr int GENERAL_THREADS = 256;

/* 8 results -> out, the output dtype chosen at run time (uniform branch) */
__device__ __forceinline__ void store_unit_rt(void *out, int32_t odt, int64_t e0, const float (&r)[UNIT]) {
    if (odt == SDNQ_DT_BF16) store_unit<SDNQ_DT_BF16>(out, e0, r);
    else if (odt == SDNQ_DT_F16) store_unit<SDNQ_DT_F16>(out, e0, r);
    else store_unit<SDNQ_DT_F32>(out, e0, r);
}

/* the values of one unit (codes e0 .. e0+8), with (o, rem) = divmod(e0, red*inner) given */
template <int BITS, int SDT>
__device__ __forceinline__ void dequant_unit_vals(const DequantArgs &a, const float *lut,
                                                  const uint8_t (&b)[unit_geom<BITS>::bytes], uint32_t o, uint32_t rem,
                                                  uint32_t span, float (&r)[UNIT]) {
    int32_t c[UNIT];
    unpack_unit<BITS>(b, c);
    const bool asym = a.asym != 0;
    if (a.inner == 1 && rem + UNIT <= span) { /* one group for the whole unit */
        const float s = ld_float<SDT>(a.scale, (int64_t)o * a.ss0);
        const float z = asym ? ld_float<SDT>(a.zp, (int64_t)o * a.zs0) : 0.0f;
#pragma unroll
        for (int k = 0; k < UNIT; k++) r[k] = scale_value_hw<SDT>(lut[c[k]], s, z, asym);
    } else {
        const uint32_t inner = (uint32_t)a.inner;
        uint32_t i = rem % inner;
#pragma unroll
        for (int k = 0; k < UNIT; k++) {
            const float s = ld_float<SDT>(a.scale, (int64_t)o * a.ss0 + (int64_t)i * a.ss1);
            const float z = asym ? ld_float<SDT>(a.zp, (int64_t)o * a.zs0 + (int64_t)i * a.zs1) : 0.0f;
            r[k] = scale_value_hw<SDT>(lut[c[k]], s, z, asym);
            if (++i == inner) i = 0;
            if (++rem == span) { /* next outer index: i wrapped too (span = red*inner) */
                rem = 0;
                o++;
            }
        }
    }
}

/* one unit u, its group found by division */
template <int BITS, int SDT>
__device__ __forceinline__ void dequant_unit(const DequantArgs &a, const float *lut,
                                             const uint8_t (&b)[unit_geom<BITS>::bytes], int64_t u) {
    const uint32_t span = (uint32_t)(a.red * a.inner); /* codes per outer index (< 2^31) */
    const uint32_t e0 = (uint32_t)(u * UNIT);
    const uint32_t o = e0 / span, rem = e0 - o * span;
    float r[UNIT];
    dequant_unit_vals<BITS, SDT>(a, lut, b, o, rem, span, r);
    store_unit_rt(a.out, a.odt, (int64_t)e0, r);
}

/* units of 8 codes per thread in flight: 32 bytes of codes for 4-bit and narrower units */
template <int BITS> struct flat_geom {
    static constexpr int UB = unit_geom<BITS>::bytes;
    static constexpr int UNROLL = UB <= 4 ? 8 : 4;
};

/* consecutive threads take consecutive units (coalesced loads and 16-byte stores); UNROLL
 * units in flight per thread, grid-stride */
template <int BITS, int SDT> __device__ __forceinline__ void dequant_flat_units(const DequantArgs &a, const float *lut) {
    constexpr int UB = unit_geom<BITS>::bytes, UNROLL = flat_geom<BITS>::UNROLL;
    const int64_t tile = (int64_t)blockDim.x * UNROLL;
    for (int64_t base = (int64_t)blockIdx.x * tile; base < a.units; base += (int64_t)gridDim.x * tile) {
        uint8_t b[UNROLL][UB];
#pragma unroll
        for (int q = 0; q < UNROLL; q++) { /* every load first */
            const int64_t u = base + (int64_t)q * blockDim.x + threadIdx.x;
            if (u < a.units) load_bytes<UB>((const uint8_t *)a.codes + u * UB, b[q]);
        }
#pragma unroll
        for (int q = 0; q < UNROLL; q++) {
            const int64_t u = base + (int64_t)q * blockDim.x + threadIdx.x;
            if (u < a.units) dequant_unit<BITS, SDT>(a, lut, b[q], u);
        }
    }
}

template <int BITS, int SDT> __global__ void __launch_bounds__(FLAT_THREADS) dequant_flat_kernel(const DequantArgs a) {
    __shared__ float lut[1 << BITS];
    build_lut(lut, a.t, SDT);
    __syncthreads();
    dequant_flat_units<BITS, SDT>(a, lut);
}

/* ------------------------------------------------------------------------ */
/* the grouped kernel: inner == 1 and groups of a multiple of 8 codes, so every unit lies in
 * one scale group (row-wise, grouped and tensor-wise linear weights: every sdnq layout of a
 * Linear that is not matmul-ready) */

/* the bytes of one unit as little-endian 32-bit words */
template <int BITS> struct UnitWords {
    static constexpr int UB = unit_geom<BITS>::bytes;
    uint32_t w[(UB + 3) / 4];
};

/* the unit at byte `off` of the codes (nbytes of them, 4-byte aligned). Units of 3, 5, 6 or 7
 * bytes lie at any byte: where the 12 bytes from off on are codes, the 2 or 3 aligned 32-bit
 * words that cover the unit, funnel-shifted into place (2-3 loads instead of 3-7 byte loads;
 * bytes past the unit stay in the last word, and unpacking reads the unit's own bytes only);
 * the last one or two units, whose words would reach past the codes, by byte loads. */
template <int BITS>
__device__ __forceinline__ void load_unit_words(const void *codes, uint32_t off, uint32_t nbytes, UnitWords<BITS> &u) {
    constexpr int UB = unit_geom<BITS>::bytes;
    const uint8_t *p = (const uint8_t *)codes + off;
    if constexpr (UB == 3 || UB == 5 || UB == 6 || UB == 7) {
        if (off + 12 <= nbytes) {
            constexpr int NW = (UB + 6) / 4; /* words covering (p % 4) + UB <= UB + 3 bytes */
            const uint32_t *wp = (const uint32_t *)((uintptr_t)p & ~(uintptr_t)3);
            const uint32_t sh = 8u * (uint32_t)((uintptr_t)p & 3);
            uint32_t raw[NW + 1]; /* raw[NW]: zero bits for the last word's shift (5-byte units) */
#pragma unroll
            for (int i = 0; i < NW; i++) raw[i] = __ldg(wp + i);
            raw[NW] = 0;
#pragma unroll
            for (int i = 0; i < (UB + 3) / 4; i++) u.w[i] = __funnelshift_r(raw[i], raw[i + 1], sh);
            return;
        }
    }
    if constexpr (UB == 8) {
        const uint2 v = __ldg((const uint2 *)p);
        u.w[0] = v.x;
        u.w[1] = v.y;
    } else if constexpr (UB == 4) {
        u.w[0] = __ldg((const unsigned int *)p);
    } else if constexpr (UB == 2) {
        u.w[0] = __ldg((const unsigned short *)p);
    } else {
        uint8_t b[UB];
        load_bytes<UB>(p, b);
#pragma unroll
        for (int i = 0; i < (UB + 3) / 4; i++) u.w[i] = 0;
#pragma unroll
        for (int i = 0; i < UB; i++) u.w[i / 4] |= (uint32_t)b[i] << (8 * (i % 4));
    }
}

/* the 8 codes of a unit (blocks.h's bit order: 2-, 4- and 8-bit codes lie in the word
 * low bits first, code k at bit BITS*k) */
template <int BITS> __device__ __forceinline__ void unpack_unit_words(const UnitWords<BITS> &u, int32_t (&c)[UNIT]) {
    if constexpr (BITS == 2 || BITS == 4) {
#pragma unroll
        for (int k = 0; k < UNIT; k++) c[k] = (int32_t)((u.w[0] >> (BITS * k)) & ((1u << BITS) - 1));
    } else if constexpr (BITS == 8) {
#pragma unroll
        for (int k = 0; k < UNIT; k++) c[k] = (int32_t)((u.w[k / 4] >> (8 * (k % 4))) & 0xFFu);
    } else {
        constexpr int UB = unit_geom<BITS>::bytes;
        uint8_t b[UB];
#pragma unroll
        for (int i = 0; i < UB; i++) b[i] = (uint8_t)(u.w[i / 4] >> (8 * (i % 4)));
        unpack_unit<BITS>(b, c);
    }
}

/* the lookup-table values of a unit's 8 codes; 2-, 4- and 8-bit codes (whole codes per word)
 * take their byte offsets into the table from one shift and one mask each */
template <int BITS>
__device__ __forceinline__ void lut_unit_values(const float *lut, const UnitWords<BITS> &u, float (&v)[UNIT]) {
    if constexpr (BITS == 2 || BITS == 4 || BITS == 8) {
        constexpr int PER = 32 / BITS;                 /* codes per word */
        constexpr uint32_t MASK = ((1u << BITS) - 1) << 2; /* code * 4 */
#pragma unroll
        for (int k = 0; k < UNIT; k++) {
            const uint32_t w = u.w[k / PER];
            const int sh = BITS * (k % PER) - 2;
            const uint32_t off = (sh >= 0 ? w >> sh : w << -sh) & MASK;
            v[k] = *(const float *)((const char *)lut + off);
        }
    } else {
        int32_t c[UNIT];
        unpack_unit_words<BITS>(u, c);
#pragma unroll
        for (int k = 0; k < UNIT; k++) v[k] = lut[c[k]];
    }
}

/* units of 8 codes per thread per step */
template <int BITS> struct grouped_geom {
    static constexpr int UNROLL = unit_geom<BITS>::bytes <= 4 ? 8 : 4;
};

/*
 * dequant_grouped_kernel<BITS, SDT, ODT, ASYM>: as the flat kernel (consecutive threads take
 * consecutive units: coalesced loads, one 16-byte store per unit), with every dtype and the
 * zero point compile-time, and each unit's scale (and zero point) loaded together with its
 * codes - the group index by a multiply-high instead of a division - so a thread's UNROLL
 * units have all their loads in flight at once and no load waits on another.
 */
/* one step of a thread: units base + q*nt + threadIdx.x (q < UNROLL); FULL: all of them exist */
template <int BITS, int SDT, int ODT, bool ASYM, bool Q8, bool FULL>
__device__ __forceinline__ void grouped_step(const DequantArgs &a, const float *lut, uint32_t base, uint32_t units) {
    constexpr int UB = unit_geom<BITS>::bytes, UNROLL = grouped_geom<BITS>::UNROLL;
    const uint32_t nt = blockDim.x, nbytes = units * UB;
    UnitWords<BITS> w[UNROLL];
    float s[UNROLL] = {}, z[UNROLL] = {};
#pragma unroll
    for (int q = 0; q < UNROLL; q++) { /* every load first */
        const uint32_t u = base + q * nt + threadIdx.x;
        if (FULL || u < units) {
            load_unit_words<BITS>(a.codes, u * UB, nbytes, w[q]);
            const uint32_t g = a.gunits == 1 ? u : (uint32_t)__umul64hi((unsigned long long)u, a.gmagic);
            s[q] = ld_float<SDT>(a.scale, (int64_t)g * a.ss0);
            if constexpr (ASYM) z[q] = ld_float<SDT>(a.zp, (int64_t)g * a.zs0);
        }
    }
    /* the int8 form: the row scales come from the kernel before (a programmatic dependent launch
     * of it on sm_90+): the loads above were issued while it ran */
    if constexpr (Q8) grid_dependency_wait();
#pragma unroll
    for (int q = 0; q < UNROLL; q++) {
        const uint32_t u = base + q * nt + threadIdx.x;
        if (FULL || u < units) {
            int32_t c[UNIT];
            unpack_unit_words<BITS>(w[q], c);
            float r[UNIT];
#pragma unroll
            for (int k = 0; k < UNIT; k++) r[k] = dq_value<SDT, ODT, ASYM>(lut[c[k]], s[q], z[q]);
            if constexpr (Q8) {
                round_unit_hw<ODT>(r);
                const uint32_t row = a.q8_upr == 1 ? u : (uint32_t)__umul64hi((unsigned long long)u, a.q8_rmagic);
                store_unit_q8(a.out, (int64_t)u * UNIT, r, __ldg(a.q8_scale + row));
            } else {
                store_unit<ODT>(a.out, (int64_t)u * UNIT, r);
            }
        }
    }
}

template <int BITS, int SDT, int ODT, bool ASYM, bool Q8 = false>
__global__ void __launch_bounds__(FLAT_THREADS, 4) dequant_grouped_kernel(const DequantArgs a) {
    __shared__ float lut[1 << BITS];
    build_lut(lut, a.t, SDT);
    __syncthreads();
    const uint32_t units = (uint32_t)a.units, tile = blockDim.x * grouped_geom<BITS>::UNROLL;
    const uint32_t stride = gridDim.x * tile;
    uint32_t base = blockIdx.x * tile;
    for (; base + tile <= units; base += stride) grouped_step<BITS, SDT, ODT, ASYM, Q8, true>(a, lut, base, units);
    if (base < units) grouped_step<BITS, SDT, ODT, ASYM, Q8, false>(a, lut, base, units);
}

/* ------------------------------------------------------------------------ */
/* dequantization with the SVD correction fused: w = round(round_mid(elementwise) + up @ down) */

constexpr int SVDQ_TR = 64, SVDQ_TC = 128; /* tile rows, columns                                 */
constexpr int SVDQ_RANK = 32;              /* the largest rank fused (one k32 step pair per tile) */
constexpr int SVDQ_THREADS = 256;          /* 8 warps: 4 bands of 16 rows x 2 groups of 64 columns */
constexpr int SVDQ_BLOCKS_PER_SM = 2;      /* the grid: one wave                                   */

struct SvdDequantArgs {
    DequantArgs d;          /* the elementwise stage: flat output, inner == 1, gunits/gmagic set */
    int64_t rows, cols;     /* the weight [rows, cols] row-major: code e = r*cols + c */
    int64_t strips;         /* column strips of SVDQ_TC */
    int32_t rank;           /* 1 .. SVDQ_RANK */
    const void *up, *down;  /* up[r, j] at r*us0 + j*us1, down[j, c] at j*ds0 + c*ds1; out dtype */
    int64_t us0, us1, ds0, ds1;
    /* 16-byte loads: up rows contiguous along j (up_vec); down contiguous along j (sdnq's
     * column-major factor, "down_t", rank % 8 == 0) or along c ("down_c"); else 2-byte loads */
    int32_t up_vec, down_t, down_c;
    /* the loads' offsets (SvdCursor) are 32-bit: the codes' bytes because n <= INT32_MAX, the last
     * scale, zero-point and up-row offsets checked by the launcher; with `inc` (no scale group
     * straddles a row) 8 rows further on is s8 / z8 / u8 scale, zero-point and up elements on */
    int32_t inc;
    uint32_t s8, z8, u8;
};

/*
 * The fragment layout. A warp computes the correction of 16 rows x 64 columns, two halves of 32
 * columns, with m16n8k16 MMAs whose k index (the rank) and n index (the column) are permuted so
 * that each lane's accumulators are whole units: lane (g, t) = (lane / 4, lane % 4) holds rows g
 * and g + 8 of the band at columns 8t .. 8t+8 of each half, exactly the four units it
 * dequantizes, so the correction never leaves registers (both halves share the A fragments: the
 * same up rows). In the MMA's own indices, logical column n of n8-tile j
 * is column 8(n/2) + 2j + n%2, and logical rank 16s + 8h + 2t + e (k-step s, half h) is rank
 * 8t + 4s + 2h + e: the A fragment of a lane is then up[row][8t .. 8t+8] (one 16-byte load per
 * row), its B fragment dsT[column][8t .. 8t+8] (one 16-byte shared load per n8-tile).
 */

/* what one lane loads for one tile: its four units (unit 2h + i: row g + 8i, half h) with their
 * scales (zero points), and the two up rows */
template <int BITS> struct SvdUnits {
    UnitWords<BITS> b[4];
    float s[4], z[4];
    uint4 up[2]; /* up[row g + 8i][8t .. 8t+8], zero past the rank */
    bool ok[4];  /* the unit lies in the weight */
};

/* up[row][k0 .. k0+8] as 8 packed 16-bit values, zero past the rank; ro = row * us0 */
__device__ __forceinline__ uint4 svdq_up8(const SvdDequantArgs &a, uint32_t ro, int k0) {
    const uint16_t *up16 = (const uint16_t *)a.up + ro;
    if (a.up_vec && k0 + 8 <= a.rank) return __ldg((const uint4 *)(up16 + k0));
    uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
    for (int q = 0; q < 8; q++)
        if (k0 + q < a.rank) w[q / 2] |= (uint32_t)__ldg(up16 + (int64_t)(k0 + q) * a.us1) << (16 * (q % 2));
    return make_uint4(w[0], w[1], w[2], w[3]);
}

/* Where a lane's loads of a tile start: its row r in the tile's first band row (g, and r + 8),
 * column c, and the offsets of its codes (bytes), scale, zero point and up row (elements, up
 * without the lane's rank offset 8t), all 32-bit. svdq_seek computes them from the position;
 * svdq_down moves the cursor 8 * n8 rows down the same column: with SvdDequantArgs.inc by fixed
 * steps added to each offset instead of a division and four multiplications, else by seeking. */
struct SvdCursor {
    uint32_t r, c, co, so, zo, uo;
};

template <int BITS>
__device__ __forceinline__ void svdq_seek(const SvdDequantArgs &a, uint32_t r, uint32_t c, SvdCursor &k) {
    constexpr int UB = unit_geom<BITS>::bytes;
    k.r = r;
    k.c = c;
    /* n <= INT32_MAX: element and unit indices fit 32 bits (garbage past the weight: never read) */
    const uint32_t u = (r * (uint32_t)a.cols + c) / UNIT;
    const uint32_t grp = a.d.gunits == 1 ? u : (uint32_t)__umul64hi((unsigned long long)u, a.d.gmagic);
    k.co = u * (uint32_t)UB;
    k.so = grp * (uint32_t)a.d.ss0;
    k.zo = grp * (uint32_t)a.d.zs0;
    k.uo = r * (uint32_t)a.us0;
}

template <int BITS> __device__ __forceinline__ SvdCursor svdq_down(const SvdDequantArgs &a, SvdCursor k, uint32_t n8) {
    constexpr int UB = unit_geom<BITS>::bytes;
    if (!a.inc) {
        svdq_seek<BITS>(a, k.r + 8 * n8, k.c, k);
        return k;
    }
    k.r += 8 * n8;
    k.co += n8 * ((uint32_t)a.cols / UNIT * 8 * UB);
    k.so += n8 * a.s8;
    k.zo += n8 * a.z8;
    k.uo += n8 * a.u8;
    return k;
}

/* issue the loads of the tile the cursors are at (no waiting): k at the lane's first half, k2 at
 * its second (32 columns on); the rows g + 8 are 8 rows on */
template <int BITS, int SDT>
__device__ __forceinline__ void svdq_load(const SvdDequantArgs &a, const SvdCursor &k, const SvdCursor &k2, int t,
                                          SvdUnits<BITS> &U) {
    const uint32_t rows = (uint32_t)a.rows, cols = (uint32_t)a.cols;
    const uint32_t nbytes = (uint32_t)a.d.units * (uint32_t)unit_geom<BITS>::bytes; /* < 2^31 */
#pragma unroll
    for (int i = 0; i < 2; i++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const SvdCursor &kh = h == 0 ? k : k2;
            const SvdCursor ki = i == 0 ? kh : svdq_down<BITS>(a, kh, 1);
            const int u = 2 * h + i;
            U.ok[u] = ki.r < rows && ki.c < cols;
            U.s[u] = U.z[u] = 0.0f;
            if (U.ok[u]) { /* red % 8 == 0: one group per unit */
                load_unit_words<BITS>(a.d.codes, ki.co, nbytes, U.b[u]);
                U.s[u] = ld_float<SDT>(a.d.scale, ki.so);
                if (a.d.asym) U.z[u] = ld_float<SDT>(a.d.zp, ki.zo);
            }
            if (h == 0) U.up[i] = ki.r < rows ? svdq_up8(a, ki.uo, 8 * t) : make_uint4(0, 0, 0, 0);
        }
    }
}

/* the strip's down columns c0 .. c0+128 transposed into dsT[c][j] (j < SVDQ_RANK), zero past
 * the rank and the columns; lanes of a warp take consecutive ranks (conflict-free stores) */
__device__ __forceinline__ void svdq_stage_down(const SvdDequantArgs &a, uint16_t *dsT, int64_t c0, int tid) {
    const uint16_t *dn16 = (const uint16_t *)a.down;
    if (a.down_t) { /* 128 columns x 4 vectors of 8 ranks */
        for (int idx = tid; idx < SVDQ_TC * SVDQ_RANK / 8; idx += SVDQ_THREADS) {
            const int cc = idx / 4, kq = (idx % 4) * 8;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (c0 + cc < a.cols && kq < a.rank) v = __ldg((const uint4 *)(dn16 + (c0 + cc) * a.ds1 + kq));
            *(uint4 *)(dsT + cc * SVDQ_RANK + kq) = v;
        }
    } else if (a.down_c) { /* 32 ranks x 16 vectors of 8 columns */
        for (int idx = tid; idx < SVDQ_TC * SVDQ_RANK / 8; idx += SVDQ_THREADS) {
            const int kk = idx % SVDQ_RANK, cq = (idx / SVDQ_RANK) * 8;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (kk < a.rank && c0 + cq < a.cols) v = __ldg((const uint4 *)(dn16 + kk * a.ds0 + c0 + cq));
            const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int q = 0; q < 8; q++) dsT[(cq + q) * SVDQ_RANK + kk] = (uint16_t)(w[q / 2] >> (16 * (q % 2)));
        }
    } else {
        for (int idx = tid; idx < SVDQ_TC * SVDQ_RANK; idx += SVDQ_THREADS) {
            const int kk = idx % SVDQ_RANK, cc = idx / SVDQ_RANK;
            const int64_t c = c0 + cc;
            dsT[cc * SVDQ_RANK + kk] = kk < a.rank && c < a.cols ? __ldg(dn16 + kk * a.ds0 + c * a.ds1) : (uint16_t)0;
        }
    }
}

/*
 * dequant_svd_kernel<BITS, ODT, SDT>: the weight is cut into 64 x 128 tiles, ordered strip by
 * strip (128 columns each, top to bottom); a grid of one wave of blocks takes equal contiguous
 * ranges of that order. A block stages its strip's down columns in shared memory when its range
 * enters the strip (the only barriers); each lane keeps the loads of the next tile in flight
 * (codes, scales, zero points, up rows: registers) while it works on the current one: 16 MMAs
 * (m16n8k16, fp32 accumulation) give the correction of its four units in its accumulators (the
 * fragment layout above), each unit is dequantized (one fma per code, scale_unrounded_small),
 * rounded to the scale dtype and the output dtype two values per conversion (sdnq's
 * elementwise stage, in the SVD factors' dtype = the output dtype), the correction added in
 * fp32, rounded once, one 16-byte store. Same operations as dequantize +
 * sdnq_cuda_svd_add but the rank sum's order (tolerance-level differences only).
 */
template <int BITS, int ODT, int SDT>
__global__ void __launch_bounds__(SVDQ_THREADS, SVDQ_BLOCKS_PER_SM) dequant_svd_kernel(const SvdDequantArgs a) {
    __shared__ float lut[1 << BITS];
    __shared__ __align__(16) uint16_t dsT[SVDQ_TC * SVDQ_RANK];
    build_lut(lut, a.d.t, SDT); /* the first strip's barrier publishes it */

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int rr = 16 * (warp / 2) + g, wc = 64 * (warp % 2), cc = wc + 8 * t;
    const int64_t rtiles = (a.rows + SVDQ_TR - 1) / SVDQ_TR, total = rtiles * a.strips;
    const int64_t t0 = (int64_t)blockIdx.x * total / gridDim.x, t1 = ((int64_t)blockIdx.x + 1) * total / gridDim.x;
    const bool asym = a.d.asym != 0;
    int64_t staged = -1; /* the strip whose down columns dsT holds */

    /* (row tile, strip) of the current tile and of the next, stepped without divisions; the
     * cursors k, k2 (the lane's two halves) are at the next one (ar, as) */
    uint32_t cr = (uint32_t)(t0 % rtiles), cs = (uint32_t)(t0 / rtiles);
    uint32_t ar = cr, as = cs;
    const auto step = [&](uint32_t &r, uint32_t &s) {
        if (++r == (uint32_t)rtiles) r = 0, s++;
    };
    SvdCursor k, k2;
    const auto seek = [&]() {
        svdq_seek<BITS>(a, ar * SVDQ_TR + rr, as * SVDQ_TC + cc, k);
        svdq_seek<BITS>(a, ar * SVDQ_TR + rr, as * SVDQ_TC + cc + 32, k2);
    };
    seek();
    const auto step_load = [&]() { /* the load position to the next tile, the cursors with it */
        const uint32_t s0 = as;
        step(ar, as);
        if (as == s0) {
            k = svdq_down<BITS>(a, k, SVDQ_TR / 8);
            k2 = svdq_down<BITS>(a, k2, SVDQ_TR / 8);
        } else {
            seek();
        }
    };
    SvdUnits<BITS> cur, nxt;
    if (t0 < t1) svdq_load<BITS, SDT>(a, k, k2, t, cur);
    step_load();
    for (int64_t tile = t0; tile < t1; tile++) {
        const uint32_t r0 = cr * SVDQ_TR, c0 = cs * SVDQ_TC;
        if (cs != staged) {  /* uniform: every lane of the block walks the same tiles */
            __syncthreads(); /* the previous strip's fragments are read */
            svdq_stage_down(a, dsT, c0, tid);
            __syncthreads();
            staged = cs;
        }
        if (tile + 1 < t1) svdq_load<BITS, SDT>(a, k, k2, t, nxt);
        step_load();
        step(cr, cs);
#pragma unroll
        for (int h = 0; h < 2; h++) { /* the halves one after the other: 16 accumulators live */
            /* acc[j] = the correction at rows g, g+8 and columns cc + 32h + 2j, + 1 */
            float acc[4][4] = {};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const uint4 bv =
                    *(const uint4 *)(dsT + (wc + 32 * h + 8 * (g >> 1) + 2 * j + (g & 1)) * SVDQ_RANK + 8 * t);
                mma16816<ODT>(acc[j], cur.up[0].x, cur.up[1].x, cur.up[0].y, cur.up[1].y, bv.x, bv.y);
                mma16816<ODT>(acc[j], cur.up[0].z, cur.up[1].z, cur.up[0].w, cur.up[1].w, bv.z, bv.w);
            }
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int u = 2 * h + i;
                if (!cur.ok[u]) continue;
                float r[UNIT];
                lut_unit_values<BITS>(lut, cur.b[u], r);
                if (asym) {
#pragma unroll
                    for (int k = 0; k < UNIT; k++) r[k] = scale_unrounded_small<SDT, true>(r[k], cur.s[u], cur.z[u]);
                } else {
#pragma unroll
                    for (int k = 0; k < UNIT; k++) r[k] = scale_unrounded_small<SDT, false>(r[k], cur.s[u], 0.0f);
                }
                /* round to SDT, then to ODT (once where they are the same or SDT is fp32) */
                if constexpr (SDT != ODT && SDT != SDNQ_DT_F32) round_unit_hw<SDT>(r);
                round_unit_hw<ODT>(r);
#pragma unroll
                for (int k = 0; k < UNIT; k++) r[k] = __fadd_rn(r[k], acc[k >> 1][2 * i + (k & 1)]);
                store_unit<ODT>(a.d.out, (int64_t)((r0 + rr + 8 * i) * (uint32_t)a.cols + c0 + cc + 32 * h), r);
            }
        }
        cur = nxt;
    }
}

/* raw storage element e of a native (unpacked) type */
__device__ __forceinline__ uint32_t load_raw(const void *p, int64_t e, int32_t size) {
    switch (size) {
    case 1: return __ldg((const uint8_t *)p + e);
    case 2: return __ldg((const unsigned short *)p + e);
    default: return __ldg((const unsigned int *)p + e);
    }
}

__global__ void __launch_bounds__(GENERAL_THREADS) dequant_general_kernel(const DequantArgs a) {
    const sdnq_type_traits t = a.t;
    const int32_t be = t.block_elems;
    const int64_t wbytes = a.block_bytes;
    const bool asym = a.asym != 0;
    for (int64_t b = a.b_begin + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < a.b_end;
         b += (int64_t)gridDim.x * blockDim.x) {
        int32_t c[16];
        if (t.is_packed) sdnq_unpack_block(t.bits, (const uint8_t *)a.codes + b * wbytes, c);
        else c[0] = (int32_t)load_raw(a.codes, b, (int32_t)wbytes);
        int64_t e = b * be;
        int64_t o = e / (a.red * a.inner), rem = e - o * (a.red * a.inner);
        int64_t j = rem / a.inner, i = rem - j * a.inner;
        for (int32_t k = 0; k < be; k++) {
            const uint32_t raw = (uint32_t)c[k];
            const int64_t g = o * a.ss0 + i * a.ss1;
            float r;
            if (a.codebook) {
                /* codes < levels for every type a codebook admits (unsigned
                 * integers: 2^bits <= levels); the guard only keeps reads in bounds */
                r = (int64_t)raw < a.levels ? sdnq_load_float(a.scale, g + (int64_t)raw * a.ss2, a.sdt)
                                            : __int_as_float(0x7FC00000);
            } else {
                const float v = sdnq_weight_value(&t, raw, a.sdt);
                const float s = sdnq_load_float(a.scale, g, a.sdt);
                const float z = asym ? sdnq_load_float(a.zp, o * a.zs0 + i * a.zs1, a.sdt) : 0.0f;
                r = scale_value_rt(v, s, z, asym, a.sdt);
            }
            sdnq_store_float(a.out, o * a.os0 + j * a.os1 + i * a.os2, a.odt, r);
            if (++i == a.inner) {
                i = 0;
                if (++j == a.red) {
                    j = 0;
                    o++;
                }
            }
        }
    }
}

}  // namespace sdnq_cuda

#endif /* SDNQ_CUDA_DEQUANT_CUH */
