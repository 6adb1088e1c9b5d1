/*
 * w8a8.cuh - the elementwise halves of the W8A8 linear: per-row (per-token)
 * quantization of activations, and the scale epilogue after an int8/fp8 GEMM.
 *
 * quantize_rows_kernel<XDT, QDT>: one CUDA block per row (grid-stride over
 *   rows). Pass 1 reduces amax = max |x| over the row (warp shuffles, then
 *   one value per warp in shared memory); s = amax / qmax (127 for int8, 448
 *   for fp8 e4m3), the scale sdnq's quantize_int_mm / quantize_fp_mm compute
 *   (get_scale_symmetric). Pass 2 rereads the row (it is in L1/L2) and writes
 *   q = clamp(round_half_even(x / s), -128, 127) for int8, or
 *   q = e4m3(clamp(x / s, -448, 448)) with NaN -> 0 for fp8 (x / s correctly
 *   rounded, as torch.div). A zero row gets s = 0 and q = 0.
 *
 * scale_epilogue_kernel<ACC, ODT>: out[m, n] = acc[m, n] * a_scale[m] *
 *   b_scale[n] (+ bias[n]) in fp32 (sdnq's order: the accumulator times the
 *   token scale, times the weight scale, plus the bias), rounded once to the
 *   output dtype. Rows on the grid's y dimension, columns on x (no index
 *   division); consecutive threads take consecutive n, so every access is
 *   coalesced.
 */
#ifndef SDNQ_CUDA_W8A8_CUH
#define SDNQ_CUDA_W8A8_CUH

#include "common.cuh"
#ifndef SDNQ_CUDA_EMU
#include <cuda_fp8.h>
#endif

namespace sdnq_cuda {

constexpr int QROW_THREADS = 256;
constexpr int EPI_THREADS = 256;

template <int XDT, int QDT>
__global__ void __launch_bounds__(QROW_THREADS)
    quantize_rows_kernel(const void *x, int64_t rows, int64_t cols, int64_t ldx, void *q, float *scale) {
    __shared__ float wmax[QROW_THREADS / 32];
    __shared__ float row_scale;
    const float qmax = QDT == SDNQ_DT_I8 ? 127.0f : 448.0f;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const int64_t base = r * ldx;
        float amax = 0.0f;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) amax = fmaxf(amax, fabsf(ld_float<XDT>(x, base + c)));
#pragma unroll
        for (int off = 16; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, off));
        if (threadIdx.x % 32 == 0) wmax[threadIdx.x / 32] = amax;
        __syncthreads();
        if (threadIdx.x == 0) {
            float m = 0.0f;
            for (int w = 0; w < (int)(blockDim.x / 32); w++) m = fmaxf(m, wmax[w]);
            row_scale = __fdiv_rn(m, qmax);
            scale[r] = row_scale;
        }
        __syncthreads();
        const float s = row_scale;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            const float v = s > 0.0f ? __fdiv_rn(ld_float<XDT>(x, base + c), s) : 0.0f;
            if constexpr (QDT == SDNQ_DT_I8) {
                const float rq = fminf(fmaxf(rintf(v), -128.0f), 127.0f); /* rintf: half to even */
                ((int8_t *)q)[r * cols + c] = (int8_t)(int)rq;
            } else {
                const float cv = v != v ? 0.0f : fminf(fmaxf(v, -448.0f), 448.0f);
                ((uint8_t *)q)[r * cols + c] = sdnq_f32_to_fp8(cv, SDNQ_DT_F8_E4M3FN);
            }
        }
        __syncthreads(); /* wmax and row_scale are reused by the next row */
    }
}

/* ------------------------------------------------------------------------ */
/* vector versions: rows of 16-bit x whose columns are a multiple of 8        */

constexpr int QROW_MAXV = 8; /* 16-byte vectors per thread kept in registers: rows up to 256*8*8 values */

/* v rounded half to even and clamped to int8, as its two's-complement byte: the
 * low byte of 1.5*2^23 + v (exact for |v| <= 128, ulp 1, round to nearest even) */
__device__ __forceinline__ uint32_t q8_byte(float v) {
    const float c = fminf(fmaxf(v, -128.0f), 127.0f);
    return __float_as_uint(__fadd_rn(c, 12582912.0f)) & 0xFFu;
}

/* fp8 e4m3 code of v (NaN -> 0, clamped to +-448, round to nearest even) */
__device__ __forceinline__ uint32_t q8_fp8(float v) {
    const float c = v != v ? 0.0f : fminf(fmaxf(v, -448.0f), 448.0f);
#if defined(SDNQ_CUDA_EMU) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890)
    return sdnq_f32_to_fp8(c, SDNQ_DT_F8_E4M3FN);
#else
    return (uint32_t)__nv_cvt_float_to_fp8(c, __NV_SATFINITE, __NV_E4M3);
#endif
}

/*
 * quantize_rows_vec_kernel<XDT, QDT, V>: the row (cols % 8 == 0, 16-byte
 * aligned, at most 256*8*V values) is read once into registers with 16-byte
 * loads (V per thread), amax reduced over the block, then quantized from the
 * registers and written 8 codes (8 bytes) per store. Same operations as
 * quantize_rows_kernel (x / s correctly rounded, round half to even).
 */
template <int XDT, int QDT, int V>
__global__ void __launch_bounds__(QROW_THREADS)
    quantize_rows_vec_kernel(const void *x, int64_t rows, int64_t cols, int64_t ldx, void *q, float *scale) {
    __shared__ float wmax[QROW_THREADS / 32];
    __shared__ float row_scale;
    const float qmax = QDT == SDNQ_DT_I8 ? 127.0f : 448.0f;
    const int64_t nv = cols / 8;
    const int tid = threadIdx.x;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const uint4 *src = (const uint4 *)((const uint16_t *)x + r * ldx);
        uint4 v[V];
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < V; i++) {
            const int64_t j = tid + (int64_t)i * QROW_THREADS;
            if (j < nv) {
                v[i] = __ldg(src + j);
                const uint32_t w[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    amax = fmaxf(amax, fabsf(XDT == SDNQ_DT_BF16 ? sdnq_bf16_to_f32((uint16_t)w[k])
                                                                  : sdnq_f16_to_f32((uint16_t)w[k])));
                    amax = fmaxf(amax, fabsf(XDT == SDNQ_DT_BF16 ? sdnq_bf16_to_f32((uint16_t)(w[k] >> 16))
                                                                  : sdnq_f16_to_f32((uint16_t)(w[k] >> 16))));
                }
            }
        }
#pragma unroll
        for (int off = 16; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, off));
        if (tid % 32 == 0) wmax[tid / 32] = amax;
        __syncthreads();
        if (tid == 0) {
            float m = 0.0f;
            for (int w = 0; w < QROW_THREADS / 32; w++) m = fmaxf(m, wmax[w]);
            row_scale = __fdiv_rn(m, qmax);
            scale[r] = row_scale;
        }
        __syncthreads();
        const float s = row_scale;
#pragma unroll
        for (int i = 0; i < V; i++) {
            const int64_t j = tid + (int64_t)i * QROW_THREADS;
            if (j >= nv) continue;
            const uint32_t w[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
            uint32_t b[8];
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const uint16_t h = (uint16_t)(w[k / 2] >> (16 * (k % 2)));
                const float xv = XDT == SDNQ_DT_BF16 ? sdnq_bf16_to_f32(h) : sdnq_f16_to_f32(h);
                const float qv = s > 0.0f ? __fdiv_rn(xv, s) : 0.0f;
                b[k] = QDT == SDNQ_DT_I8 ? q8_byte(qv) : q8_fp8(qv);
            }
            uint2 o;
            o.x = b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24);
            o.y = b[4] | (b[5] << 8) | (b[6] << 16) | (b[7] << 24);
            *((uint2 *)((uint8_t *)q + r * cols) + j) = o;
        }
        __syncthreads(); /* wmax and row_scale are reused by the next row */
    }
}

/* 8 consecutive columns per thread: 16/32-byte loads of acc, one 16-byte store (32 for fp32) */
template <int ACC, int ODT>
__global__ void __launch_bounds__(EPI_THREADS)
    scale_epilogue_vec_kernel(const void *acc, int64_t M, int64_t N, const float *a_scale, const void *b_scale,
                              int32_t b_scale_dtype, int64_t b_scale_stride, const void *bias, void *out) {
    const int64_t n8 = N / 8;
    for (int64_t m = blockIdx.y; m < M; m += gridDim.y) {
        const float sa = __ldg(a_scale + m);
        for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n8; j += (int64_t)gridDim.x * blockDim.x) {
            const int64_t e = m * N + 8 * j;
            const uint4 *src = (const uint4 *)((const uint32_t *)acc + e);
            const uint4 u0 = __ldg(src), u1 = __ldg(src + 1);
            const uint32_t a[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
            float r[8];
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const float v = ACC == SDNQ_DT_I32 ? (float)(int32_t)a[k] : __uint_as_float(a[k]);
                const int64_t n = 8 * j + k;
                r[k] = __fmul_rn(__fmul_rn(v, sa), sdnq_load_float(b_scale, n * b_scale_stride, b_scale_dtype));
                if (bias != NULL) r[k] = __fadd_rn(r[k], sdnq_load_float(bias, n, ODT));
            }
            store_unit<ODT>(out, e, r);
        }
    }
}

template <int ACC, int ODT>
__global__ void __launch_bounds__(EPI_THREADS)
    scale_epilogue_kernel(const void *acc, int64_t M, int64_t N, const float *a_scale, const void *b_scale,
                          int32_t b_scale_dtype, int64_t b_scale_stride, const void *bias, void *out) {
    for (int64_t m = blockIdx.y; m < M; m += gridDim.y) {
        const float sa = __ldg(a_scale + m);
        for (int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x) {
            const int64_t e = m * N + n;
            const float v = ACC == SDNQ_DT_I32 ? (float)__ldg((const int *)acc + e) : __ldg((const float *)acc + e);
            float r = __fmul_rn(__fmul_rn(v, sa), sdnq_load_float(b_scale, n * b_scale_stride, b_scale_dtype));
            if (bias != NULL) r = __fadd_rn(r, sdnq_load_float(bias, n, ODT));
            sdnq_store_float(out, e, ODT, r);
        }
    }
}

}  // namespace sdnq_cuda

#endif /* SDNQ_CUDA_W8A8_CUH */
