/*
 * svd_add.cuh - the SVD low-rank correction of sdnq's dequantizer on the GPU:
 * w[r, c] += sum_k up[r, k] * down[k, c] for a dense row-major w.
 *
 * Tiled: a block owns SVD_TR rows x SVD_TC columns of w; the rank runs in
 * chunks of SVD_TK staged in shared memory (up tile and down tile, converted
 * to fp32). Each thread keeps 4 consecutive columns of one row in registers
 * and accumulates in increasing k, one exactly rounded product and one sum
 * per term (__fmul_rn/__fadd_rn): the CPU core's order and roundings, so the
 * result equals sdnq_svd_add's bits (the tests only require sdnq's
 * tolerance). Out-of-range rows/columns/ranks are loaded as zeros and never
 * stored. up/down are read through arbitrary strides (sdnq stores them
 * transposed for quantized-matmul layers).
 */
#ifndef SDNQ_CUDA_SVD_ADD_CUH
#define SDNQ_CUDA_SVD_ADD_CUH

#include "common.cuh"

namespace sdnq_cuda {

constexpr int SVD_TR = 16, SVD_TC = 64, SVD_TK = 32;
constexpr int SVD_THREADS = (SVD_TC / 4) * SVD_TR; /* 256: 16 x 16 */

struct SvdArgs {
    void *w;
    const void *up, *down;
    int32_t w_dtype, up_dtype, down_dtype;
    int64_t rows, cols, rank;
    int64_t us0, us1, ds0, ds1;
};

__global__ void __launch_bounds__(SVD_THREADS) svd_add_kernel(const SvdArgs a) {
    __shared__ float us[SVD_TR][SVD_TK + 1];
    __shared__ __align__(16) float ds[SVD_TK][SVD_TC];
    const int tid = threadIdx.x;
    const int tx = tid % (SVD_TC / 4), ty = tid / (SVD_TC / 4);
    const int64_t r0 = (int64_t)blockIdx.x * SVD_TR, c0 = (int64_t)blockIdx.y * SVD_TC;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t k0 = 0; k0 < a.rank; k0 += SVD_TK) {
        for (int idx = tid; idx < SVD_TR * SVD_TK; idx += SVD_THREADS) {
            const int rr = idx / SVD_TK, kk = idx % SVD_TK;
            const int64_t r = r0 + rr, k = k0 + kk;
            us[rr][kk] = (r < a.rows && k < a.rank) ? sdnq_load_float(a.up, r * a.us0 + k * a.us1, a.up_dtype) : 0.0f;
        }
        for (int idx = tid; idx < SVD_TK * SVD_TC; idx += SVD_THREADS) {
            const int kk = idx / SVD_TC, cc = idx % SVD_TC;
            const int64_t k = k0 + kk, c = c0 + cc;
            ds[kk][cc] =
                (k < a.rank && c < a.cols) ? sdnq_load_float(a.down, k * a.ds0 + c * a.ds1, a.down_dtype) : 0.0f;
        }
        __syncthreads();
        const int nk = a.rank - k0 < SVD_TK ? (int)(a.rank - k0) : SVD_TK;
        for (int kk = 0; kk < nk; kk++) {
            const float u = us[ty][kk];
            const float4 d = *(const float4 *)&ds[kk][tx * 4];
            acc[0] = __fadd_rn(acc[0], __fmul_rn(u, d.x));
            acc[1] = __fadd_rn(acc[1], __fmul_rn(u, d.y));
            acc[2] = __fadd_rn(acc[2], __fmul_rn(u, d.z));
            acc[3] = __fadd_rn(acc[3], __fmul_rn(u, d.w));
        }
        __syncthreads();
    }
    const int64_t r = r0 + ty;
    if (r >= a.rows) return;
#pragma unroll
    for (int q = 0; q < 4; q++) {
        const int64_t c = c0 + tx * 4 + q;
        if (c < a.cols) {
            const int64_t e = r * a.cols + c;
            sdnq_store_float(a.w, e, a.w_dtype, __fadd_rn(sdnq_load_float(a.w, e, a.w_dtype), acc[q]));
        }
    }
}

}  // namespace sdnq_cuda

#endif /* SDNQ_CUDA_SVD_ADD_CUH */
