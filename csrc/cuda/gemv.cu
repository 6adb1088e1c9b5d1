/*
 * gemv.cu - host side of the small-M linear kernel (gemv.cuh): what it takes
 * (sdnq_cuda_gemv_supported) and the launch. Everything it does not take is
 * reported with a status so the caller can dequantize and run a GEMM instead.
 */
#include <atomic>

#include "gemv.cuh"

using namespace sdnq_cuda;

namespace {

/* floats of one segment of the split-K work buffer: a row group's partial sums for M tokens */
constexpr int64_t gemv_segment_floats(int64_t M) { return (int64_t)GEMV_WARPS * (M > 8 ? 2 : 1) * GEMV_FRAG; }
static_assert(SDNQ_GEMV_WORK_FLOATS(1, GEMV_GROUP + 1, 3) == 5 * gemv_segment_floats(1) &&
                  SDNQ_GEMV_WORK_FLOATS(9, GEMV_GROUP, 2) == 3 * gemv_segment_floats(9),
              "SDNQ_GEMV_WORK_FLOATS matches the kernel's segments");

/* floats of one low-rank block's partial sums of t (gemv_lowrank_kernel): per token tile and 16
 * ranks, a fragment of 4 floats per lane */
constexpr int64_t lr_split_floats(int64_t M, int64_t rank) { return (M > 8 ? 2 : 1) * ((rank + 15) / 16) * LR_FRAG; }
static_assert(SDNQ_GEMV_LOWRANK_FLOATS(1, 17, 3) == 3 * lr_split_floats(1, 17) &&
                  SDNQ_GEMV_LOWRANK_FLOATS(9, 32, 1) == lr_split_floats(9, 32),
              "SDNQ_GEMV_LOWRANK_FLOATS matches the low-rank blocks' partial sums");
/* ranks the SVD branch takes (the kernels' rank arithmetic is 32-bit) */
constexpr int64_t LR_MAX_RANK = (int64_t)1 << 20;

/* row groups of the split-K GEMV, and how many blocks' segments the work buffer holds besides
 * one per row group (prepare() refuses less than one) */
int64_t gemv_row_groups(int64_t N) { return (N + GEMV_GROUP - 1) / GEMV_GROUP; }
int64_t gemv_blocks_fit(const sdnq_gemv_desc *d) {
    return d->work_numel / gemv_segment_floats(d->M) - gemv_row_groups(d->N);
}

/* max index (rows-1)*ld + cols-1 stays below numel, ld >= cols */
bool fits2d(int64_t rows, int64_t cols, int64_t ld, int64_t numel) {
    if (ld < cols) return false;
    int64_t last = sdnq_max_index3(rows, ld, cols, 1, 1, 0);
    return last >= 0 && last < numel;
}

/* f(dt_const<layout>) for a LowrankLayout */
template <class F> void with_lowrank_layout(int layout, F &&f) {
    if (layout == LR_KPAIRS) f(dt_const<LR_KPAIRS>{});
    else if (layout == LR_JPAIRS) f(dt_const<LR_JPAIRS>{});
    else f(dt_const<LR_ANY>{});
}

/* how the low-rank kernel reads down (gemv.cuh's LowrankLayout): pairs along k or along the rank
 * in x's dtype, 4-byte aligned, else element by element */
int lowrank_layout(const sdnq_gemv_desc *d) {
    if (d->down_dtype != d->x_dtype || !aligned(d->down, 4)) return LR_ANY;
    if (d->down_stride[1] == 1 && d->down_stride[0] % 2 == 0) return LR_KPAIRS;
    if (d->down_stride[0] == 1 && d->down_stride[1] % 2 == 0 && d->rank % 2 == 0) return LR_JPAIRS;
    return LR_ANY;
}

/* The low-rank kernel's blocks, given the block slots the GEMV's grid leaves free (it runs in
 * them, beside the weight stream): as many as are free, so that each warp issues one round of
 * loads per group of ranks (LR_UNROLL 16-k steps), but at least enough for three rounds (the
 * SVD branch then still ends before the weight stream) and at most SDNQ_GEMV_LOWRANK_SPLITS and
 * what the scratch holds; each block's k range a multiple of 32. Returns the blocks the GEMV
 * must give up for them (0 where enough are free). */
int64_t lowrank_split(const sdnq_gemv_desc *d, int64_t free_slots, GemvArgs *a) {
    const int64_t steps = d->K / 16 * ((d->rank + 16 * LR_RSTEPS - 1) / (16 * LR_RSTEPS)); /* per warp: / 8 */
    const int64_t round = GEMV_WARPS * LR_UNROLL;
    const int64_t lo = (steps + 3 * round - 1) / (3 * round), hi = (steps + round - 1) / round;
    int64_t want = free_slots > lo ? free_slots : lo;
    if (want > hi) want = hi;
    const int64_t fit = d->lowrank_numel / lr_split_floats(d->M, d->rank); /* >= 1: prepare() */
    if (want > SDNQ_GEMV_LOWRANK_SPLITS) want = SDNQ_GEMV_LOWRANK_SPLITS;
    if (want > fit) want = fit;
    if (want < 1) want = 1;
    const int64_t kb = ((d->K + want - 1) / want + 31) / 32 * 32;
    a->lr_kb = (int32_t)kb;
    a->lr_blocks = (int32_t)((d->K + kb - 1) / kb);
    return a->lr_blocks > free_slots ? a->lr_blocks - free_slots : 0;
}

sdnq_status prepare(const sdnq_gemv_desc *d, GemvArgs *a) {
    if (d == NULL) return SDNQ_ERR_NULL;
    const sdnq_type_traits *t = sdnq_type_get(d->type);
    if (t == NULL) return SDNQ_ERR_TYPE;
    /* packed types of 2..8 bits, and 8-bit natives (int8, uint8, fp8): one byte per code */
    if (t->bits < 2 || t->bits > 8 || (!t->is_packed && sdnq_dtype_size(t->storage) != 1)) return SDNQ_ERR_UNSUPPORTED;
    if (d->x_dtype != SDNQ_DT_BF16 && d->x_dtype != SDNQ_DT_F16) return SDNQ_ERR_DTYPE;
    if (!sdnq_is_arith_dtype(d->scale_dtype)) return SDNQ_ERR_DTYPE;
    if (d->M < 1 || d->M > SDNQ_GEMV_MAX_M || d->N < 0 || d->K < 1 || d->red < 1) return SDNQ_ERR_SIZE;
    if (d->K % GEMV_CODES != 0 || d->K > INT32_MAX - GEMV_CHUNK || d->N > INT32_MAX - 2 * GEMV_GROUP)
        return SDNQ_ERR_UNSUPPORTED;
    const int64_t n = sdnq_mul64(d->N, d->K);
    if (n < 0) return SDNQ_ERR_OVERFLOW;
    if (d->N == 0) return SDNQ_OK;

    /* groups: a divisor of K (row-wise or grouped), or all N*K codes (tensor-wise) */
    int64_t gk, gpr, groups;
    if (d->red == n && d->red != d->K) {
        gk = d->K;
        gpr = 0;
        groups = 1;
    } else if (d->K % d->red == 0) {
        gk = d->red;
        gpr = d->K / d->red;
        groups = d->N * gpr;
    } else {
        return SDNQ_ERR_UNSUPPORTED;
    }
    if (gk % GEMV_CODES != 0) return SDNQ_ERR_UNSUPPORTED;
    { /* the kernel's per-chunk offsets within a weight row are 32-bit (GemvRows) */
        const int64_t srow = sdnq_mul64(gpr, d->scale_stride);
        const int64_t zrow = t->is_unsigned ? sdnq_mul64(gpr, d->zp_stride) : 0;
        if (srow < 0 || srow > INT32_MAX || zrow < 0 || zrow > INT32_MAX) return SDNQ_ERR_UNSUPPORTED;
    }

    int64_t need;
    if (t->is_packed) {
        int64_t words;
        sdnq_status st = sdnq_storage_words(d->type, n, &words);
        if (st != SDNQ_OK) return st;
        need = sdnq_mul64(words, sdnq_dtype_size(t->storage));
    } else {
        need = n;
    }
    if (need < 0) return SDNQ_ERR_OVERFLOW;
    if (d->codes_bytes < need) return SDNQ_ERR_RANGE;

    const bool asym = t->is_unsigned != 0;
    if (d->codes == NULL || d->x == NULL || d->y == NULL || d->scale == NULL || (asym && d->zero_point == NULL))
        return SDNQ_ERR_NULL;
    if (!asym && d->zero_point != NULL) return SDNQ_ERR_SIZE;
    int64_t smax = sdnq_max_index3(groups, d->scale_stride, 1, 0, 1, 0);
    if (smax < 0) return SDNQ_ERR_SIZE;
    if (smax >= d->scale_numel) return SDNQ_ERR_RANGE;
    if (asym) {
        int64_t zmax = sdnq_max_index3(groups, d->zp_stride, 1, 0, 1, 0);
        if (zmax < 0) return SDNQ_ERR_SIZE;
        if (zmax >= d->zp_numel) return SDNQ_ERR_RANGE;
    }
    if (!fits2d(d->M, d->K, d->ldx, d->x_numel) || !fits2d(d->M, d->N, d->ldy, d->y_numel)) return SDNQ_ERR_RANGE;
    if (d->bias != NULL && d->bias_numel < d->N) return SDNQ_ERR_RANGE;
    if (d->rank < 0 || d->rank > INT32_MAX) return SDNQ_ERR_SIZE;
    if (d->rank > 0) { /* the SVD branch: up [N, rank], down [rank, K] through strides, low-rank scratch */
        if (d->up == NULL || d->down == NULL || d->lowrank == NULL) return SDNQ_ERR_NULL;
        if (!sdnq_is_arith_dtype(d->up_dtype) || !sdnq_is_arith_dtype(d->down_dtype)) return SDNQ_ERR_DTYPE;
        const int64_t umax = sdnq_max_index3(d->N, d->up_stride[0], d->rank, d->up_stride[1], 1, 0);
        const int64_t dmax = sdnq_max_index3(d->rank, d->down_stride[0], d->K, d->down_stride[1], 1, 0);
        if (umax < 0 || dmax < 0 || d->up_stride[0] < 0 || d->up_stride[1] < 0 || d->down_stride[0] < 0 ||
            d->down_stride[1] < 0)
            return SDNQ_ERR_SIZE;
        if (umax >= d->up_numel || dmax >= d->down_numel) return SDNQ_ERR_RANGE;
        if (d->rank > LR_MAX_RANK) return SDNQ_ERR_UNSUPPORTED;
        if (d->lowrank_numel < lr_split_floats(d->M, d->rank)) return SDNQ_ERR_RANGE; /* one block's */
        if (!aligned(d->up, (uintptr_t)sdnq_dtype_size(d->up_dtype)) ||
            !aligned(d->down, (uintptr_t)sdnq_dtype_size(d->down_dtype)) || !aligned(d->lowrank, 16))
            return SDNQ_ERR_UNSUPPORTED;
    }

    /* split-K: the items (row group, chunk) and the work buffer (gemv.cuh): the segments of one
     * block per item range besides one per row group at least */
    const int64_t nch = (d->K + GEMV_CHUNK - 1) / GEMV_CHUNK;
    const int64_t items = sdnq_mul64(gemv_row_groups(d->N), nch);
    if (items < 0 || items > INT32_MAX) return SDNQ_ERR_UNSUPPORTED;
    if (d->work == NULL) return SDNQ_ERR_NULL;
    if (!aligned(d->work, 4)) return SDNQ_ERR_UNSUPPORTED;
    if (gemv_blocks_fit(d) < 1) return SDNQ_ERR_RANGE;
    if (d->rank > 0) { /* the two scratches are disjoint (byte distances: no pointer overflow) */
        const uintptr_t w = (uintptr_t)d->work, l = (uintptr_t)d->lowrank;
        if (l >= w ? (uint64_t)(l - w) / sizeof(float) < (uint64_t)d->work_numel
                   : (uint64_t)(w - l) / sizeof(float) < (uint64_t)d->lowrank_numel)
            return SDNQ_ERR_RANGE;
    }

    /* 16-byte vector loads of codes and x (row starts stay aligned: K % 32 == 0, ldx % 8 == 0) */
    const uintptr_t ssize = (uintptr_t)sdnq_dtype_size(d->scale_dtype);
    if (!aligned(d->codes, 16) || !aligned(d->x, 16) || d->ldx % 8 != 0 || !aligned(d->y, 2) ||
        (d->bias != NULL && !aligned(d->bias, 2)) || !aligned(d->scale, ssize) ||
        (asym && !aligned(d->zero_point, ssize)))
        return SDNQ_ERR_UNSUPPORTED;

    if (a != NULL) {
        *a = GemvArgs{};
        a->t = *t;
        a->x = d->x;
        a->bias = d->bias;
        a->codes = d->codes;
        a->scale = d->scale;
        a->zp = asym ? d->zero_point : NULL;
        a->y = d->y;
        a->ldx = d->ldx;
        a->ldy = d->ldy;
        a->M = (int32_t)d->M;
        a->N = (int32_t)d->N;
        a->K = (int32_t)d->K;
        a->gk = (int32_t)gk;
        a->gpr = (int32_t)gpr;
        a->gmagic = UINT64_MAX / (uint64_t)gk + 1; /* ceil(2^64 / gk), gk >= 32 */
        a->rowb = d->K * t->bits / 8;
        a->ss = d->scale_stride;
        a->zs = asym ? d->zp_stride : 0;
        a->asym = asym;
        /* 4- and 8-bit integers: the magic-number decode (value = 2^23 + byte - magic_sub) */
        a->xor8 = 0;
        a->magic_sub = 8388608.0f;
        if (t->family == SDNQ_FAMILY_INT && t->is_packed) a->magic_sub = 8388608.0f - (float)t->min;
        if (!t->is_packed && t->storage == SDNQ_DT_I8) { /* two's complement: (b ^ 0x80) - 128 */
            a->xor8 = 0x80808080u;
            a->magic_sub = 8388608.0f + 128.0f;
        }
        { /* the packed decode's offset pair: magic base (bf16 128, f16 1024) minus the type's min */
            const bool bf = d->x_dtype == SDNQ_DT_BF16;
            const float off = (bf ? 128.0f : 1024.0f) - (float)t->min;
            const uint32_t h = bf ? sdnq_f32_to_bf16(off) : sdnq_f32_to_f16(off);
            a->off2 = h | (h << 16);
            a->top_sub = 16.0f - (float)t->min; /* deq_packed4_top's offset */
        }
        a->nch = (int32_t)nch;
        a->items = (int32_t)items;
        a->work = d->work;
        a->rank = (int32_t)d->rank;
        a->lowrank = d->lowrank;
        a->up = d->up;
        a->up_dtype = d->up_dtype;
        a->us0 = d->up_stride[0];
        a->us1 = d->up_stride[1];
        a->down = d->down;
        a->down_dtype = d->down_dtype;
        a->ds0 = d->down_stride[0];
        a->ds1 = d->down_stride[1];
        a->lr_layout = d->rank > 0 ? lowrank_layout(d) : LR_ANY;
    }
    return SDNQ_OK;
}

/* the magic-number decode applies: 4-bit packed and 8-bit native integer types */
bool int_decode(const sdnq_type_traits *t) {
    if (t->family != SDNQ_FAMILY_INT && t->family != SDNQ_FAMILY_UINT) return false;
    if (t->is_packed) return t->bits == 4;
    return t->storage == SDNQ_DT_I8 || t->storage == SDNQ_DT_U8;
}

template <int BITS, int NT, int DEC, bool FACT>
void launch_gemv(const GemvArgs &a, int32_t xdt, int32_t sdt, unsigned grid, cudaStream_t s) {
    with_arith_dtype(sdt, [&](auto S) {
        const auto kernel = xdt == SDNQ_DT_BF16 ? &gemv_kernel<BITS, SDNQ_DT_BF16, decltype(S)::value, NT, DEC, FACT>
                                                : &gemv_kernel<BITS, SDNQ_DT_F16, decltype(S)::value, NT, DEC, FACT>;
        SDNQ_LAUNCH(kernel, grid, GEMV_THREADS, s, a);
    });
}

/* gemv_lowrank_kernel for down's layout and the token tiles */
template <int XDT> void launch_lowrank(const GemvArgs &a, bool two, bool pdl, cudaStream_t s) {
    with_lowrank_layout(a.lr_layout, [&](auto L) {
        constexpr int LAYOUT = decltype(L)::value;
        const auto kernel = two ? &gemv_lowrank_kernel<XDT, 2, LAYOUT> : &gemv_lowrank_kernel<XDT, 1, LAYOUT>;
        launch_maybe_pdl(kernel, (unsigned)a.lr_blocks, GEMV_THREADS, s, pdl, a);
    });
}

template <int BITS, int DEC>
void launch_dec(const GemvArgs &a, int32_t xdt, int32_t sdt, bool fact, unsigned grid, cudaStream_t s) {
    const bool two = a.M > 8;
    if (fact) {
        if (two) launch_gemv<BITS, 2, DEC, true>(a, xdt, sdt, grid, s);
        else launch_gemv<BITS, 1, DEC, true>(a, xdt, sdt, grid, s);
    } else {
        if (two) launch_gemv<BITS, 2, DEC, false>(a, xdt, sdt, grid, s);
        else launch_gemv<BITS, 1, DEC, false>(a, xdt, sdt, grid, s);
    }
}

template <int BITS>
void launch_bits(const GemvArgs &a, int32_t xdt, int32_t sdt, bool fact, unsigned grid, cudaStream_t s) {
    if constexpr (BITS == 4 || BITS == 8) {
        if (int_decode(&a.t)) {
            launch_dec<BITS, DEC_INT>(a, xdt, sdt, fact, grid, s);
            return;
        }
    }
    launch_dec<BITS, DEC_LUT>(a, xdt, sdt, fact, grid, s);
}

/* every code's value (as the dequantizer computes it, in the scale dtype) is exact in x's dtype
 * (NaN codes aside); up to 256 values per type, so the answer is kept per (type, scale dtype,
 * x dtype): 0 not known yet, 1 yes, 2 no (relaxed atomics: racing callers store the same value) */
bool values_exact(const sdnq_type_traits *t, int32_t xdt, int32_t sdt) {
    static std::atomic<unsigned char> known[512][3][2];
    const int si = sdt == SDNQ_DT_F32 ? 0 : sdt == SDNQ_DT_BF16 ? 1 : 2, xi = xdt == SDNQ_DT_BF16 ? 0 : 1;
    const bool cached = t->id >= 0 && t->id < 512;
    if (cached) {
        const unsigned char k = known[t->id][si][xi].load(std::memory_order_relaxed);
        if (k != 0) return k == 1;
    }
    bool exact = true;
    for (uint32_t c = 0; c < (1u << t->bits) && exact; c++) {
        const float v = sdnq_weight_value(t, c, sdt);
        if (v != v) continue;
        const float r = xdt == SDNQ_DT_BF16 ? sdnq_bf16_to_f32(sdnq_f32_to_bf16(v)) : sdnq_f16_to_f32(sdnq_f32_to_f16(v));
        exact = r == v;
    }
    if (cached) known[t->id][si][xi].store(exact ? 1 : 2, std::memory_order_relaxed);
    return exact;
}

/* the factored scales apply (gemv.cuh): every chunk of 128 k's lies in one scale group
 * (row-wise or tensor-wise, gk == K, or groups of a multiple of 128) and the code values are exact */
bool factored(const sdnq_type_traits *t, const GemvArgs &a, int32_t xdt, int32_t sdt) {
    return (a.gk == a.K || a.gk % GEMV_CHUNK == 0) && values_exact(t, xdt, sdt); /* tensor-wise: gk == K */
}

}  // namespace

extern "C" sdnq_status sdnq_cuda_gemv_supported(const sdnq_gemv_desc *d) { return prepare(d, NULL); }

extern "C" int64_t sdnq_cuda_gemv_work_floats(int64_t M, int64_t N) {
    if (M < 1 || N < 0 || N > (int64_t)1 << 40) return -1;
    return SDNQ_GEMV_WORK_FLOATS(M, N, 2 * (int64_t)device_sms());
}

extern "C" sdnq_status sdnq_cuda_gemv(const sdnq_gemv_desc *d, void *stream) {
    GemvArgs a;
    sdnq_status st = prepare(d, &a);
    if (st != SDNQ_OK || d->N == 0) return st;
    cudaStream_t s = as_stream(stream);
    /* split-K over persistent blocks (gemv.cuh): at most the two per multiprocessor that run at
     * once and the segments the work buffer holds, equal ranges of items; the SVD branch's
     * low-rank blocks take the slots left free, the GEMV giving up some where too few are */
    const int64_t slots = 2 * (int64_t)device_sms(), fit = gemv_blocks_fit(d); /* >= 1: prepare() */
    int64_t blocks = slots < fit ? slots : fit;
    a.ipb = (int32_t)((a.items + blocks - 1) / blocks);
    if (d->rank > 0) {
        const int64_t give = lowrank_split(d, slots - (a.items + a.ipb - 1) / a.ipb, &a);
        if (give > 0) {
            blocks = slots - a.lr_blocks < blocks ? slots - a.lr_blocks : blocks;
            if (blocks < 1) blocks = 1;
            a.ipb = (int32_t)((a.items + blocks - 1) / blocks);
        }
    }
    const unsigned grid = (unsigned)((a.items + a.ipb - 1) / a.ipb);
    /* prepare() refused widths outside 2..8 */
    const bool fact = factored(&a.t, a, d->x_dtype, d->scale_dtype);
    with_unit_bits<2>(a.t.bits, [&](auto B) {
        launch_bits<decltype(B)::value>(a, d->x_dtype, d->scale_dtype, fact, grid, s);
    });
    if ((st = launch_status()) != SDNQ_OK) return st;
    const bool two = a.M > 8, bf = d->x_dtype == SDNQ_DT_BF16, pdl = device_cc_major() >= 9;
    if (d->rank > 0) { /* t's partial sums: a programmatic dependent of the GEMV (sm_90+) */
        if (bf) launch_lowrank<SDNQ_DT_BF16>(a, two, pdl, s);
        else launch_lowrank<SDNQ_DT_F16>(a, two, pdl, s);
        if ((st = launch_status()) != SDNQ_OK) return st;
    }
    /* the tiles' sums, bias and SVD branch: a programmatic dependent of the kernel before (sm_90+) */
    const auto fin = bf ? (two ? &gemv_finish_kernel<SDNQ_DT_BF16, 2> : &gemv_finish_kernel<SDNQ_DT_BF16, 1>)
                        : (two ? &gemv_finish_kernel<SDNQ_DT_F16, 2> : &gemv_finish_kernel<SDNQ_DT_F16, 1>);
    launch_maybe_pdl(fin, grid_for(d->N, GEMV_ROWS, INT32_MAX), 32u * (two ? 2u : 1u), s, pdl, a);
    return launch_status();
}
