/*
 * fuzz_cuda.cc - libFuzzer harness for the CUDA entry points that take sizes from a file
 * (include/sdnq/sdnq_cuda.h: sdnq_cuda_dequantize, sdnq_cuda_dequantize_svd, sdnq_cuda_svd_add,
 * sdnq_cuda_hadamard), compiled for the CPU with the test suite's CUDA emulation
 * (tests/cuda_emu/cuda_emu.h, -DSDNQ_CUDA_EMU): the host-side argument checks and the kernels'
 * index arithmetic run under ASan/UBSan on host memory.
 *
 * Input: an operation byte, then a call description as in fuzz_dequant / fuzz_linalg (type,
 * flags, sizes, strides, element counts, then the bytes). Contract: the CUDA launcher returns
 * the status the CPU core returns for the same descriptor, and on success the same bits
 * (dequantize and SVD against the CPU reference, Hadamard against the CPU fast path, whose
 * butterfly order the kernel follows; dequantize_svd's fused kernel sums the rank in another
 * order and is held to the two-step result within the error bound of that sum).
 */
#include <math.h>

#include "fuzz_common.h"
#include "sdnq/sdnq_cuda.h"

#define CAP_ELEMS (1 << 12)
#define CAP_BYTES (1 << 14)

static int64_t cap(int64_t v, int64_t c) { return v > c ? c : v; }

/* a dequantization descriptor with explicit strides and counts; buffers from the input */
static void read_dequant(fz_reader *r, sdnq_dequant_desc *d, void **bufs) {
    memset(d, 0, sizeof *d);
    d->type = fz_u8(r);
    const uint8_t flags = fz_u8(r);
    d->codebook = flags & 1;
    d->scale_dtype = fz_arith_dtype(r, flags >> 2);
    d->out_dtype = fz_arith_dtype(r, flags >> 4);
    d->outer = fz_svar(r), d->red = fz_svar(r), d->inner = fz_svar(r);
    if (flags & 0x40) { /* contiguous */
        const sdnq_type_traits *t = sdnq_type_get(d->type);
        int64_t levels = d->codebook && t != NULL && t->is_integer && t->is_unsigned && t->bits <= 16 ? (int64_t)t->max + 1 : 1;
        d->scale_stride[0] = fz_mul(levels, d->inner), d->scale_stride[1] = 1, d->scale_stride[2] = d->inner;
        d->zp_stride[0] = d->inner, d->zp_stride[1] = 1;
        d->out_stride[0] = fz_mul(d->red, d->inner), d->out_stride[1] = d->inner, d->out_stride[2] = 1;
        d->out_numel = fz_mul(fz_mul(d->outer, d->red), d->inner);
        d->scale_numel = fz_mul(fz_mul(d->outer, d->inner), levels);
        d->zp_numel = fz_mul(d->outer, d->inner);
        int64_t words = 0;
        d->codes_bytes = t != NULL && sdnq_storage_words(d->type, d->out_numel, &words) == SDNQ_OK
                             ? fz_mul(words, sdnq_dtype_size(t->storage))
                             : fz_svar(r);
        d->out_numel = fz_add(d->out_numel, fz_svar(r));
    } else {
        for (int k = 0; k < 3; k++) d->scale_stride[k] = fz_svar(r);
        for (int k = 0; k < 2; k++) d->zp_stride[k] = fz_svar(r);
        for (int k = 0; k < 3; k++) d->out_stride[k] = fz_svar(r);
        d->scale_numel = fz_svar(r), d->zp_numel = fz_svar(r), d->out_numel = fz_svar(r), d->codes_bytes = fz_svar(r);
    }
    d->scale_numel = cap(d->scale_numel, CAP_ELEMS), d->zp_numel = cap(d->zp_numel, CAP_ELEMS);
    d->out_numel = cap(d->out_numel, CAP_ELEMS), d->codes_bytes = cap(d->codes_bytes, CAP_BYTES);
    const int64_t ss = fz_dt_size(d->scale_dtype);
    bufs[0] = fz_buffer(r, d->codes_bytes, 0);
    bufs[1] = fz_buffer(r, d->scale_numel > 0 ? d->scale_numel * ss : 0, 0);
    bufs[2] = (flags & 2) ? fz_buffer(r, d->zp_numel > 0 ? d->zp_numel * ss : 0, 0) : NULL;
    d->codes = bufs[0], d->scale = bufs[1], d->zero_point = bufs[2];
}

static void read_svd(fz_reader *r, sdnq_svd_desc *d, void **bufs, int contiguous) {
    memset(d, 0, sizeof *d);
    const uint8_t dts = fz_u8(r);
    d->w_dtype = fz_arith_dtype(r, dts), d->up_dtype = fz_arith_dtype(r, dts >> 2), d->down_dtype = fz_arith_dtype(r, dts >> 4);
    d->rows = fz_svar(r), d->cols = fz_svar(r), d->rank = fz_svar(r);
    if (contiguous) {
        d->up_stride[0] = d->rank, d->up_stride[1] = 1, d->down_stride[0] = d->cols, d->down_stride[1] = 1;
        d->w_numel = fz_mul(d->rows, d->cols), d->up_numel = fz_mul(d->rows, d->rank);
        d->down_numel = fz_add(fz_mul(d->rank, d->cols), fz_svar(r));
    } else {
        for (int k = 0; k < 2; k++) d->up_stride[k] = fz_svar(r);
        for (int k = 0; k < 2; k++) d->down_stride[k] = fz_svar(r);
        d->w_numel = fz_svar(r), d->up_numel = fz_svar(r), d->down_numel = fz_svar(r);
    }
    d->w_numel = cap(d->w_numel, CAP_ELEMS), d->up_numel = cap(d->up_numel, CAP_ELEMS);
    d->down_numel = cap(d->down_numel, CAP_ELEMS);
    if (d->up_stride[1] == 0 && d->down_stride[0] == 0 && d->rank > 512) d->rank %= 512;
    bufs[0] = fz_buffer(r, d->w_numel > 0 ? d->w_numel * fz_dt_size(d->w_dtype) : 0, 0);
    bufs[1] = fz_buffer(r, d->up_numel > 0 ? d->up_numel * fz_dt_size(d->up_dtype) : 0, 0);
    bufs[2] = fz_buffer(r, d->down_numel > 0 ? d->down_numel * fz_dt_size(d->down_dtype) : 0, 0);
    d->w = bufs[0], d->up = bufs[1], d->down = bufs[2];
}

static void *alloc_out(int64_t numel, int32_t dt) {
    const int64_t b = numel > 0 ? numel * fz_dt_size(dt) : 1;
    void *p = malloc((size_t)b);
    if (p == NULL) abort();
    memset(p, 0x5A, (size_t)b);
    return p;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_reader r = {data, size, 0};
    const uint8_t op = fz_u8(&r);
    switch (op % 4) {
    case 0: { /* dequantize */
        sdnq_dequant_desc d, e;
        void *bufs[3];
        read_dequant(&r, &d, bufs);
        void *o1 = alloc_out(d.out_numel, d.out_dtype), *o2 = alloc_out(d.out_numel, d.out_dtype);
        e = d;
        d.out = o1, e.out = o2;
        const sdnq_status a = sdnq_dequantize_ref(&d);
        const sdnq_status b = sdnq_cuda_dequantize(&e, NULL);
        FZ_SAME_STATUS("cuda_dequantize", a, b);
        if (a == SDNQ_OK) fz_same_floats("cuda_dequantize output", o1, o2, d.out_numel, d.out_dtype);
        free(o1), free(o2), free(bufs[0]), free(bufs[1]), free(bufs[2]);
        break;
    }
    case 1: { /* svd_add */
        sdnq_svd_desc d;
        void *bufs[3];
        read_svd(&r, &d, bufs, (op & 0x10) != 0);
        const int64_t wb = d.w_numel > 0 ? d.w_numel * fz_dt_size(d.w_dtype) : 0;
        void *w2 = fz_dup(bufs[0], wb > 0 ? wb : 1);
        sdnq_svd_desc e = d;
        e.w = w2;
        const sdnq_status a = sdnq_svd_add_ref(&d);
        const sdnq_status b = sdnq_cuda_svd_add(&e, NULL);
        FZ_SAME_STATUS("cuda_svd_add", a, b);
        if (a == SDNQ_OK) fz_same_floats("cuda_svd_add", bufs[0], w2, d.w_numel, d.w_dtype);
        free(w2), free(bufs[0]), free(bufs[1]), free(bufs[2]);
        break;
    }
    case 2: { /* hadamard, against the CPU fast path (same butterfly) */
        const uint8_t dtb = fz_u8(&r);
        const int32_t dt = fz_arith_dtype(&r, dtb);
        const uint8_t hb = fz_u8(&r);
        const int64_t h = hb < 0xC0 ? (int64_t)1 << (hb % 13) : fz_svar(&r);
        const int32_t kind = (dtb & 0x80) ? (int32_t)fz_svar(&r) : (dtb >> 3) & 1;
        const int64_t rows = fz_svar(&r);
        const int64_t cols = (op & 0x10) ? fz_mul(h, fz_svar(&r)) : fz_svar(&r);
        const int64_t numel = cap((op & 0x10) ? fz_add(fz_mul(rows, cols), fz_svar(&r)) : fz_svar(&r), CAP_ELEMS);
        const int64_t wb = numel > 0 ? numel * fz_dt_size(dt) : 0;
        void *w1 = fz_buffer(&r, wb, (op & 0x20) != 0);
        void *w2 = fz_dup(w1, wb > 0 ? wb : 1);
        const sdnq_status a = sdnq_hadamard(w1, dt, rows, cols, numel, h, kind, 1);
        const sdnq_status b = sdnq_cuda_hadamard(w1 ? w2 : NULL, dt, rows, cols, numel, h, kind, NULL);
        FZ_SAME_STATUS("cuda_hadamard", a, b);
        if (a == SDNQ_OK && w1 != NULL) fz_same_floats("cuda_hadamard", w1, w2, numel, dt);
        free(w1), free(w2);
        break;
    }
    default: { /* dequantize_svd: the dequantized weight plus its SVD correction */
        sdnq_dequant_desc d, e;
        sdnq_svd_desc s;
        void *bufs[3], *sbufs[3];
        read_dequant(&r, &d, bufs);
        read_svd(&r, &s, sbufs, 1);
        free(sbufs[0]);
        void *o1 = alloc_out(d.out_numel, d.out_dtype), *o2 = alloc_out(d.out_numel, d.out_dtype);
        e = d;
        d.out = o1, e.out = o2;
        /* svd's w is the output: same pointer, dtype and element count, row-major [rows, n / rows] */
        s.w_dtype = d.out_dtype, s.w_numel = d.out_numel;
        if (s.rows > 0 && d.out_numel > 0 && d.out_numel % s.rows == 0) s.cols = d.out_numel / s.rows;
        sdnq_svd_desc s1 = s, s2 = s;
        s1.w = o1, s2.w = o2;
        sdnq_status a = sdnq_dequantize_ref(&d);
        if (a == SDNQ_OK) a = sdnq_svd_add_ref(&s1);
        const sdnq_status b = sdnq_cuda_dequantize_svd(&e, &s2, NULL);
        FZ_STATUS_OK("cuda_dequantize_svd", b);
        /* the launcher may refuse more (w must be exactly the output), never less */
        if (b == SDNQ_OK && a != SDNQ_OK)
            FZ_FAIL("cuda_dequantize_svd accepted what the CPU two steps refuse (%s)", sdnq_status_str(a));
        if (a == SDNQ_OK && b == SDNQ_OK && (s.rank == 0 || s.rows * s.cols == 0))
            fz_same_floats("cuda_dequantize_svd", o1, o2, d.out_numel, d.out_dtype);
        free(o1), free(o2), free(bufs[0]), free(bufs[1]), free(bufs[2]), free(sbufs[1]), free(sbufs[2]);
        break;
    }
    }
    return 0;
}
