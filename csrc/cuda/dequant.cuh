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
 * Three kernels:
 *
 * dequant_flat_kernel<BITS, SDT> - the fast path, for types of at most
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
 * dequant_svd_kernel<BITS, ODT> - the same elementwise stage with the SVD
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
    int64_t units;            /* flat kernel: full units of 8 codes            */
    int64_t b_begin, b_end;   /* general kernel: packing blocks to dequantize  */
};

constexpr int FLAT_THREADS = 256;
constexpr int FLAT_BLOCKS_PER_SM = 8; /* the flat kernel's grid: SMs x this (grid-stride loop) */
constexpr int GENERAL_THREADS = 256;

/* 8 results -> out[e0 .. e0+8), e0 a multiple of 8, out 16-byte aligned; hardware
 * round-to-nearest-even conversions (codec.h's bits for every non-NaN value) */
template <int ODT> __device__ __forceinline__ void store_unit(void *out, int64_t e0, const float (&r)[UNIT]) {
    if constexpr (ODT == SDNQ_DT_F32) {
        float4 *p = (float4 *)((float *)out + e0);
        p[0] = make_float4(r[0], r[1], r[2], r[3]);
        p[1] = make_float4(r[4], r[5], r[6], r[7]);
    } else {
        uint32_t w[4];
#pragma unroll
        for (int q = 0; q < 4; q++) {
            if constexpr (ODT == SDNQ_DT_BF16) {
                const __nv_bfloat162 v = __floats2bfloat162_rn(r[2 * q], r[2 * q + 1]);
                memcpy(&w[q], &v, 4);
            } else {
                const __half2 v = __floats2half2_rn(r[2 * q], r[2 * q + 1]);
                memcpy(&w[q], &v, 4);
            }
        }
        *(uint4 *)((uint16_t *)out + e0) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

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
/* dequantization with the SVD correction fused: w = round(round_mid(elementwise) + up @ down) */

constexpr int SVDQ_TR = 64, SVDQ_TC = 128, SVDQ_TK = 32;          /* tile rows, columns; rank chunk */
constexpr int SVDQ_THREADS = 256;
constexpr int SVDQ_UNITS = SVDQ_TR * SVDQ_TC / UNIT / SVDQ_THREADS; /* units of 8 codes per thread: 4 */
constexpr int SVDQ_KP = SVDQ_TK + 8;                                 /* padded smem row (16-bit elements) */

struct SvdDequantArgs {
    DequantArgs d;          /* the elementwise stage (flat output, inner == 1) */
    int64_t rows, cols;     /* the weight [rows, cols] row-major: code e = r*cols + c */
    int32_t rank;
    const void *up, *down;  /* up[r, j] at r*us0 + j*us1, down[j, c] at j*ds0 + c*ds1; out dtype */
    int64_t us0, us1, ds0, ds1;
    /* 16-byte staging loads: up rows contiguous along j; down contiguous along j (sdnq's
     * column-major factor, "down_t") or along c ("down_c"); else 2-byte loads */
    int32_t up_vec, down_t, down_c;
};

/* D += A * B, m16n8k16, fp32 accumulators (warp-collective) */
template <int ODT>
__device__ __forceinline__ void svdq_mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
#ifdef SDNQ_CUDA_EMU
    sdnq_emu::mma16816(d, a0, a1, a2, a3, b0, b1, ODT == SDNQ_DT_BF16);
#else
    if constexpr (ODT == SDNQ_DT_BF16)
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

/*
 * dequant_svd_kernel<BITS, ODT>: one block per 64 x 128 tile of the
 * weight. (1) Each thread issues the loads of its 4 units of codes first, so
 * their latency overlaps (2): the tile's up @ down on the tensor cores (mma.sync
 * m16n8k16, fp32 accumulation; up and down staged in shared memory in rank chunks
 * of 32, zero-padded), 8 warps x 8 n8-tiles of one m16 row band; the fp32 result
 * goes to shared memory. (3) Each unit is dequantized as dequant_unit does,
 * rounded to the output dtype (sdnq's elementwise stage, in the SVD factors'
 * dtype = the output dtype), the correction added in fp32, rounded once, stored
 * with one 16-byte store. Same operations as dequantize + sdnq_cuda_svd_add but
 * the rank sum's order (tolerance-level differences only).
 */
template <int BITS, int ODT>
__global__ void __launch_bounds__(SVDQ_THREADS) dequant_svd_kernel(const SvdDequantArgs a) {
    constexpr int UB = unit_geom<BITS>::bytes;
    __shared__ float lut[1 << BITS];
    __shared__ __align__(16) float smem[SVDQ_TR * SVDQ_TC]; /* staging of up/down, then the correction */
    uint16_t *us = (uint16_t *)smem;                         /* [TR][KP] up chunk                  */
    uint16_t *dsT = us + SVDQ_TR * SVDQ_KP;                  /* [TC][KP] down chunk, transposed    */
    float *cs = smem;                                        /* [TR][TC] correction                */
    const int32_t sdt = a.d.sdt;
    build_lut(lut, a.d.t, sdt);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int64_t r0 = (int64_t)blockIdx.y * SVDQ_TR, c0 = (int64_t)blockIdx.x * SVDQ_TC;

    /* (1) codes in flight */
    uint8_t b[SVDQ_UNITS][UB];
    bool uv[SVDQ_UNITS];
#pragma unroll
    for (int i = 0; i < SVDQ_UNITS; i++) {
        const int uu = tid + i * SVDQ_THREADS, rr = uu / (SVDQ_TC / UNIT), cc = (uu % (SVDQ_TC / UNIT)) * UNIT;
        uv[i] = r0 + rr < a.rows && c0 + cc < a.cols;
        if (uv[i]) load_bytes<UB>((const uint8_t *)a.d.codes + ((r0 + rr) * a.cols + c0 + cc) / UNIT * UB, b[i]);
    }

    /* (2) the correction: warp w owns rows 16*(w/2) .. +16 and n8-tiles 8*(w%2) .. +8 */
    float acc[8][4] = {};
    const int mr = 16 * (warp / 2), nb = 8 * (warp % 2);
    const uint16_t *up16 = (const uint16_t *)a.up, *dn16 = (const uint16_t *)a.down;
    for (int64_t k0 = 0; k0 < a.rank; k0 += SVDQ_TK) {
        __syncthreads(); /* the previous chunk's fragments are read */
        if (a.up_vec) { /* one 16-byte load per thread: 64 rows x 4 vectors of 8 ranks */
            const int rr = tid / 4, kq = (tid % 4) * 8;
            const int64_t r = r0 + rr, k = k0 + kq;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (r < a.rows && k < a.rank) v = __ldg((const uint4 *)(up16 + r * a.us0 + k));
            *(uint4 *)(us + rr * SVDQ_KP + kq) = v;
        } else {
            for (int idx = tid; idx < SVDQ_TR * SVDQ_TK; idx += SVDQ_THREADS) {
                const int rr = idx / SVDQ_TK, kk = idx % SVDQ_TK;
                const int64_t r = r0 + rr, k = k0 + kk;
                us[rr * SVDQ_KP + kk] = r < a.rows && k < a.rank ? __ldg(up16 + r * a.us0 + k * a.us1) : (uint16_t)0;
            }
        }
        if (a.down_t) { /* column c's ranks contiguous: 128 columns x 4 vectors of 8 ranks */
#pragma unroll
            for (int i = 0; i < SVDQ_TC * SVDQ_TK / 8 / SVDQ_THREADS; i++) {
                const int idx = tid + i * SVDQ_THREADS, cc = idx / 4, kq = (idx % 4) * 8;
                const int64_t c = c0 + cc, k = k0 + kq;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (c < a.cols && k < a.rank) v = __ldg((const uint4 *)(dn16 + c * a.ds1 + k));
                *(uint4 *)(dsT + cc * SVDQ_KP + kq) = v;
            }
        } else if (a.down_c) { /* rank k's columns contiguous: 32 ranks x 16 vectors of 8 columns */
#pragma unroll
            for (int i = 0; i < SVDQ_TC * SVDQ_TK / 8 / SVDQ_THREADS; i++) {
                const int idx = tid + i * SVDQ_THREADS, kk = idx / (SVDQ_TC / 8), cq = (idx % (SVDQ_TC / 8)) * 8;
                const int64_t k = k0 + kk, c = c0 + cq;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (k < a.rank && c < a.cols) v = __ldg((const uint4 *)(dn16 + k * a.ds0 + c));
                const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int q = 0; q < 8; q++) dsT[(cq + q) * SVDQ_KP + kk] = (uint16_t)(w[q / 2] >> (16 * (q % 2)));
            }
        } else {
            for (int idx = tid; idx < SVDQ_TK * SVDQ_TC; idx += SVDQ_THREADS) {
                const int kk = idx / SVDQ_TC, cc = idx % SVDQ_TC;
                const int64_t k = k0 + kk, c = c0 + cc;
                dsT[cc * SVDQ_KP + kk] = k < a.rank && c < a.cols ? __ldg(dn16 + k * a.ds0 + c * a.ds1) : (uint16_t)0;
            }
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < SVDQ_TK; ks += 16) {
            const uint16_t *ua = us + (mr + g) * SVDQ_KP + ks + 2 * t;
            const uint32_t a0 = *(const uint32_t *)ua, a1 = *(const uint32_t *)(ua + 8 * SVDQ_KP);
            const uint32_t a2 = *(const uint32_t *)(ua + 8), a3 = *(const uint32_t *)(ua + 8 * SVDQ_KP + 8);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const uint16_t *bb = dsT + (8 * (nb + j) + g) * SVDQ_KP + ks + 2 * t;
                svdq_mma<ODT>(acc[j], a0, a1, a2, a3, *(const uint32_t *)bb, *(const uint32_t *)(bb + 8));
            }
        }
    }
    __syncthreads(); /* staging done: smem becomes the correction */
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int cc = 8 * (nb + j) + 2 * t;
        cs[(mr + g) * SVDQ_TC + cc] = acc[j][0];
        cs[(mr + g) * SVDQ_TC + cc + 1] = acc[j][1];
        cs[(mr + g + 8) * SVDQ_TC + cc] = acc[j][2];
        cs[(mr + g + 8) * SVDQ_TC + cc + 1] = acc[j][3];
    }
    __syncthreads();

    /* (3) elementwise stage + correction, one rounding, 16-byte stores */
    const bool asym = a.d.asym != 0;
#pragma unroll
    for (int i = 0; i < SVDQ_UNITS; i++) {
        if (!uv[i]) continue;
        const int uu = tid + i * SVDQ_THREADS, rr = uu / (SVDQ_TC / UNIT), cc = (uu % (SVDQ_TC / UNIT)) * UNIT;
        const int64_t e0 = (r0 + rr) * a.cols + c0 + cc;
        int32_t c[UNIT];
        unpack_unit<BITS>(b[i], c);
        float r[UNIT];
        const int64_t o = e0 / a.d.red;
        if ((e0 + UNIT - 1) / a.d.red == o) { /* one group for the whole unit */
            const float s = sdnq_load_float(a.d.scale, o * a.d.ss0, sdt);
            const float z = asym ? sdnq_load_float(a.d.zp, o * a.d.zs0, sdt) : 0.0f;
#pragma unroll
            for (int k = 0; k < UNIT; k++) r[k] = scale_value_hw_rt(lut[c[k]], s, z, asym, sdt);
        } else {
#pragma unroll
            for (int k = 0; k < UNIT; k++) {
                const int64_t ok = (e0 + k) / a.d.red;
                const float s = sdnq_load_float(a.d.scale, ok * a.d.ss0, sdt);
                const float z = asym ? sdnq_load_float(a.d.zp, ok * a.d.zs0, sdt) : 0.0f;
                r[k] = scale_value_hw_rt(lut[c[k]], s, z, asym, sdt);
            }
        }
        const float *cr = cs + rr * SVDQ_TC + cc;
#pragma unroll
        for (int k = 0; k < UNIT; k++) r[k] = __fadd_rn(round_to_hw<ODT>(r[k]), cr[k]);
        store_unit<ODT>(a.d.out, e0, r);
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
