/*
 * dequant.cu - host launcher of the dequantization kernels (dequant.cuh).
 *
 * Validates the descriptor with the C core's own check (check.h), then runs
 * the flat kernel on the whole units it can take and the general kernel on
 * everything else (or the tail). Both write the CPU core's bits.
 */
#include "dequant.cuh"

using namespace sdnq_cuda;

namespace {

template <int BITS> void launch_flat(const DequantArgs &a, cudaStream_t s) {
    const int64_t work = (a.units + flat_geom<BITS>::UNROLL - 1) / flat_geom<BITS>::UNROLL;
    const unsigned grid = grid_for(work, FLAT_THREADS, (int64_t)device_sms() * FLAT_BLOCKS_PER_SM);
    with_arith_dtype(a.sdt, [&](auto S) {
        const auto kernel = &dequant_flat_kernel<BITS, decltype(S)::value>;
        SDNQ_LAUNCH(kernel, grid, FLAT_THREADS, s, a);
    });
}

/* pdl: the int8 form as a programmatic dependent launch of the row-scale kernel before it */
template <int BITS, bool Q8 = false> void launch_grouped(const DequantArgs &a, cudaStream_t s, bool pdl = false) {
    const int64_t work = (a.units + grouped_geom<BITS>::UNROLL - 1) / grouped_geom<BITS>::UNROLL;
    const unsigned grid = grid_for(work, FLAT_THREADS, (int64_t)device_sms() * FLAT_BLOCKS_PER_SM);
    with_arith_dtype(a.sdt, [&](auto S) {
        with_arith_dtype(a.odt, [&](auto O) {
            constexpr int SDT = decltype(S)::value, ODT = decltype(O)::value;
            if constexpr (!Q8 || ODT != SDNQ_DT_F32) { /* the int8 form rounds to a 16-bit dtype first */
                const auto kernel = a.asym ? &dequant_grouped_kernel<BITS, SDT, ODT, true, Q8>
                                           : &dequant_grouped_kernel<BITS, SDT, ODT, false, Q8>;
                launch_maybe_pdl(kernel, grid, FLAT_THREADS, s, pdl, a);
            }
        });
    });
}

template <int BITS> void launch_svd(const SvdDequantArgs &a, dim3 grid, cudaStream_t s) {
    with_arith_dtype(a.d.sdt, [&](auto S) {
        constexpr int SDT = decltype(S)::value;
        const auto kernel = a.d.odt == SDNQ_DT_BF16 ? &dequant_svd_kernel<BITS, SDNQ_DT_BF16, SDT>
                                                    : &dequant_svd_kernel<BITS, SDNQ_DT_F16, SDT>;
        SDNQ_LAUNCH(kernel, grid, SVDQ_THREADS, s, a);
    });
}

/* output written in code order: offset(o, j, i) == (o*red + j)*inner + i */
bool flat_output(const sdnq_dequant_desc *d) {
    return (d->outer == 1 || d->out_stride[0] == d->red * d->inner) && (d->red == 1 || d->out_stride[1] == d->inner) &&
           (d->inner == 1 || d->out_stride[2] == 1);
}

}  // namespace

namespace {

/* the checked descriptor as kernel arguments; SDNQ_ERR_UNSUPPORTED for misaligned buffers */
sdnq_status dequant_args(const sdnq_dequant_desc *d, DequantArgs *a, int64_t *n) {
    const sdnq_type_traits *t;
    int64_t levels;
    sdnq_status st = sdnq_dequant_check(d, &t, &levels);
    if (st != SDNQ_OK) return st;
    *n = d->outer * d->red * d->inner; /* no overflow: checked */
    const int64_t wsize = sdnq_dtype_size(t->storage);
    const bool asym = t->is_unsigned && !d->codebook;
    if (*n > 0 && (!aligned(d->codes, (uintptr_t)wsize) ||
                   !aligned(d->scale, (uintptr_t)sdnq_dtype_size(d->scale_dtype)) ||
                   !aligned(d->out, (uintptr_t)sdnq_dtype_size(d->out_dtype)) ||
                   (asym && !aligned(d->zero_point, (uintptr_t)sdnq_dtype_size(d->scale_dtype)))))
        return SDNQ_ERR_UNSUPPORTED;

    *a = DequantArgs{};
    a->t = *t;
    a->codes = d->codes;
    a->scale = d->scale;
    a->zp = asym ? d->zero_point : NULL;
    a->out = d->out;
    a->outer = d->outer;
    a->red = d->red;
    a->inner = d->inner;
    a->ss0 = d->scale_stride[0];
    a->ss1 = d->scale_stride[1];
    a->ss2 = d->scale_stride[2];
    a->zs0 = asym ? d->zp_stride[0] : 0;
    a->zs1 = asym ? d->zp_stride[1] : 0;
    a->os0 = d->out_stride[0];
    a->os1 = d->out_stride[1];
    a->os2 = d->out_stride[2];
    a->sdt = d->scale_dtype;
    a->odt = d->out_dtype;
    a->asym = asym;
    a->codebook = d->codebook != 0;
    a->levels = levels;
    a->block_bytes = t->is_packed ? (int64_t)t->block_words * wsize : wsize;
    return SDNQ_OK;
}

sdnq_status dequant_launch(const sdnq_dequant_desc *d, DequantArgs &a, int64_t n, cudaStream_t s) {
    sdnq_status st = SDNQ_OK;
    const sdnq_type_traits *t = &a.t;
    const int64_t nblocks = n / t->block_elems;
    int64_t done = 0; /* packing blocks the flat kernel covers */
    if (t->bits <= 8 && !d->codebook && flat_output(d) && n >= UNIT && n <= INT32_MAX && aligned(d->codes, 16) &&
        aligned(d->out, 16)) {
        a.units = n / UNIT;
        if (d->inner == 1 && d->red % UNIT == 0 && n / UNIT <= UINT32_MAX) {
            /* every unit in one scale group: the grouped kernel (group of unit u = u / gunits) */
            a.gunits = (uint32_t)(d->red / UNIT);
            a.gmagic = a.gunits > 1 ? UINT64_MAX / a.gunits + 1 : 0;
            with_unit_bits(t->bits, [&](auto B) { launch_grouped<decltype(B)::value>(a, s); });
        } else {
            with_unit_bits(t->bits, [&](auto B) { launch_flat<decltype(B)::value>(a, s); });
        }
        if ((st = launch_status()) != SDNQ_OK) return st;
        done = a.units * UNIT / t->block_elems;
    }
    if (done < nblocks) {
        a.b_begin = done;
        a.b_end = nblocks;
        const auto kernel = &dequant_general_kernel;
        SDNQ_LAUNCH(kernel, grid_for(nblocks - done, GENERAL_THREADS), GENERAL_THREADS, s, a);
        st = launch_status();
    }
    return st;
}

/* the fused kernel's load offsets are 32-bit (SvdCursor): the last scale and zero-point element
 * and the last up row's start must be below 2^31 (the codes' bytes are: n <= INT32_MAX). Offsets
 * past the weight are computed in wrapping unsigned arithmetic and never read. */
bool svd_offsets_fit(const sdnq_dequant_desc *d, const DequantArgs &a, const sdnq_svd_desc *svd) {
    const int64_t s = sdnq_mul64(d->outer - 1, a.ss0), z = a.asym ? sdnq_mul64(d->outer - 1, a.zs0) : 0;
    const int64_t u = sdnq_mul64(svd->rows - 1, svd->up_stride[0]);
    return s >= 0 && s <= INT32_MAX && z >= 0 && z <= INT32_MAX && u >= 0 && u <= INT32_MAX;
}

}  // namespace

extern "C" sdnq_status sdnq_cuda_dequantize(const sdnq_dequant_desc *d, void *stream) {
    DequantArgs a;
    int64_t n;
    sdnq_status st = dequant_args(d, &a, &n);
    if (st != SDNQ_OK || n == 0) return st;
    return dequant_launch(d, a, n, as_stream(stream));
}

extern "C" sdnq_status sdnq_cuda_dequantize_svd(const sdnq_dequant_desc *d, const sdnq_svd_desc *svd, void *stream) {
    if (d == NULL || svd == NULL) return SDNQ_ERR_NULL;
    DequantArgs a;
    int64_t n;
    sdnq_status st = dequant_args(d, &a, &n);
    if (st != SDNQ_OK) return st;
    /* the SVD step works on the dequantized weight: the same buffer, dtype and size */
    if (svd->w != d->out || svd->w_dtype != d->out_dtype || sdnq_mul64(svd->rows, svd->cols) != n ||
        svd->w_numel > d->out_numel)
        return SDNQ_ERR_SIZE;
    if ((st = sdnq_svd_check(svd)) != SDNQ_OK) return st;
    if (n == 0) return SDNQ_OK;
    cudaStream_t s = as_stream(stream);
    /* fused for rank <= 32, <= 8-bit codes in linear layouts with groups of a multiple of 8 codes
     * (each unit in one group), BF16/F16 output with factors of that dtype */
    const bool fusable = svd->rank > 0 && svd->rank <= SVDQ_RANK && a.t.bits <= 8 && !d->codebook && d->inner == 1 &&
                         d->red % UNIT == 0 && flat_output(d) && svd->cols % UNIT == 0 && n <= INT32_MAX &&
                         aligned(d->codes, 16) && aligned(d->out, 16) &&
                         (d->out_dtype == SDNQ_DT_BF16 || d->out_dtype == SDNQ_DT_F16) &&
                         svd->up_dtype == d->out_dtype && svd->down_dtype == d->out_dtype &&
                         aligned(svd->up, 2) && aligned(svd->down, 2) && svd_offsets_fit(d, a, svd);
    if (!fusable) { /* the two steps in sequence, same stream */
        if ((st = dequant_launch(d, a, n, s)) != SDNQ_OK) return st;
        return sdnq_cuda_svd_add(svd, stream);
    }
    SvdDequantArgs sa;
    sa.d = a;
    sa.d.units = n / UNIT; /* cols % 8 == 0 */
    sa.d.gunits = (uint32_t)(d->red / UNIT);
    sa.d.gmagic = sa.d.gunits > 1 ? UINT64_MAX / sa.d.gunits + 1 : 0;
    sa.rows = svd->rows;
    sa.cols = svd->cols;
    sa.rank = (int32_t)svd->rank;
    sa.up = svd->up;
    sa.down = svd->down;
    sa.us0 = svd->up_stride[0];
    sa.us1 = svd->up_stride[1];
    sa.ds0 = svd->down_stride[0];
    sa.ds1 = svd->down_stride[1];
    sa.up_vec = svd->up_stride[1] == 1 && svd->up_stride[0] % 8 == 0 && aligned(svd->up, 16);
    sa.down_t = svd->down_stride[0] == 1 && svd->down_stride[1] % 8 == 0 && svd->rank % 8 == 0 &&
                aligned(svd->down, 16);
    sa.down_c = !sa.down_t && svd->down_stride[1] == 1 && svd->down_stride[0] % 8 == 0 && aligned(svd->down, 16);
    /* the loads step down a strip by fixed offsets where no scale group straddles a row */
    const int64_t upr = svd->cols / UNIT; /* units per weight row */
    sa.inc = upr % sa.d.gunits == 0;
    const int64_t g8 = sa.inc ? 8 * (upr / sa.d.gunits) : 0; /* groups per 8 rows */
    sa.s8 = (uint32_t)(g8 * a.ss0);
    sa.z8 = (uint32_t)(g8 * (a.asym ? a.zs0 : 0));
    sa.u8 = (uint32_t)(8 * svd->up_stride[0]);
    /* one wave of blocks, each taking an equal contiguous range of the strip-major tile order */
    sa.strips = (svd->cols + SVDQ_TC - 1) / SVDQ_TC;
    const int64_t tiles = sa.strips * ((svd->rows + SVDQ_TR - 1) / SVDQ_TR);
    int64_t blocks = (int64_t)device_sms() * SVDQ_BLOCKS_PER_SM;
    if (blocks > tiles) blocks = tiles;
    const dim3 grid((unsigned)blocks);
    with_unit_bits(a.t.bits, [&](auto B) { launch_svd<decltype(B)::value>(sa, grid, s); });
    return launch_status();
}

extern "C" sdnq_status sdnq_cuda_dequantize_q8(const sdnq_dequant_desc *d0, const sdnq_q8_desc *q, void *stream) {
    if (d0 == NULL || q == NULL) return SDNQ_ERR_NULL;
    if (q->rows < 0 || q->cols < 0 || q->q_numel < 0 || q->row_scale_numel < 0) return SDNQ_ERR_SIZE;
    /* the weight as sdnq_cuda_dequantize describes it, written as int8 into q in code order */
    sdnq_dequant_desc d = *d0;
    d.out = q->q;
    d.out_numel = q->q_numel;
    d.out_stride[0] = d.red * d.inner;
    d.out_stride[1] = d.inner;
    d.out_stride[2] = 1;
    DequantArgs a;
    int64_t n;
    sdnq_status st = dequant_args(&d, &a, &n);
    if (st != SDNQ_OK) return st;
    if (sdnq_mul64(q->rows, q->cols) != n) return SDNQ_ERR_SIZE;
    if (q->row_scale_numel < q->rows) return SDNQ_ERR_RANGE;
    if (q->derive_scales != 0 && q->derive_scales != 1) return SDNQ_ERR_SIZE;
    if (n == 0) return SDNQ_OK;
    if (q->q == NULL || q->row_scale == NULL) return SDNQ_ERR_NULL;
    /* the grouped kernel only, for 4- and 8-bit integer codes (the W4A8 path's, and grouped int8
     * weights on the W8A8 path): whole 8-code units in one scale group each, rows of whole units,
     * 16-byte aligned codes and output */
    if ((a.t.bits != 4 && a.t.bits != 8) || !a.t.is_integer || d.codebook || d.inner != 1 || d.red % UNIT != 0 ||
        q->cols % UNIT != 0 || n > INT32_MAX || !aligned(d.codes, 16) || !aligned(q->q, 16) ||
        (d.out_dtype != SDNQ_DT_BF16 && d.out_dtype != SDNQ_DT_F16))
        return SDNQ_ERR_UNSUPPORTED;
    a.units = n / UNIT;
    a.gunits = (uint32_t)(d.red / UNIT);
    a.gmagic = a.gunits > 1 ? UINT64_MAX / a.gunits + 1 : 0;
    a.q8_upr = (uint32_t)(q->cols / UNIT);
    a.q8_rmagic = a.q8_upr > 1 ? UINT64_MAX / a.q8_upr + 1 : 0;
    const cudaStream_t s = as_stream(stream);
    if (q->derive_scales) { /* an integer type's values span [min, min + 2^bits - 1] */
        const float vlo = (float)a.t.min, vhi = (float)(a.t.min + ((1 << a.t.bits) - 1));
        const unsigned grid = grid_for(q->rows, Q8_SCALE_THREADS / 32, (int64_t)device_sms() * 8);
        with_arith_dtype(a.sdt, [&](auto S) {
            constexpr int SDT = decltype(S)::value;
            const auto launch = [&](auto O) {
                constexpr int ODT = decltype(O)::value;
                const auto kernel =
                    a.asym ? &q8_row_scale_kernel<SDT, ODT, true> : &q8_row_scale_kernel<SDT, ODT, false>;
                SDNQ_LAUNCH(kernel, grid, Q8_SCALE_THREADS, s, a, q->rows, q->cols, vlo, vhi, q->row_scale);
            };
            if (a.odt == SDNQ_DT_BF16) launch(dt_const<SDNQ_DT_BF16>{});
            else launch(dt_const<SDNQ_DT_F16>{});
        });
    }
    a.q8_scale = q->row_scale;
    const bool pdl = q->derive_scales && device_cc_major() >= 9;
    if (a.t.bits == 4) launch_grouped<4, true>(a, s, pdl);
    else launch_grouped<8, true>(a, s, pdl);
    return launch_status();
}
