/*
 * w8a8.cu - host launchers of the W8A8 elementwise kernels (w8a8.cuh):
 * per-row activation quantization and the scale epilogue.
 */
#include "w8a8.cuh"

using namespace sdnq_cuda;

extern "C" sdnq_status sdnq_cuda_quantize_rows(const void *x, int32_t x_dtype, int64_t rows, int64_t cols, int64_t ldx,
                                               int64_t x_numel, void *q, int32_t q_dtype, int64_t q_numel,
                                               float *scale, int64_t scale_numel, void *stream) {
    if (!sdnq_is_arith_dtype(x_dtype) || (q_dtype != SDNQ_DT_I8 && q_dtype != SDNQ_DT_F8_E4M3FN)) return SDNQ_ERR_DTYPE;
    if (rows < 0 || cols < 0 || ldx < cols || x_numel < 0 || q_numel < 0 || scale_numel < 0) return SDNQ_ERR_SIZE;
    const int64_t n = sdnq_mul64(rows, cols);
    if (n < 0) return SDNQ_ERR_OVERFLOW;
    if (rows == 0) return SDNQ_OK;
    const int64_t xmax = sdnq_max_index3(rows, ldx, cols, 1, 1, 0);
    if (xmax < 0) return SDNQ_ERR_SIZE;
    if ((cols > 0 && xmax >= x_numel) || n > q_numel || rows > scale_numel) return SDNQ_ERR_RANGE;
    if (x == NULL || q == NULL || scale == NULL) return SDNQ_ERR_NULL;
    if (!aligned(x, (uintptr_t)sdnq_dtype_size(x_dtype)) || !aligned(scale, 4)) return SDNQ_ERR_UNSUPPORTED;
    const unsigned grid = grid_for(rows, 1, 1 << 16);
    cudaStream_t s = as_stream(stream);
    const int64_t nv = cols / 8;
    if (x_dtype != SDNQ_DT_F32 && cols % 8 == 0 && ldx % 8 == 0 && aligned(x, 16) && aligned(q, 8) && nv > 0 &&
        nv <= (int64_t)QROW_MAX_THREADS * QROW_V) {
        /* the fewest warps that hold the row in QROW_V vectors per thread (QROW_V_SMALL: one warp) */
        const bool small = nv <= 32 * QROW_V_SMALL;
        const int threads = small ? 32 : 32 * (int)((nv + 32 * QROW_V - 1) / (32 * QROW_V));
        const bool bf = x_dtype == SDNQ_DT_BF16, i8 = q_dtype == SDNQ_DT_I8;
        auto pick = [&](auto VV) {
            constexpr int VC = decltype(VV)::value;
            const auto kernel = bf ? (i8 ? &quantize_rows_vec_kernel<SDNQ_DT_BF16, SDNQ_DT_I8, VC>
                                         : &quantize_rows_vec_kernel<SDNQ_DT_BF16, SDNQ_DT_F8_E4M3FN, VC>)
                                   : (i8 ? &quantize_rows_vec_kernel<SDNQ_DT_F16, SDNQ_DT_I8, VC>
                                         : &quantize_rows_vec_kernel<SDNQ_DT_F16, SDNQ_DT_F8_E4M3FN, VC>);
            SDNQ_LAUNCH(kernel, grid, threads, s, x, rows, cols, ldx, q, scale);
        };
        if (small) pick(dt_const<QROW_V_SMALL>{});
        else pick(dt_const<QROW_V>{});
        return launch_status();
    }
    with_arith_dtype(x_dtype, [&](auto X) {
        const auto kernel = q_dtype == SDNQ_DT_I8 ? &quantize_rows_kernel<decltype(X)::value, SDNQ_DT_I8>
                                                  : &quantize_rows_kernel<decltype(X)::value, SDNQ_DT_F8_E4M3FN>;
        SDNQ_LAUNCH(kernel, grid, QROW_THREADS, s, x, rows, cols, ldx, q, scale);
    });
    return launch_status();
}

extern "C" sdnq_status sdnq_cuda_scale_epilogue(const sdnq_epilogue_desc *d, void *stream) {
    if (d == NULL) return SDNQ_ERR_NULL;
    if ((d->acc_dtype != SDNQ_DT_I32 && d->acc_dtype != SDNQ_DT_F32) || !sdnq_is_arith_dtype(d->b_scale_dtype) ||
        !sdnq_is_arith_dtype(d->out_dtype))
        return SDNQ_ERR_DTYPE;
    if (d->M < 0 || d->N < 0 || d->b_scale_stride < 0 || d->b_scale_numel < 0 || d->acc_numel < 0 ||
        d->a_scale_numel < 0 || d->out_numel < 0 || d->bias_numel < 0)
        return SDNQ_ERR_SIZE;
    const int64_t n = sdnq_mul64(d->M, d->N);
    if (n < 0) return SDNQ_ERR_OVERFLOW;
    if (n == 0) return SDNQ_OK;
    const int64_t smax = sdnq_max_index3(d->N, d->b_scale_stride, 1, 0, 1, 0);
    if (smax < 0) return SDNQ_ERR_SIZE;
    if (smax >= d->b_scale_numel || d->acc_numel < n || d->out_numel < n || d->a_scale_numel < d->M ||
        (d->bias != NULL && d->bias_numel < d->N))
        return SDNQ_ERR_RANGE;
    if (d->acc == NULL || d->a_scale == NULL || d->b_scale == NULL || d->out == NULL) return SDNQ_ERR_NULL;
    const uintptr_t osize = (uintptr_t)sdnq_dtype_size(d->out_dtype);
    if (!aligned(d->acc, 4) || !aligned(d->a_scale, 4) ||
        !aligned(d->b_scale, (uintptr_t)sdnq_dtype_size(d->b_scale_dtype)) || !aligned(d->out, osize) ||
        (d->bias != NULL && !aligned(d->bias, osize)))
        return SDNQ_ERR_UNSUPPORTED;
    cudaStream_t s = as_stream(stream);
    if (d->N % 8 == 0 && aligned(d->acc, 16) && aligned(d->out, 16)) { /* 8 columns per thread */
        const dim3 grid(grid_for(d->N / 8, EPI_VEC_THREADS, 1 << 16), grid_for(d->M, EPI_ROWS, 65535));
        with_arith_dtype(d->out_dtype, [&](auto O) {
            const auto kernel = d->acc_dtype == SDNQ_DT_I32
                                    ? &scale_epilogue_vec_kernel<SDNQ_DT_I32, decltype(O)::value>
                                    : &scale_epilogue_vec_kernel<SDNQ_DT_F32, decltype(O)::value>;
            SDNQ_LAUNCH(kernel, grid, EPI_VEC_THREADS, s, d->acc, d->M, d->N, d->a_scale, d->b_scale,
                        d->b_scale_dtype, d->b_scale_stride, d->bias, d->out);
        });
        return launch_status();
    }
    const dim3 grid(grid_for(d->N, EPI_THREADS, 1 << 16), grid_for(d->M, 1, 65535));
    with_arith_dtype(d->out_dtype, [&](auto O) {
        const auto kernel = d->acc_dtype == SDNQ_DT_I32 ? &scale_epilogue_kernel<SDNQ_DT_I32, decltype(O)::value>
                                                        : &scale_epilogue_kernel<SDNQ_DT_F32, decltype(O)::value>;
        SDNQ_LAUNCH(kernel, grid, EPI_THREADS, s, d->acc, d->M, d->N, d->a_scale, d->b_scale, d->b_scale_dtype,
                    d->b_scale_stride, d->bias, d->out);
    });
    return launch_status();
}
