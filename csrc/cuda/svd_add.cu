/*
 * svd_add.cu - host launcher of the SVD correction kernel (svd_add.cuh),
 * validated with the C core's check (check.h).
 */
#include "svd_add.cuh"

using namespace sdnq_cuda;

extern "C" sdnq_status sdnq_cuda_svd_add(const sdnq_svd_desc *d, void *stream) {
    sdnq_status st = sdnq_svd_check(d);
    if (st != SDNQ_OK || d->rows == 0 || d->cols == 0 || d->rank == 0) return st;
    if (!aligned(d->w, (uintptr_t)sdnq_dtype_size(d->w_dtype)) ||
        !aligned(d->up, (uintptr_t)sdnq_dtype_size(d->up_dtype)) ||
        !aligned(d->down, (uintptr_t)sdnq_dtype_size(d->down_dtype)))
        return SDNQ_ERR_UNSUPPORTED;
    const int64_t row_tiles = (d->rows + SVD_TR - 1) / SVD_TR, col_tiles = (d->cols + SVD_TC - 1) / SVD_TC;
    if (row_tiles > INT32_MAX || col_tiles > 65535) return SDNQ_ERR_UNSUPPORTED;
    SvdArgs a;
    a.w = d->w;
    a.up = d->up;
    a.down = d->down;
    a.w_dtype = d->w_dtype;
    a.up_dtype = d->up_dtype;
    a.down_dtype = d->down_dtype;
    a.rows = d->rows;
    a.cols = d->cols;
    a.rank = d->rank;
    a.us0 = d->up_stride[0];
    a.us1 = d->up_stride[1];
    a.ds0 = d->down_stride[0];
    a.ds1 = d->down_stride[1];
    const auto kernel = &svd_add_kernel;
    SDNQ_LAUNCH(kernel, dim3((unsigned)row_tiles, (unsigned)col_tiles), SVD_THREADS, as_stream(stream), a);
    return launch_status();
}
