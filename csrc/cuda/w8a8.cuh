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

namespace sdnq_cuda {

constexpr int QROW_THREADS = 256;
constexpr int EPI_THREADS = 256; /* the scalar epilogue */

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


/*
 * quantize_rows_vec_kernel<XDT, QDT, V>: one row per block of blockDim.x threads (a multiple of
 * 32, up to 512; the launcher picks the fewest warps that hold the row in V 16-byte vectors per
 * thread: a 3072-value row is two warps). The row (cols % 8 == 0, 16-byte aligned) is read once
 * into registers, all V loads of a thread in flight together; amax is reduced by shuffles within
 * each warp and, with more than one warp, through shared memory (every thread reads the warps'
 * maxima after one barrier, so no second one publishes the scale); then quantized from the
 * registers and written 8 codes (8 bytes) per store. Same codes as quantize_rows_kernel
 * (x / s correctly rounded where it decides a code, codec.h's sdnq_row_div; round half to even).
 */
/* Six vectors per thread in at most 64 registers (the launch bounds: 2 blocks of 512 threads per
 * multiprocessor) let 32 warps per multiprocessor hold their rows, where twelve vectors per
 * thread took 91 registers and 21 warps (docs/cuda.md, "Row quantization": 3072-value rows at
 * M = 4608 went from 59 to 68 % of the copy's bandwidth on an H200) */
constexpr int QROW_V = 6;             /* vectors per thread of the register-resident kernel  */
constexpr int QROW_V_SMALL = 4;       /* ... for rows of at most 32 * 4 vectors (1024 values) */
constexpr int QROW_MAX_THREADS = 512; /* rows up to 512 * 6 * 8 = 24576 values              */

template <int XDT, int QDT, int V>
__global__ void __launch_bounds__(QROW_MAX_THREADS, 2)
    quantize_rows_vec_kernel(const void *x, int64_t rows, int64_t cols, int64_t ldx, void *q, float *scale) {
    __shared__ float wmax[QROW_MAX_THREADS / 32];
    const float qmax = QDT == SDNQ_DT_I8 ? 127.0f : 448.0f;
    const int nv = (int)(cols / 8), tid = threadIdx.x, nthr = blockDim.x, nwarps = nthr / 32;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const uint4 *src = (const uint4 *)((const uint16_t *)x + r * ldx);
        uint4 v[V];
#pragma unroll
        for (int i = 0; i < V; i++) {
            const int j = tid + i * nthr;
            v[i] = j < nv ? __ldg(src + j) : make_uint4(0, 0, 0, 0); /* zeros leave amax as it is */
        }
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < V; i++) {
            const uint32_t w[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                amax = fmaxf(amax, fabsf(from_bits16<XDT>(w[k] & 0xFFFFu)));
                amax = fmaxf(amax, fabsf(from_bits16<XDT>(w[k] >> 16)));
            }
        }
#pragma unroll
        for (int off = 16; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, off));
        if (nwarps > 1) { /* uniform over the block */
            if (tid % 32 == 0) wmax[tid / 32] = amax;
            __syncthreads();
            for (int w = 0; w < nwarps; w++) amax = fmaxf(amax, wmax[w]);
        }
        const float s = __fdiv_rn(amax, qmax);
        if (tid == 0) scale[r] = s;
        /* x / s: the division's fast form with the row's reciprocal (uniform over the block) */
        const bool quick = sdnq_row_div_quick(s);
        const float rs = __frcp_rn(s);
        const auto store = [&](auto QUICK) {
#pragma unroll
            for (int i = 0; i < V; i++) {
                const int j = tid + i * nthr;
                if (j >= nv) continue;
                const uint32_t w[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
                float qv[8];
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    const float xv = from_bits16<XDT>((w[k / 2] >> (16 * (k % 2))) & 0xFFFFu);
                    qv[k] = row_quotient(xv, s, rs, decltype(QUICK)::value);
                }
                *((uint2 *)((uint8_t *)q + r * cols) + j) = q8_pack<QDT>(qv);
            }
        };
        if (quick) store(dt_const<1>{});
        else store(dt_const<0>{});
        if (nwarps > 1) __syncthreads(); /* wmax is reused by the next row */
    }
}

/*
 * scale_epilogue_vec_kernel<ACC, ODT> (N % 8 == 0): 8 consecutive columns per thread, whose
 * weight scales and bias it loads once and keeps in registers over all its rows; EPI_ROWS rows per
 * step, their 32-byte loads of acc (and the token scales) issued together before any is used, one
 * 16-byte store per row (32 for fp32). Blocks of EPI_VEC_THREADS threads side by side along the
 * columns (grid x), row steps on grid y.
 */
constexpr int EPI_VEC_THREADS = 128;
constexpr int EPI_ROWS = 4;

template <int ACC, int ODT>
__global__ void __launch_bounds__(EPI_VEC_THREADS)
    scale_epilogue_vec_kernel(const void *acc, int64_t M, int64_t N, const float *a_scale, const void *b_scale,
                              int32_t b_scale_dtype, int64_t b_scale_stride, const void *bias, void *out) {
    const int64_t n8 = N / 8;
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n8; j += (int64_t)gridDim.x * blockDim.x) {
        float sb[8], bb[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            sb[k] = sdnq_load_float(b_scale, (8 * j + k) * b_scale_stride, b_scale_dtype);
            bb[k] = bias != NULL ? sdnq_load_float(bias, 8 * j + k, ODT) : 0.0f;
        }
        for (int64_t m0 = (int64_t)blockIdx.y * EPI_ROWS; m0 < M; m0 += (int64_t)gridDim.y * EPI_ROWS) {
            uint4 u[EPI_ROWS][2];
            float sa[EPI_ROWS];
#pragma unroll
            for (int i = 0; i < EPI_ROWS; i++) {
                u[i][0] = u[i][1] = make_uint4(0, 0, 0, 0);
                sa[i] = 0.0f;
                if (m0 + i < M) {
                    const uint4 *src = (const uint4 *)((const uint32_t *)acc + (m0 + i) * N + 8 * j);
                    u[i][0] = __ldg(src);
                    u[i][1] = __ldg(src + 1);
                    sa[i] = __ldg(a_scale + m0 + i);
                }
            }
#pragma unroll
            for (int i = 0; i < EPI_ROWS; i++) {
                if (m0 + i >= M) break;
                const uint32_t a[8] = {u[i][0].x, u[i][0].y, u[i][0].z, u[i][0].w,
                                       u[i][1].x, u[i][1].y, u[i][1].z, u[i][1].w};
                float r[8];
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    const float v = ACC == SDNQ_DT_I32 ? (float)(int32_t)a[k] : __uint_as_float(a[k]);
                    r[k] = __fmul_rn(__fmul_rn(v, sa[i]), sb[k]);
                    if (bias != NULL) r[k] = __fadd_rn(r[k], bb[k]);
                }
                store_unit<ODT>(out, (m0 + i) * N + 8 * j, r);
            }
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
