/*
 * common.cuh - helpers shared by comfy_sdnq's CUDA kernels (the .cu files of csrc/cuda).
 *
 * The element codecs are codec.h's (SDNQ_HD: the very functions the C core
 * runs), the bit layouts blocks.h's, the argument checks check.h's. This file
 * adds what only device code needs: dtype-templated loads, stores and
 * roundings (compile-time dtypes fold codec.h's switches away), the packing
 * unit of the fast kernels, the 16-byte stores, the tensor-core mma.sync
 * wrapper, launch helpers and status mapping.
 *
 * Floating-point rule: wherever a result must equal the CPU core's bits, the
 * kernels spell each operation with an _rn intrinsic (__fmul_rn, __fadd_rn,
 * __fmaf_rn), which nvcc never contracts or reorders; the C core is compiled
 * with -ffp-contract=off, so both sides round the same operations.
 */
#ifndef SDNQ_CUDA_COMMON_CUH
#define SDNQ_CUDA_COMMON_CUH

#include <stdint.h>

#ifdef SDNQ_CUDA_EMU
#include "cuda_emu.h" /* tests/cuda_emu: these sources compiled for the CPU, for testing without a GPU */
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#endif

#include "blocks.h"
#include "check.h"
#include "codec.h"
#include "sdnq/sdnq_cuda.h"

namespace sdnq_cuda {

/* ------------------------------------------------------------------------ */
/* host side                                                                 */

static inline cudaStream_t as_stream(void *s) { return (cudaStream_t)s; }

/* status of the launch just made (a bad configuration, no kernel image for
 * this device, ...); kernel faults surface asynchronously */
static inline sdnq_status launch_status(void) {
    return cudaGetLastError() == cudaSuccess ? SDNQ_OK : SDNQ_ERR_DEVICE;
}

/* kernel<<<grid, block, 0, stream>>>(args...) for a pointer to a __global__ function; a
 * macro so that the host emulation of tests/cuda_emu runs the same launchers */
#ifdef SDNQ_CUDA_EMU
#define SDNQ_LAUNCH(kernel, grid, block, stream, ...) \
    sdnq_emu::launch(dim3(grid), dim3(block), [&] { kernel(__VA_ARGS__); })
#else
#define SDNQ_LAUNCH(kernel, grid, block, stream, ...) kernel<<<grid, block, 0, stream>>>(__VA_ARGS__)
#endif

static inline bool aligned(const void *p, uintptr_t bytes) { return ((uintptr_t)p % bytes) == 0; }

/* multiprocessors of the current device (cached per device; grid sizes of the
 * grid-stride kernels) */
static inline int device_sms(void) {
#ifdef SDNQ_CUDA_EMU
    return 2;
#else
    static int cache[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 132;
    int v = cache[dev];
    if (v <= 0) {
        if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0) v = 132;
        cache[dev] = v;
    }
    return v;
#endif
}

/* blocks for `work` items of `per_block` each, capped (kernels loop over the grid) */
static inline unsigned grid_for(int64_t work, int64_t per_block, int64_t cap = 1 << 20) {
    int64_t g = (work + per_block - 1) / per_block;
    if (g < 1) g = 1;
    if (g > cap) g = cap;
    return (unsigned)g;
}

/* Calls f(std-like integral constant) for a runtime arithmetic dtype id
 * (F32, BF16, F16), so one templated body serves the three dtypes. */
template <int V> struct dt_const {
    static constexpr int value = V;
};

template <class F> static inline void with_arith_dtype(int32_t dt, F &&f) {
    switch (dt) {
    case SDNQ_DT_F32: f(dt_const<SDNQ_DT_F32>{}); break;
    case SDNQ_DT_BF16: f(dt_const<SDNQ_DT_BF16>{}); break;
    default: f(dt_const<SDNQ_DT_F16>{}); break;
    }
}

/* Calls f(dt_const<B>{}) for a runtime code width of the fast kernels, B in [LO, 8]
 * (a width outside it takes 8: the callers have refused such types before launching);
 * the one place that turns a width into a kernel's template argument. */
template <int LO = 1, class F> static inline void with_unit_bits(int32_t bits, F &&f) {
    if constexpr (LO >= 8) f(dt_const<8>{});
    else if (bits == LO) f(dt_const<LO>{});
    else with_unit_bits<LO + 1>(bits, f);
}

/* ------------------------------------------------------------------------ */
/* programmatic dependent launch (sm_90+; no-ops elsewhere and in the emulation) */

/* a kernel launched after this one with programmatic stream serialization may start */
__device__ __forceinline__ void grid_dependency_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* waits until the kernels this one depends on have completed, their writes visible */
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* compute capability major of the current device (cached per device) */
static inline int device_cc_major(void) {
#ifdef SDNQ_CUDA_EMU
    return 0;
#else
    static int cache[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
    int v = cache[dev];
    if (v <= 0) {
        if (cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess || v <= 0) return 0;
        cache[dev] = v;
    }
    return v;
#endif
}

/* kernel<<<grid, block, 0, s>>>(args...), as a programmatic dependent launch of the stream's
 * previous kernel when pdl (sm_90+: gemv.cu's low-rank kernel behind the GEMV and the finishing
 * kernel behind either, dequant.cu's int8 re-quantization behind its row scales); a launch the
 * device refuses is made again as an ordinary one */
template <class Kernel, class... Args>
void launch_maybe_pdl(Kernel kernel, unsigned grid, unsigned block, cudaStream_t s, bool pdl, Args... args) {
#ifndef SDNQ_CUDA_EMU
    if (pdl) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(grid);
        cfg.blockDim = dim3(block);
        cfg.dynamicSmemBytes = 0;
        cfg.stream = s;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        if (cudaLaunchKernelEx(&cfg, kernel, args...) == cudaSuccess) return;
        (void)cudaGetLastError();
    }
#else
    (void)pdl;
#endif
    SDNQ_LAUNCH(kernel, grid, block, s, args...);
}

/* ------------------------------------------------------------------------ */
/* device side: dtype-templated element access                               */

/* element i of an F32/BF16/F16 buffer, read through the read-only cache */
template <int DT> __device__ __forceinline__ float ld_float(const void *p, int64_t i) {
    if constexpr (DT == SDNQ_DT_F32) return __ldg((const float *)p + i);
    else if constexpr (DT == SDNQ_DT_BF16) return sdnq_bf16_to_f32(__ldg((const unsigned short *)p + i));
    else return sdnq_f16_to_f32(__ldg((const unsigned short *)p + i));
}

/* v rounded to DT and widened back (codec.h's sdnq_round_to, folded) */
template <int DT> __device__ __forceinline__ float round_to(float v) {
    if constexpr (DT == SDNQ_DT_BF16) return sdnq_bf16_to_f32(sdnq_f32_to_bf16(v));
    else if constexpr (DT == SDNQ_DT_F16) return sdnq_f16_to_f32(sdnq_f32_to_f16(v));
    else return v;
}

/* Same value as round_to<DT> for every non-NaN input, through the hardware's
 * round-to-nearest-even conversions (NaN payloads may differ). For kernels
 * whose results are compared within a tolerance anyway (GEMV). */
template <int DT> __device__ __forceinline__ float round_to_hw(float v) {
    if constexpr (DT == SDNQ_DT_BF16) return __bfloat162float(__float2bfloat16_rn(v));
    else if constexpr (DT == SDNQ_DT_F16) return __half2float(__float2half_rn(v));
    else return v;
}

/* the raw 16-bit pattern of v in DT (BF16 or F16), codec.h's rounding */
template <int DT> __device__ __forceinline__ uint32_t bits16(float v) {
    if constexpr (DT == SDNQ_DT_BF16) return sdnq_f32_to_bf16(v);
    else return sdnq_f32_to_f16(v);
}

/* a DT value (BF16 or F16) from its raw 16 bits (the low half of h) to fp32: exact; fp16 through
 * the hardware conversion (NaN payloads aside, codec.h's sdnq_f16_to_f32) */
template <int DT> __device__ __forceinline__ float from_bits16(uint32_t h) {
    if constexpr (DT == SDNQ_DT_BF16) {
        return __uint_as_float(h << 16);
    } else {
        const uint16_t b = (uint16_t)h;
        __half v;
        memcpy(&v, &b, 2);
        return __half2float(v);
    }
}

/* sdnq's elementwise step (dequant.c scale_value) before its rounding: value * scale (+ zero
 * point: fused for fp32, else exact product then one add) */
template <int SDT> __device__ __forceinline__ float scale_unrounded(float v, float s, float z, bool asym) {
    if (!asym) return __fmul_rn(v, s);
    if constexpr (SDT == SDNQ_DT_F32) return __fmaf_rn(v, s, z);
    else return __fadd_rn(__fmul_rn(v, s), z);
}

/* the elementwise step rounded to SDT */
template <int SDT> __device__ __forceinline__ float scale_value(float v, float s, float z, bool asym) {
    return round_to<SDT>(scale_unrounded<SDT>(v, s, z, asym));
}

/* scale_value with the hardware's round-to-nearest-even conversions: the same
 * value for every non-NaN input (NaN payloads may differ) */
template <int SDT> __device__ __forceinline__ float scale_value_hw(float v, float s, float z, bool asym) {
    return round_to_hw<SDT>(scale_unrounded<SDT>(v, s, z, asym));
}

/* scale_unrounded for the values of codes of at most 8 bits (at most 8 significant bits):
 * with a 16-bit scale the product v * s has at most 19 and is exact in fp32 (unless
 * |v * s| < 2^-131, a bf16 scale below about 2^-115), so one fma rounds v * s + z as the
 * exact product and one add do; fp32 scales fuse anyway. For the fused dequantize + SVD
 * kernel, which its tests hold to sdnq's tolerance; the bit-exact dequantizers keep
 * scale_unrounded, since below 2^-131 the two differ */
template <int SDT, bool ASYM> __device__ __forceinline__ float scale_unrounded_small(float v, float s, float z) {
    if constexpr (ASYM) return __fmaf_rn(v, s, z);
    else return __fmul_rn(v, s);
}

/* scale_value_hw for a value about to be stored (or packed) as ODT: the rounding to SDT is
 * left to that conversion when SDT == ODT (rounding twice to one dtype is rounding once);
 * ASYM is a template argument so that callers branch once per unit, not per code */
template <int SDT, int ODT, bool ASYM> __device__ __forceinline__ float dq_value(float v, float s, float z) {
    const float r = scale_unrounded<SDT>(v, s, z, ASYM);
    if constexpr (SDT == ODT) return r;
    else return round_to_hw<SDT>(r);
}

/* scale_value_hw with the scale dtype chosen at run time (uniform branches) */
__device__ __forceinline__ float scale_value_hw_rt(float v, float s, float z, bool asym, int32_t sdt) {
    if (sdt == SDNQ_DT_F32) return scale_value_hw<SDNQ_DT_F32>(v, s, z, asym);
    if (sdt == SDNQ_DT_BF16) return scale_value_hw<SDNQ_DT_BF16>(v, s, z, asym);
    return scale_value_hw<SDNQ_DT_F16>(v, s, z, asym);
}

/* run-time dtype version, for the general kernels */
__device__ __forceinline__ float scale_value_rt(float v, float s, float z, bool asym, int32_t sdt) {
    float r;
    if (!asym) r = __fmul_rn(v, s);
    else if (sdt == SDNQ_DT_F32) r = __fmaf_rn(v, s, z);
    else r = __fadd_rn(__fmul_rn(v, s), z);
    return sdnq_round_to(r, sdt);
}

/* v rounded half to even and clamped to int8: its two's-complement byte is the low byte of
 * 1.5*2^23 + v (exact for |v| <= 128, ulp 1, round to nearest even) */
__device__ __forceinline__ uint32_t q8_int8_bits(float v) {
    return __float_as_uint(__fadd_rn(fminf(fmaxf(v, -128.0f), 127.0f), 12582912.0f));
}

/* x / s for per-row quantization by a row scale s: with quick (sdnq_row_div_quick(s), uniform over
 * the row) one product with the row's reciprocal rs and a correction, codec.h's sdnq_row_div;
 * otherwise the division itself (0 for a zero scale) */
__device__ __forceinline__ float row_quotient(float x, float s, float rs, bool quick) {
    return quick ? sdnq_row_div(x, s, rs) : s > 0.0f ? __fdiv_rn(x, s) : 0.0f;
}

/* fp8 e4m3 code of v (NaN -> 0, clamped to +-448, round to nearest even) */
__device__ __forceinline__ uint32_t q8_fp8(float v) {
    const float c = v != v ? 0.0f : fminf(fmaxf(v, -448.0f), 448.0f);
    return sdnq_f32_to_fp8(c, SDNQ_DT_F8_E4M3FN);
}

/* the int8 / e4m3 codes of 8 quotients, byte k from v[k]: pairs of codes in the low 16 bits of
 * w[p] (byte permutes; e4m3 through the hardware's saturating pair conversion on sm_89+, which
 * clamps to +-448 as q8_fp8 does), then two pairs per 32-bit word */
template <int QDT> __device__ __forceinline__ uint2 q8_pack(const float (&v)[8]) {
    uint32_t w[4];
#pragma unroll
    for (int p = 0; p < 4; p++) {
        if constexpr (QDT == SDNQ_DT_I8) {
            w[p] = __byte_perm(q8_int8_bits(v[2 * p]), q8_int8_bits(v[2 * p + 1]), 0x0040);
        } else {
#if defined(SDNQ_CUDA_EMU) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890)
            w[p] = q8_fp8(v[2 * p]) | (q8_fp8(v[2 * p + 1]) << 8);
#else
            const float a = v[2 * p] == v[2 * p] ? v[2 * p] : 0.0f;
            const float b = v[2 * p + 1] == v[2 * p + 1] ? v[2 * p + 1] : 0.0f;
            w[p] = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
#endif
        }
    }
    return make_uint2(__byte_perm(w[0], w[1], 0x5410), __byte_perm(w[2], w[3], 0x5410));
}

/* ------------------------------------------------------------------------ */
/* the packing unit of the fast kernels: 8 consecutive codes of a type of at */
/* most 8 bits (a whole number of sdnq packing blocks for every such width)  */

constexpr int UNIT = 8;

/* one 16-byte store (p 16-byte aligned); spelled out since nvcc may split a uint4 assignment */
__device__ __forceinline__ void st_global16(void *p, uint4 v) {
#ifdef SDNQ_CUDA_EMU
    *(uint4 *)p = v;
#else
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
#endif
}

/* a and b in DT (BF16 or F16) packed into one word, a in the low half: one hardware
 * round-to-nearest-even conversion for the two (codec.h's bits for every non-NaN value) */
template <int DT> __device__ __forceinline__ uint32_t pack_pair(float a, float b) {
    uint32_t w;
    if constexpr (DT == SDNQ_DT_BF16) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
        memcpy(&w, &v, 4);
    } else {
        const __half2 v = __floats2half2_rn(a, b);
        memcpy(&w, &v, 4);
    }
    return w;
}

/* r[k] = round_to_hw<DT>(r[k]) for a unit, two values per conversion */
template <int DT> __device__ __forceinline__ void round_unit_hw(float (&r)[UNIT]) {
    if constexpr (DT == SDNQ_DT_BF16 || DT == SDNQ_DT_F16) {
#pragma unroll
        for (int q = 0; q < UNIT / 2; q++) {
            const uint32_t w = pack_pair<DT>(r[2 * q], r[2 * q + 1]);
            if constexpr (DT == SDNQ_DT_BF16) {
                r[2 * q] = __uint_as_float(w << 16);
                r[2 * q + 1] = __uint_as_float(w & 0xFFFF0000u);
            } else {
                __half lo, hi;
                memcpy(&lo, &w, 2);
                memcpy(&hi, (const char *)&w + 2, 2);
                r[2 * q] = __half2float(lo);
                r[2 * q + 1] = __half2float(hi);
            }
        }
    }
}

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
        for (int q = 0; q < 4; q++) w[q] = pack_pair<ODT>(r[2 * q], r[2 * q + 1]);
        st_global16((uint16_t *)out + e0, make_uint4(w[0], w[1], w[2], w[3]));
    }
}

/* bytes holding one unit: `bits` bytes, or one int64 word for 1-bit codes */
template <int BITS> struct unit_geom {
    static constexpr int bytes = BITS == 1 ? 8 : BITS;
    static constexpr int block_elems = BITS == 1 ? 8 : BITS == 2 ? 4 : BITS == 4 ? 2 : BITS == 6 ? 4 : BITS == 8 ? 1 : 8;
    static constexpr int block_bytes = BITS == 1 ? 8 : block_elems * BITS / 8;
};

/* p is aligned to the widest power of two (<= 8) dividing `BYTES`; loads it
 * with the widest such accesses, then splits it into bytes (registers) */
template <int BYTES> __device__ __forceinline__ void load_bytes(const uint8_t *p, uint8_t (&b)[BYTES]) {
    if constexpr (BYTES % 8 == 0) {
#pragma unroll
        for (int i = 0; i < BYTES / 8; i++) {
            uint2 v = __ldg((const uint2 *)p + i);
#pragma unroll
            for (int q = 0; q < 4; q++) {
                b[8 * i + q] = (uint8_t)(v.x >> (8 * q));
                b[8 * i + 4 + q] = (uint8_t)(v.y >> (8 * q));
            }
        }
    } else if constexpr (BYTES % 4 == 0) {
#pragma unroll
        for (int i = 0; i < BYTES / 4; i++) {
            uint32_t v = __ldg((const unsigned int *)p + i);
#pragma unroll
            for (int q = 0; q < 4; q++) b[4 * i + q] = (uint8_t)(v >> (8 * q));
        }
    } else if constexpr (BYTES % 2 == 0) {
#pragma unroll
        for (int i = 0; i < BYTES / 2; i++) {
            uint32_t v = __ldg((const unsigned short *)p + i);
            b[2 * i] = (uint8_t)v;
            b[2 * i + 1] = (uint8_t)(v >> 8);
        }
    } else {
#pragma unroll
        for (int i = 0; i < BYTES; i++) b[i] = __ldg(p + i);
    }
}

/* one block of a BITS-wide type (2..7) through blocks.h */
template <int BITS> __device__ __forceinline__ void unpack_block_t(const uint8_t *w, int32_t *a) {
    if constexpr (BITS == 2) sdnq_unpack2(w, a);
    else if constexpr (BITS == 3) sdnq_unpack3(w, a);
    else if constexpr (BITS == 4) sdnq_unpack4(w, a);
    else if constexpr (BITS == 5) sdnq_unpack5(w, a);
    else if constexpr (BITS == 6) sdnq_unpack6(w, a);
    else sdnq_unpack7(w, a);
}

/* the 8 codes of a unit from its bytes (the int64 word's bytes for 1 bit,
 * little-endian like the file) */
template <int BITS>
__device__ __forceinline__ void unpack_unit(const uint8_t (&b)[unit_geom<BITS>::bytes], int32_t (&c)[UNIT]) {
    if constexpr (BITS == 1) {
        uint64_t v = 0;
#pragma unroll
        for (int q = 0; q < 8; q++) v |= (uint64_t)b[q] << (8 * q);
        sdnq_unpack1(v, c);
    } else if constexpr (BITS == 8) {
#pragma unroll
        for (int k = 0; k < UNIT; k++) c[k] = b[k];
    } else {
        constexpr int BE = unit_geom<BITS>::block_elems, BB = unit_geom<BITS>::block_bytes;
#pragma unroll
        for (int blk = 0; blk < UNIT / BE; blk++) unpack_block_t<BITS>(b + blk * BB, c + blk * BE);
    }
}

/* lut[c] = the value sdnq multiplies for code c of a type of at most 8 bits,
 * in the scale dtype (codec.h's sdnq_weight_value; all threads call it, a
 * __syncthreads() must follow) */
__device__ __forceinline__ void build_lut(float *lut, sdnq_type_traits t, int32_t sdt) {
    const int n = 1 << t.bits;
    for (int c = threadIdx.x; c < n; c += blockDim.x) lut[c] = sdnq_weight_value(&t, (uint32_t)c, sdt);
}

/* ------------------------------------------------------------------------ */
/* packed 16-bit arithmetic: two DT (BF16 or F16) values in one register, lo  */
/* first, as raw bits; rounded once to nearest even                           */

template <int DT> __device__ __forceinline__ uint32_t h2_sub(uint32_t a, uint32_t b) {
#ifdef SDNQ_CUDA_EMU
    return sdnq_emu::h2_sub(a, b, DT == SDNQ_DT_BF16);
#else
    uint32_t r;
    if constexpr (DT == SDNQ_DT_BF16) {
        __nv_bfloat162 x, y, z;
        memcpy(&x, &a, 4), memcpy(&y, &b, 4);
        z = __hsub2(x, y);
        memcpy(&r, &z, 4);
    } else {
        __half2 x, y, z;
        memcpy(&x, &a, 4), memcpy(&y, &b, 4);
        z = __hsub2(x, y);
        memcpy(&r, &z, 4);
    }
    return r;
#endif
}

/* a hint: bring the line holding p into L1 (no register, no wait; a no-op in the emulation) */
__device__ __forceinline__ void prefetch_l1(const void *p) {
#ifndef SDNQ_CUDA_EMU
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
#else
    (void)p;
#endif
}

/* (a & MASK) | OR in one LOP3. With both constants immediate, nvcc's own code is an AND and
 * an OR (one LOP3 takes one immediate); spelled as lop3.b32, ptxas keeps one of them in a
 * register, set once outside the loops */
template <uint32_t MASK, uint32_t OR> __device__ __forceinline__ uint32_t and_or(uint32_t a) {
#ifdef SDNQ_CUDA_EMU
    return (a & MASK) | OR;
#else
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "n"(MASK), "n"(OR)); /* 0xEA: (a & b) | c */
    return d;
#endif
}

/* ------------------------------------------------------------------------ */
/* tensor cores                                                              */

/* D += A * B, m16n8k16, fp32 accumulators (warp-collective: every lane executes it) */
template <int DT>
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
#ifdef SDNQ_CUDA_EMU
    sdnq_emu::mma16816(d, a0, a1, a2, a3, b0, b1, DT == SDNQ_DT_BF16);
#else
    if constexpr (DT == SDNQ_DT_BF16)
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

}  // namespace sdnq_cuda

#endif /* SDNQ_CUDA_COMMON_CUH */
