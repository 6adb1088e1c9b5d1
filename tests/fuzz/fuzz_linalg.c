/*
 * fuzz_linalg.c - libFuzzer harness for the dense-matrix entry points: sdnq_svd_add /
 * sdnq_svd_add_ref (rows, cols, rank, factor strides and element counts, mixed dtypes) and
 * sdnq_hadamard / sdnq_hadamard_ref (block size, kind, rows / cols / element count).
 *
 * Input: an operation byte, dtypes, sizes, strides and counts (or a contiguous layout plus one
 * adjusted count), then the matrix and factor bits. Contract: a defined status; reference and
 * fast path (every CPU level: run the campaign with COMFY_SDNQ_CPU=baseline|avx2 too) agree on
 * status; SVD results are bit-identical (NaN payloads aside: fz_same_floats). The Hadamard fast path is a butterfly and the reference
 * a matrix product: they differ in fp32 summation order only (csrc/linalg.c), so each element
 * must agree within that order's error bound (h + log2 h) * 2^-24 * sum|x| * scale of its block,
 * plus one unit in the last place of the output dtype; non-finite results (a sum overflowing in
 * one order) are skipped.
 */
#include <math.h>

#include "fuzz_common.h"

#define CAP_ELEMS (1 << 13)

static int64_t cap(int64_t v) { return v > CAP_ELEMS ? CAP_ELEMS : v; }

static float load(const void *p, int64_t e, int32_t dt) {
    float f = 0;
    if (dt == SDNQ_DT_F32) {
        memcpy(&f, (const float *)p + e, 4);
    } else {
        uint16_t h = ((const uint16_t *)p)[e];
        if (dt == SDNQ_DT_BF16) {
            uint32_t u = (uint32_t)h << 16;
            memcpy(&f, &u, 4);
        } else {
            const int ex = (h >> 10) & 31, m = h & 1023;
            f = ex == 0 ? ldexpf((float)m, -24) : ex == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024), ex - 25);
            if (h & 0x8000) f = -f;
        }
    }
    return f;
}

/* butterfly vs matrix product of one element of a block whose |x| sum is sum_abs */
static void hadamard_close(const void *x, const void *a, const void *b, int32_t dt, int64_t n, int64_t h) {
    const float c = 1.0f / sqrtf((float)h);
    int lg = 0;
    while (((int64_t)1 << lg) < h) lg++;
    for (int64_t b0 = 0; b0 < n; b0 += h) {
        double sum_abs = 0;
        for (int64_t i = 0; i < h; i++) sum_abs += fabs((double)load(x, b0 + i, dt));
        for (int64_t e = b0; e < b0 + h; e++) {
            const float fa = load(a, e, dt), fb = load(b, e, dt);
            if (!isfinite(fa) || !isfinite(fb)) continue;
            const double m = fmax(fabs((double)fa), fabs((double)fb));
            const double ulp = dt == SDNQ_DT_F32 ? m * 0x1p-23 : dt == SDNQ_DT_BF16 ? m * 0x1p-7 : fmax(m * 0x1p-10, 0x1p-24);
            const double tol = (double)(h + lg + 2) * 0x1p-24 * sum_abs * c * 1.01 + ulp + 1e-40;
            if (!(fabs((double)fa - (double)fb) <= tol))
                FZ_FAIL("hadamard h=%lld %s element %lld: reference %a, fast %a (tolerance %g)", (long long)h,
                        sdnq_dtype_name(dt), (long long)e, (double)fa, (double)fb, tol);
        }
    }
}

static int32_t any_dtype(fz_reader *r, uint8_t b) { return (b & 7) == 7 ? fz_dtype(fz_u8(r)) : fz_arith_dtype(r, b); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_reader r = {data, size, 0};
    const uint8_t op = fz_u8(&r);
    const int32_t nthreads = fz_threads(fz_u8(&r));
    if (!(op & 1)) {
        sdnq_svd_desc d;
        memset(&d, 0, sizeof d);
        const uint8_t dts = fz_u8(&r);
        d.w_dtype = any_dtype(&r, dts & 7);
        d.up_dtype = any_dtype(&r, (dts >> 3) & 7);
        d.down_dtype = any_dtype(&r, (uint8_t)((dts >> 6) | ((op >> 4) & 4)));
        d.rows = fz_svar(&r), d.cols = fz_svar(&r), d.rank = fz_svar(&r);
        if (op & 2) { /* contiguous [rows, rank] @ [rank, cols], one count adjusted */
            d.up_stride[0] = d.rank, d.up_stride[1] = 1;
            d.down_stride[0] = d.cols, d.down_stride[1] = 1;
            d.w_numel = fz_mul(d.rows, d.cols);
            d.up_numel = fz_mul(d.rows, d.rank);
            d.down_numel = fz_mul(d.rank, d.cols);
            const uint8_t which = fz_u8(&r);
            const int64_t delta = fz_svar(&r);
            if (which & 1) d.w_numel = fz_add(d.w_numel, delta);
            if (which & 2) d.up_numel = fz_add(d.up_numel, delta);
            if (which & 4) d.down_numel = fz_add(d.down_numel, delta);
        } else {
            for (int k = 0; k < 2; k++) d.up_stride[k] = fz_svar(&r);
            for (int k = 0; k < 2; k++) d.down_stride[k] = fz_svar(&r);
            d.w_numel = fz_svar(&r), d.up_numel = fz_svar(&r), d.down_numel = fz_svar(&r);
        }
        d.w_numel = cap(d.w_numel), d.up_numel = cap(d.up_numel), d.down_numel = cap(d.down_numel);
        /* with both rank strides 0 a huge rank is valid and merely slow: keep the work bounded */
        if (d.up_stride[1] == 0 && d.down_stride[0] == 0 && d.rank > 4096) d.rank %= 4096;
        const int64_t wb = d.w_numel > 0 ? d.w_numel * fz_dt_size(d.w_dtype) : 0;
        void *w1 = fz_buffer(&r, wb, 0);
        void *up = fz_buffer(&r, d.up_numel > 0 ? d.up_numel * fz_dt_size(d.up_dtype) : 0, 0);
        void *down = fz_buffer(&r, d.down_numel > 0 ? d.down_numel * fz_dt_size(d.down_dtype) : 0, 0);
        void *w2 = fz_dup(w1, wb > 0 ? wb : 1);
        sdnq_svd_desc e = d;
        d.w = w1, d.up = up, d.down = down;
        e.w = w2, e.up = up, e.down = down;
        const sdnq_status a = sdnq_svd_add_ref(&d);
        const sdnq_status b = sdnq_svd_add(&e, nthreads);
        FZ_SAME_STATUS("svd_add", a, b);
        if (a == SDNQ_OK) fz_same_floats("svd_add", w1, w2, d.w_numel, d.w_dtype);
        if (a != SDNQ_OK && wb > 0 && memcmp(w1, w2, (size_t)wb) != 0) FZ_FAIL("svd_add failed but wrote");
        free(w1), free(w2), free(up), free(down);
    } else {
        const uint8_t dtb = fz_u8(&r);
        const int32_t dt = any_dtype(&r, dtb & 7);
        const uint8_t hb = fz_u8(&r);
        const int64_t h = hb < 0xC0 ? (int64_t)1 << (hb % 14) : fz_svar(&r);
        const int32_t kind = (dtb & 0x80) ? (int32_t)fz_svar(&r) : (dtb >> 3) & 1;
        const int64_t rows = fz_svar(&r);
        int64_t cols, numel;
        if (op & 2) {
            cols = fz_mul(h, fz_svar(&r));
            numel = fz_add(fz_mul(rows, cols), fz_svar(&r));
        } else {
            cols = fz_svar(&r);
            numel = fz_svar(&r);
        }
        numel = cap(numel);
        const int64_t wb = numel > 0 ? numel * fz_dt_size(dt) : 0;
        void *w1 = fz_buffer(&r, wb, (op & 4) != 0);
        void *w2 = fz_dup(w1, wb > 0 ? wb : 1), *w0 = fz_dup(w1, wb > 0 ? wb : 1);
        const sdnq_status a = sdnq_hadamard_ref(w1, dt, rows, cols, numel, h, kind);
        const sdnq_status b = sdnq_hadamard(w1 ? w2 : NULL, dt, rows, cols, numel, h, kind, nthreads);
        FZ_SAME_STATUS("hadamard", a, b);
        if (a == SDNQ_OK && w1 != NULL) {
            const int64_t n = rows * cols; /* validated */
            hadamard_close(w0, w1, w2, dt, n, h);
            /* elements past rows * cols are untouched by both */
            const int64_t es = sdnq_dtype_size(dt);
            fz_same_bytes("hadamard tail", (uint8_t *)w1 + n * es, (uint8_t *)w0 + n * es, wb - n * es);
            fz_same_bytes("hadamard tail", (uint8_t *)w2 + n * es, (uint8_t *)w0 + n * es, wb - n * es);
        }
        free(w0), free(w1), free(w2);
    }
    return 0;
}
