/*
 * hadamard.cuh - sdnq's Hadamard rotation on the GPU: every row of a
 * contiguous [rows, cols] matrix, in blocks of h columns, becomes block @ H,
 * H the normalized h x h Hadamard matrix (Sylvester, or kron powers of H4
 * when h is a power of 4 and the H4 construction is asked for).
 *
 * The blocks of h columns are contiguous in memory (h divides cols), so the
 * matrix is simply rows*cols/h segments of h elements. A CUDA block loads
 * HAD_SEGS segments into shared memory as fp32 (coalesced), runs the
 * butterfly transform stage by stage (a barrier between stages), multiplies
 * by the rounded 1/sqrt(h) and stores. The butterflies are the CPU fast
 * path's (linalg.c fwht), operation for operation, so the result equals
 * sdnq_hadamard's bits; against the dense reference it differs by
 * summation order only. Used for the weight (dequantization) and for the
 * activations of the linear op (x @ H).
 */
#ifndef SDNQ_CUDA_HADAMARD_CUH
#define SDNQ_CUDA_HADAMARD_CUH

#include "common.cuh"

namespace sdnq_cuda {

constexpr int HAD_THREADS = 256;
constexpr int HAD_ELEMS = 4096; /* shared floats per block: HAD_SEGS * h, h <= SDNQ_HADAMARD_MAX */

struct HadamardArgs {
    void *w;
    int32_t dtype;
    int32_t radix;   /* 2 or 4 */
    int64_t h;
    int64_t segs;    /* rows * cols / h */
    int64_t per_block; /* segments per CUDA block */
    float c;         /* 1/sqrt(h) rounded to dtype */
};

__global__ void __launch_bounds__(HAD_THREADS) hadamard_kernel(const HadamardArgs a) {
    __shared__ float x[HAD_ELEMS];
    const int64_t s0 = (int64_t)blockIdx.x * a.per_block;
    const int64_t nseg = a.segs - s0 < a.per_block ? a.segs - s0 : a.per_block;
    const int h = (int)a.h;
    const int n = (int)nseg * h;
    const int64_t e0 = s0 * a.h;
    for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = sdnq_load_float(a.w, e0 + i, a.dtype);
    __syncthreads();
    if (a.radix == 4) {
        const int quads = n / 4; /* per stage, over all segments */
        for (int s = 1; s < h; s *= 4) {
            for (int q = threadIdx.x; q < quads; q += blockDim.x) {
                const int seg = q / (h / 4), p = q % (h / 4);
                const int k = seg * h + (p / s) * 4 * s + p % s;
                const float a0 = x[k], a1 = x[k + s], a2 = x[k + 2 * s], a3 = x[k + 3 * s];
                x[k] = a0 + a1 + a2 - a3;
                x[k + s] = a0 + a1 - a2 + a3;
                x[k + 2 * s] = a0 - a1 + a2 + a3;
                x[k + 3 * s] = -a0 + a1 + a2 + a3;
            }
            __syncthreads();
        }
    } else {
        const int pairs = n / 2;
        for (int s = 1; s < h; s *= 2) {
            for (int q = threadIdx.x; q < pairs; q += blockDim.x) {
                const int seg = q / (h / 2), p = q % (h / 2);
                const int k = seg * h + (p / s) * 2 * s + p % s;
                const float u = x[k], v = x[k + s];
                x[k] = u + v;
                x[k + s] = u - v;
            }
            __syncthreads();
        }
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) sdnq_store_float(a.w, e0 + i, a.dtype, __fmul_rn(x[i], a.c));
}

}  // namespace sdnq_cuda

#endif /* SDNQ_CUDA_HADAMARD_CUH */
