/*
 * hadamard.cu - host launcher of the Hadamard kernel (hadamard.cuh),
 * validated with the C core's check (check.h).
 */
#include <math.h>

#include "hadamard.cuh"

using namespace sdnq_cuda;

extern "C" sdnq_status sdnq_cuda_hadamard(void *w, int32_t w_dtype, int64_t rows, int64_t cols, int64_t w_numel,
                                          int64_t h, int32_t kind, void *stream) {
    sdnq_status st = sdnq_hadamard_check(w, w_dtype, rows, cols, w_numel, h, kind);
    if (st != SDNQ_OK || rows == 0 || cols == 0) return st;
    if (!aligned(w, (uintptr_t)sdnq_dtype_size(w_dtype))) return SDNQ_ERR_UNSUPPORTED;
    HadamardArgs a;
    a.w = w;
    a.dtype = w_dtype;
    a.radix = sdnq_hadamard_radix(h, kind);
    a.h = h;
    a.segs = rows * (cols / h);
    a.per_block = HAD_ELEMS / h; /* >= 1: h <= SDNQ_HADAMARD_MAX == HAD_ELEMS */
    /* 1/sqrt(h) in the matrix dtype, exactly as linalg.c's hadamard_scale */
    a.c = sdnq_round_to(1.0f / (float)sqrt((double)h), w_dtype);
    const int64_t blocks = (a.segs + a.per_block - 1) / a.per_block;
    if (blocks > INT32_MAX) return SDNQ_ERR_UNSUPPORTED;
    const auto kernel = &hadamard_kernel;
    SDNQ_LAUNCH(kernel, (unsigned)blocks, HAD_THREADS, as_stream(stream), a);
    return launch_status();
}
