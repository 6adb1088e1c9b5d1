/*
 * lt_emu.cpp - a host stand-in for csrc/cuda/lt_matmul.cu in the emulated build of
 * tests/cuda_emu: the same C API (sdnq_cuda_lt_*), the same argument checks, and the
 * product computed by plain loops (int8: exact int32 sums; fp8 e4m3: double sums) with
 * cuBLASLt's outer-vector scales and bias epilogue. Lets tests/test_cuda_emu.py run the
 * W8A8 paths of the linear op without a GPU.
 */
#include <stdlib.h>

#include "sdnq/sdnq_cuda.h"
#include "codec.h"
#include "internal.h"

struct sdnq_cuda_lt {
    int unused;
};

extern "C" sdnq_status sdnq_cuda_lt_create(sdnq_cuda_lt **ctx) {
    if (ctx == NULL) return SDNQ_ERR_NULL;
    *ctx = (sdnq_cuda_lt *)calloc(1, sizeof(sdnq_cuda_lt));
    return *ctx ? SDNQ_OK : SDNQ_ERR_DEVICE;
}

extern "C" void sdnq_cuda_lt_destroy(sdnq_cuda_lt *ctx) { free(ctx); }

extern "C" sdnq_status sdnq_cuda_lt_matmul(sdnq_cuda_lt *ctx, const sdnq_lt_matmul_desc *d, void *stream) {
    (void)stream;
    if (ctx == NULL || d == NULL) return SDNQ_ERR_NULL;
    const bool fp8 = d->in_dtype == SDNQ_DT_F8_E4M3FN;
    if (d->in_dtype != SDNQ_DT_I8 && !fp8) return SDNQ_ERR_DTYPE;
    if ((!fp8 && d->d_dtype != SDNQ_DT_I32) || (fp8 && !sdnq_is_arith_dtype(d->d_dtype))) return SDNQ_ERR_DTYPE;
    if (d->M < 0 || d->N < 0 || d->K < 1) return SDNQ_ERR_SIZE;
    if (d->a_numel < sdnq_mul64(d->M, d->K) || d->b_numel < sdnq_mul64(d->N, d->K) ||
        d->d_numel < sdnq_mul64(d->M, d->N))
        return SDNQ_ERR_RANGE;
    if ((d->a_scale == NULL) != (d->b_scale == NULL)) return SDNQ_ERR_NULL;
    if (!fp8 && (d->a_scale != NULL || d->bias != NULL)) return SDNQ_ERR_UNSUPPORTED;
    for (int64_t m = 0; m < d->M; m++)
        for (int64_t n = 0; n < d->N; n++) {
            double acc = 0;
            int64_t iacc = 0;
            for (int64_t k = 0; k < d->K; k++) {
                const int64_t ib = d->b_kn ? k * d->N + n : n * d->K + k;
                if (fp8)
                    acc += (double)sdnq_fp8_to_f32(((const uint8_t *)d->a)[m * d->K + k], SDNQ_DT_F8_E4M3FN) *
                           (double)sdnq_fp8_to_f32(((const uint8_t *)d->b)[ib], SDNQ_DT_F8_E4M3FN);
                else
                    iacc += (int64_t)((const int8_t *)d->a)[m * d->K + k] * ((const int8_t *)d->b)[ib];
            }
            if (!fp8) {
                ((int32_t *)d->d)[m * d->N + n] = (int32_t)iacc;
                continue;
            }
            if (d->a_scale != NULL) acc *= (double)d->a_scale[m] * (double)d->b_scale[n];
            if (d->bias != NULL) acc += sdnq_load_float(d->bias, n, d->d_dtype);
            sdnq_store_float(d->d, m * d->N + n, d->d_dtype, (float)acc);
        }
    return SDNQ_OK;
}
