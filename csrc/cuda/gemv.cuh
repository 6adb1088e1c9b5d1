/*
 * gemv.cuh - small-M linear on the compressed weight: y[M, N] = x[M, K] @ W^T
 * (+ bias) (+ (x @ down^T) @ up^T, the SVD branch) for M <= 16, W read from its
 * SDNQ codes exactly once.
 *
 * Algorithm. The weight is dequantized in registers and multiplied on the
 * tensor cores with mma.sync.m16n8k16 (bf16 or fp16 operands, fp32
 * accumulation): A = W (16 weight rows per warp), B = x^T (8 tokens per n-tile;
 * one n-tile for M <= 8, two for M <= 16), C = y^T. The reduction order inside
 * an MMA is free, so the 16 k-slots of each MMA are mapped to whatever codes a
 * thread loaded contiguously - A and B use the same map, which is all a dot
 * product needs:
 *
 *   lane = 4*g + t (g = 0..7, t = 0..3). For a chunk of 128 k's starting at
 *   kc, thread t owns k in [kc + 32t, kc + 32t + 32): its 32 codes of weight
 *   rows n0 + g and n0 + g + 8 (one 16-byte load each for 4-bit codes) and 32 x
 *   values of token g (+8). MMA j (0..7) gives the thread's fragment slots
 *   {2t, 2t+1} the k's kc + 32t + 4j + {0, 1} and slots {2t+8, 2t+9} the k's
 *   kc + 32t + 4j + {2, 3}, in A (dequantized W pairs) and in B (x pairs,
 *   already bf16/fp16 in memory). The packed 4-bit decode pairs the k's +0/+4,
 *   +1/+5, +2/+6, +3/+7 of each unit of 8 instead; x's pairs are regrouped to
 *   match at load.
 *
 * Scales: two modes (gemv_compute_t). Factored, wherever every 128-k chunk lies
 * in one scale group (tensor-wise, row-wise, groups of a multiple of 128: the
 * published uint4+SVD g128, 8-bit row-wise, 5/6-bit g128/g256) and every code's
 * value is exact in x's dtype: the MMAs take the code values themselves and each
 * chunk's sums are scaled once, y += s * sum(x * v) (+ z * sum(x), from an MMA
 * with an all-ones A) - per weight a decode and no arithmetic. Its weights are
 * value * scale (+ zero point) unrounded, where F.linear(x, dequantize(W))
 * multiplies them rounded to the scale dtype, then to x's dtype: y differs by those
 * roundings (at most half an ulp of each weight in the coarser of the two dtypes)
 * and the summation order. Exact, for the other layouts:
 * each weight is dequantized to dequant.cuh's value in x's dtype (value * scale
 * (+ zero point), rounded as sdnq rounds) and multiplied; y differs from
 * F.linear(x, W_dequantized) only by the fp32 summation order. Code values come
 * from a shared lookup table (sdnq_weight_value; one copy per lane for 6- to
 * 8-bit codes, gemv_lut_copies), except for 4- and 8-bit
 * integer types (int4, uint4, int8, uint8): 8-bit codes through the float "magic
 * number" (the byte placed into the mantissa of 2^23 with one byte permute, 2^23
 * minus the type's offset subtracted), 4-bit codes in the factored mode two per
 * instruction (deq_packed4).
 *
 * Work and pipeline: split-K over persistent blocks (stream-K). The rows are
 * cut into row groups of 8 tiles (128 rows), K into chunks of 128, and the
 * items (row group, chunk), row-group-major, into equal contiguous ranges, one
 * per block of 8 warps (at most two blocks per multiprocessor, those that run
 * at once): every block gets the same work whatever N and K, and narrow N still
 * fills the GPU. Warp w owns tile w of each row group and walks its block's
 * items in order with the codes (and scales) of STAGES items in flight
 * (gemv_stages: 4 for <= 4 bits, 3 for 5-6 bits, 2 for 7-8 bits, 3 for M > 8;
 * one fewer in the factored mode), across row-group boundaries; the block's
 * warps read the same x chunk together (one L2 read, the rest from L1), each
 * as it starts the item, under the decode of its codes. Where its
 * run of a row group ends, a warp writes its partial sums to the caller's work
 * buffer (segment block + row group) - the warps never wait for one another.
 * gemv_finish_kernel then sums each tile's segments in block order
 * (deterministic for a given grid), adds the bias and the SVD branch in fp32
 * and rounds y once. Invalid rows (n >= N), tokens (m >= M) and k's (past K)
 * contribute zeros: every lane runs every mma.sync, which is warp-collective.
 *
 * SVD branch. gemv_lowrank_kernel computes t = x @ down^T on the tensor cores
 * (A = down, 16 ranks per MMA; B = x^T, as the weight's MMAs) as partial sums over
 * k ranges, one block each, written in the finishing kernel's B-fragment order.
 * The launcher runs the GEMV, the low-rank kernel and the finishing kernel in that
 * order; on sm_90+ each is a programmatic dependent launch (PDL) of the one
 * before, and the GEMV's grid leaves the low-rank kernel's blocks free slots
 * (2 per multiprocessor in all), so that the low-rank kernel runs beside the
 * weight stream. It waits for the GEMV (griddepcontrol.wait) only as it ends,
 * so that its end implies the GEMV's for the finishing kernel, which sums the
 * partials in block order (deterministic), rounds t to x's dtype (as sdnq's own
 * path rounds it) and adds t @ up^T per tile on the tensor cores. (Low-rank
 * kernels launched before the GEMV, the GEMV a dependent of theirs, held
 * register file that the GEMV's first wave needed: its last blocks started late.)
 *
 * Assumes (checked by the launcher, else the caller falls back to dequantize +
 * GEMM): 2 <= bits <= 8 (packed or 8-bit native), K % 32 == 0, quantization
 * groups along k of a multiple of 32 codes (row-wise, grouped, tensor-wise),
 * codes/x 16-byte aligned and ldx % 8 == 0.
 */
#ifndef SDNQ_CUDA_GEMV_CUH
#define SDNQ_CUDA_GEMV_CUH

#include "common.cuh"

namespace sdnq_cuda {

constexpr int GEMV_WARPS = 8;
constexpr int GEMV_THREADS = 32 * GEMV_WARPS;
constexpr int GEMV_ROWS = 16;                    /* weight rows per warp (one m16 tile)   */
constexpr int GEMV_GROUP = GEMV_WARPS * GEMV_ROWS; /* rows per row group (a block's warps)  */
constexpr int GEMV_FRAG = 4 * 32;                /* floats of one warp's m16n8 accumulators */
constexpr int GEMV_CODES = 32;                   /* consecutive k's per thread per chunk */
constexpr int GEMV_CHUNK = 4 * GEMV_CODES;       /* k's per warp per chunk               */
/* chunks of codes in flight per warp (the persistent loop keeps them in flight across tiles):
 * deeper for narrow codes (fewer registers and bytes per chunk), 2 for 7- and 8-bit codes (two
 * 8-warp blocks per multiprocessor at 128 registers, no spills) */
template <int BITS, int NT> struct gemv_stages {
    static constexpr int value = BITS > 6 ? 2 : NT == 2 ? 3 : BITS <= 4 ? 4 : 3;
};

/* the low-rank blocks' partial sums of t: per block, token tile and 16 ranks, 4 floats per lane */
constexpr int LR_FRAG = 4 * 32;
/* how the low-rank blocks read down[j, k] (in x's dtype for 1 and 2): the pairs of an MMA's A
 * fragment, k and k + 1 of one rank, are one 4-byte load (LR_KPAIRS: k-contiguous rows), or
 * two of two ranks regrouped by byte permutes (LR_JPAIRS: rank-contiguous, sdnq's column-major
 * factor), or four element loads (LR_ANY: other strides and dtypes) */
enum LowrankLayout { LR_ANY = 0, LR_KPAIRS = 1, LR_JPAIRS = 2 };

/* how a code becomes its value */
enum GemvDecode { DEC_LUT = 0, DEC_INT = 1 };

struct GemvArgs {
    sdnq_type_traits t;
    const void *x, *bias, *codes, *scale, *zp;
    void *y;
    int64_t ldx, ldy;
    int32_t M, N, K;
    int32_t gk;   /* group length along k (divides K, multiple of 32)              */
    int32_t gpr;  /* groups per weight row: K / gk, or 0 for one tensor-wise group */
    uint64_t gmagic; /* ceil(2^64 / gk): the group of k is __umul64hi(k, gmagic)  */
    int64_t rowb; /* bytes of codes per weight row: K * bits / 8                   */
    int64_t ss, zs;
    int32_t asym;
    /* DEC_INT: value = float(2^23 + (byte ^ xor8)) - magic_sub */
    uint32_t xor8;
    float magic_sub;
    /* the packed decode (deq_packed4): the pair (m - min, m - min) in x's dtype, m its magic base;
     * with a zero point (deq_packed4_top): 16 - min, see gemv_compute_t */
    uint32_t off2;
    float top_sub;
    /* split-K (gemv_kernel): items = row groups * nch, ipb items per block, the blocks' partial
     * sums in work (segment b + gi: GEMV_WARPS * NT * GEMV_FRAG floats each) */
    int32_t nch, ipb, items;
    float *work;
    /* SVD branch: y[m, n] += sum_j t[m, j] * up[n*us0 + j*us1], t[m, j] = sum_k x[m, k] *
     * down[j*ds0 + k*ds1]; gemv_lowrank_kernel's lr_blocks blocks write t's partial sums over k
     * ranges of lr_kb into lowrank */
    int32_t rank;
    float *lowrank;
    const void *up;
    int32_t up_dtype;
    int64_t us0, us1;
    const void *down;
    int32_t down_dtype, lr_layout;
    int64_t ds0, ds1;
    int32_t lr_blocks, lr_kb;
};

/* the pair (1, 1) in XDT: the all-ones A operand of the zero point's sum(x), and the base of
 * deq_packed4_top's values */
template <int XDT> constexpr uint32_t ONES2 = XDT == SDNQ_DT_BF16 ? 0x3F803F80u : 0x3C003C00u;

/* 8 values of one weight row -> 4 registers of XDT pairs */
template <int SDT, int XDT, bool ASYM>
__device__ __forceinline__ void deq_pack8(const float (&v)[UNIT], float s, float z, uint32_t (&p)[4]) {
#pragma unroll
    for (int q = 0; q < 4; q++)
        p[q] = pack_pair<XDT>(dq_value<SDT, XDT, ASYM>(v[2 * q], s, z), dq_value<SDT, XDT, ASYM>(v[2 * q + 1], s, z));
}

/* the codes one thread loads for one chunk (what streams from memory) */
template <int BITS> struct GemvStage {
    uint32_t w[2][BITS]; /* 32 codes of weight rows g and g + 8: 4*BITS bytes each */
    float s[2], z[2];
};

/* 4*BITS bytes at p (aligned to 16 when BITS % 4 == 0, 8 when even, else 4) */
template <int BITS> __device__ __forceinline__ void load_codes32(const uint8_t *p, uint32_t (&w)[BITS]) {
    if constexpr (BITS % 4 == 0) {
#pragma unroll
        for (int i = 0; i < BITS / 4; i++) {
            uint4 v = __ldg((const uint4 *)p + i);
            w[4 * i] = v.x;
            w[4 * i + 1] = v.y;
            w[4 * i + 2] = v.z;
            w[4 * i + 3] = v.w;
        }
    } else if constexpr (BITS % 2 == 0) {
#pragma unroll
        for (int i = 0; i < BITS / 2; i++) {
            uint2 v = __ldg((const uint2 *)p + i);
            w[2 * i] = v.x;
            w[2 * i + 1] = v.y;
        }
    } else {
#pragma unroll
        for (int i = 0; i < BITS; i++) w[i] = __ldg((const unsigned int *)p + i);
    }
}

/* 32 x values (64 bytes, 16-byte aligned) of one token, or zeros */
__device__ __forceinline__ void load_x32(const uint16_t *p, bool valid, uint32_t (&x)[16]) {
    if (valid) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint4 v = __ldg((const uint4 *)p + i);
            x[4 * i] = v.x;
            x[4 * i + 1] = v.y;
            x[4 * i + 2] = v.z;
            x[4 * i + 3] = v.w;
        }
    } else {
#pragma unroll
        for (int i = 0; i < 16; i++) x[i] = 0;
    }
}

/* Where one warp's loads of a row group start, set once per row group so that each item's
 * loads need only 32-bit offsets: per weight row h (g and g + 8 of the warp's tile) its codes,
 * its first scale and zero point, and whether it exists (a row past N reads row 0 and gets a
 * zero scale and zero point: its sums are never stored). The launcher keeps the offsets within
 * a row (gpr * ss, gpr * zs, rowb) below 2^31. */
struct GemvRows {
    const uint8_t *c[2];
    const char *s[2], *z[2];
    bool v[2];
};

template <int SDT> __device__ __forceinline__ void gemv_set_rows(const GemvArgs &a, int n, GemvRows &r) {
    constexpr int ESZ = SDT == SDNQ_DT_F32 ? 4 : 2;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        r.v[h] = n + 8 * h < a.N;
        const int64_t nn = r.v[h] ? n + 8 * h : 0;
        r.c[h] = (const uint8_t *)a.codes + nn * a.rowb;
        r.s[h] = (const char *)a.scale + nn * a.gpr * a.ss * ESZ;
        r.z[h] = a.asym ? (const char *)a.zp + nn * a.gpr * a.zs * ESZ : NULL;
    }
}

/* the codes, scales and zero points of chunk `chunk` (< nch) of the rows r, or zeros with zero
 * scale and zero point (valid = false: past the block's items; exact zeros for every type taken) */
template <int BITS, int SDT>
__device__ __forceinline__ void gemv_load_stage(const GemvArgs &a, const GemvRows &r, int chunk, bool valid, int t,
                                                GemvStage<BITS> &st) {
    if (!valid) { /* warp-uniform */
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int i = 0; i < BITS; i++) st.w[h][i] = 0;
            st.s[h] = 0.0f;
            st.z[h] = 0.0f;
        }
        return;
    }
    const int kc = chunk * GEMV_CHUNK, kb = kc + t * GEMV_CODES;
    const bool kv = kb < a.K;
    /* the group of k from a multiply-high by ceil(2^64 / gk) (exact for every k < 2^32); k's
     * past K (x is zero there) get zero codes and the scale of the chunk's first k, which the
     * factored mode applies to the sums of all four threads of the chunk */
    const int gi = (int)__umul64hi((unsigned long long)(uint32_t)(kv ? kb : kc), a.gmagic);
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if (r.v[h] && kv) {
            load_codes32<BITS>(r.c[h] + (kb >> 3) * BITS, st.w[h]);
        } else {
#pragma unroll
            for (int i = 0; i < BITS; i++) st.w[h][i] = 0;
        }
        st.s[h] = r.v[h] ? ld_float<SDT>(r.s[h], gi * (int)a.ss) : 0.0f;
        st.z[h] = r.v[h] && a.asym ? ld_float<SDT>(r.z[h], gi * (int)a.zs) : 0.0f;
    }
}

/* x fragments of this thread's tokens (g, and g + 8 when NT == 2; xr their rows, or NULL past
 * M) for chunk `chunk`, zeros past K; for the packed decode the pairs of each unit of 8 k's are
 * regrouped as its weight registers are: (x0,x4), (x1,x5), (x2,x6), (x3,x7) */
template <int NT, bool PACKED>
__device__ __forceinline__ void gemv_load_x(const GemvArgs &a, const uint16_t *const (&xr)[NT], int chunk, int t,
                                            uint32_t (&x)[NT][16]) {
    const int kb = chunk * GEMV_CHUNK + t * GEMV_CODES;
    const bool kv = kb < a.K;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        load_x32(xr[nt] + kb, kv && xr[nt] != NULL, x[nt]);
        if constexpr (PACKED) {
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const uint32_t w0 = x[nt][4 * u], w1 = x[nt][4 * u + 1], w2 = x[nt][4 * u + 2], w3 = x[nt][4 * u + 3];
                x[nt][4 * u] = __byte_perm(w0, w2, 0x5410);
                x[nt][4 * u + 1] = __byte_perm(w0, w2, 0x7632);
                x[nt][4 * u + 2] = __byte_perm(w1, w3, 0x5410);
                x[nt][4 * u + 3] = __byte_perm(w1, w3, 0x7632);
            }
        }
    }
}

/* Copies of the value table in shared memory: one per lane where the table has more entries
 * than shared memory has banks (6- to 8-bit codes), entry c of lane l at lut[c * 32 + l], so a
 * warp's 32 lookups never meet in a bank (with one 256-entry table, the random codes of 32 lanes
 * serialize each lookup several ways); narrower tables need one copy, their distinct codes
 * sitting in distinct banks already. */
template <int BITS> struct gemv_lut_copies {
    static constexpr int value = (1 << BITS) > 32 ? 32 : 1;
};

/* the table of build_lut in COPIES copies (all threads call it, a __syncthreads() must follow);
 * the copies are written rotated by the code, so a warp's stores hit distinct banks too */
template <int BITS, int COPIES>
__device__ __forceinline__ void gemv_build_lut(float *lut, sdnq_type_traits t, int32_t sdt) {
    for (int c = threadIdx.x; c < (1 << BITS); c += blockDim.x) {
        const float v = sdnq_weight_value(&t, (uint32_t)c, sdt);
        for (int r = 0; r < COPIES; r++) lut[c * COPIES + (r + c) % COPIES] = v;
    }
}

/* float(2^23 + byte q of w) */
__device__ __forceinline__ float magic_byte(uint32_t w, int q) {
    return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7440u | (uint32_t)q));
}

/* the raw values (before scaling) of unit u (codes 8u .. 8u+7) of 32 codes in w; lut is this
 * lane's view of the value table (gemv_lut_copies) */
template <int BITS, int DEC>
__device__ __forceinline__ void gemv_unit_values(const GemvArgs &a, const float *lut, const uint32_t (&w)[BITS], int u,
                                                 float (&v)[UNIT]) {
    if constexpr (DEC == DEC_INT && BITS == 4) {
        const uint32_t word = w[u]; /* nibble k of the word is code 8u + k (sdnq_unpack4: low nibble first) */
        const uint32_t lo = word & 0x0F0F0F0Fu, hi = (word >> 4) & 0x0F0F0F0Fu;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            v[2 * q] = __fsub_rn(magic_byte(lo, q), a.magic_sub);
            v[2 * q + 1] = __fsub_rn(magic_byte(hi, q), a.magic_sub);
        }
    } else if constexpr (DEC == DEC_INT && BITS == 8) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint32_t word = w[2 * u + h] ^ a.xor8;
#pragma unroll
            for (int q = 0; q < 4; q++) v[4 * h + q] = __fsub_rn(magic_byte(word, q), a.magic_sub);
        }
    } else {
        uint8_t ub[BITS];
#pragma unroll
        for (int q = 0; q < BITS; q++) {
            const int byte = BITS * u + q;
            ub[q] = (uint8_t)(w[byte / 4] >> (8 * (byte % 4)));
        }
        int32_t c[UNIT];
        unpack_unit<BITS>(ub, c);
#pragma unroll
        for (int k = 0; k < UNIT; k++) v[k] = lut[c[k] * gemv_lut_copies<BITS>::value];
    }
}

/* Two ways to apply the scales. Exact (FACT = false): every weight is dequantized to the
 * dequantizer's value in x's dtype (value * scale (+ zero point), rounded as sdnq rounds) and
 * multiplied. Factored (FACT = true; groups made of whole 128-k chunks and code values exact in
 * x's dtype, which the launcher checks): the MMAs take the code values themselves and each
 * chunk's sums are scaled once per row, y += s * sum(x * v) (+ z * sum(x)), the zero point's
 * sum(x) from an MMA with an all-ones A. The factored weights are never rounded (the dequantizer
 * rounds them to the scale dtype, then to x's dtype), so y differs from F.linear(x,
 * dequantize(W)) by those roundings (at most half an ulp of each weight in the coarser dtype) as
 * well as by the summation order; per weight it costs a decode and no arithmetic. */
template <int BITS, int DEC, bool FACT> struct gemv_packed {
    /* 4-bit integer codes in the factored mode: decoded two per instruction (deq_packed4) */
    static constexpr bool value = FACT && DEC == DEC_INT && BITS == 4;
};

/* The packed decode: the 8 codes c0..c7 of a 32-bit word become the pairs of exact values
 * (c0,c4), (c1,c5), (c2,c6), (c3,c7) in x's dtype: a mask puts a nibble pair into the low
 * mantissa bits of the magic base m (bf16 0x4300 = 128, f16 0x6400 = 1024: exactly m + c) and
 * one subtraction of m - min leaves c + min (small integers: exact). The x pairs are regrouped
 * to match at load (gemv_load_x). */
template <int XDT> __device__ __forceinline__ void deq_packed4(uint32_t w, uint32_t off2, uint32_t (&p)[4]) {
    constexpr uint32_t MAG = XDT == SDNQ_DT_BF16 ? 0x43004300u : 0x64006400u;
#pragma unroll
    for (int q = 0; q < 4; q++) p[q] = h2_sub<XDT>(and_or<0x000F000Fu, MAG>(w >> (4 * q)), off2);
}

/* The packed decode without the subtraction, for layouts with a zero point (whose sum of x the
 * factored mode has at hand): the nibble pair goes into the top four mantissa bits of 1.0, so
 * each value is 1 + c/16 exactly (bf16 bits 6..3, f16 bits 9..6), same pairing as deq_packed4.
 * gemv_compute_t turns the sums back: sum(x (c + min)) = 16 sum(x (1 + c/16)) - (16 - min) sum(x).
 * The sums carry 16 + c per code, of which 16 cancels; deq_packed4's values without their
 * subtraction (128 + c, 1024 + c) would leave 8 (bf16) or 64 (fp16) times more to cancel. */
template <int XDT> __device__ __forceinline__ void deq_packed4_top(uint32_t w, uint32_t (&p)[4]) {
    constexpr int POS = XDT == SDNQ_DT_BF16 ? 3 : 6; /* the nibble's lowest bit in the half */
    constexpr uint32_t MASK = 0x000F000Fu << POS;
#pragma unroll
    for (int q = 0; q < 4; q++) {
        const int sh = 4 * q - POS; /* nibble q (and q + 4) at bit 4q (16 + 4q) */
        p[q] = and_or<MASK, ONES2<XDT>>(sh >= 0 ? w >> sh : w << -sh);
    }
}

/* accumulator sets: with one token tile the MMAs alternate between two sets (two independent
 * MMA chains); two token tiles are two chains already (and need the registers) */
template <int NT> struct gemv_accs {
    static constexpr int value = NT == 1 ? 2 : 1;
};

/* the A operand of one unit (8 k's) for rows g and g + 8, four registers each (the factored
 * mode's values carry no scale or zero point; TOP: the packed decode's 1 + c/16) */
template <int BITS, int XDT, int SDT, int DEC, bool FACT, bool TOP>
__device__ __forceinline__ void gemv_unit_a(const GemvArgs &a, const float *lut, const GemvStage<BITS> &st, int u,
                                            uint32_t (&p)[2][4]) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if constexpr (TOP) {
            deq_packed4_top<XDT>(st.w[h][u], p[h]);
        } else if constexpr (gemv_packed<BITS, DEC, FACT>::value) {
            deq_packed4<XDT>(st.w[h][u], a.off2, p[h]);
        } else {
            float v[UNIT];
            gemv_unit_values<BITS, DEC>(a, lut, st.w[h], u, v);
            if constexpr (FACT) {
#pragma unroll
                for (int q = 0; q < 4; q++) p[h][q] = pack_pair<XDT>(v[2 * q], v[2 * q + 1]); /* exact */
            } else { /* exact: the zero point branched on per unit (fewer registers than per chunk) */
                if (a.asym) deq_pack8<SDT, XDT, true>(v, st.s[h], st.z[h], p[h]);
                else deq_pack8<SDT, XDT, false>(v, st.s[h], st.z[h], p[h]);
            }
        }
    }
}

/* the MMAs of one chunk: per unit of 8 k's, two per token tile (MMA 2u: k's +8u+0..3, x words
 * 4u and 4u+1; MMA 2u+1: k's +8u+4..7; in the packed decode the pairs (0,4), (1,5) and (2,6),
 * (3,7)). Exact mode: into acc directly. Factored: into zeroed chunk sums, then acc += s * sum
 * (+ z * sum(x)) per accumulator (rows g, g, g + 8, g + 8). */
template <int BITS, int XDT, int SDT, int NT, int DEC, bool FACT, bool ASYM>
__device__ __forceinline__ void gemv_compute_t(const GemvArgs &a, const float *lut, const GemvStage<BITS> &st,
                                               const uint32_t (&x)[NT][16],
                                               float (&acc)[gemv_accs<NT>::value][NT][4]) {
    constexpr int A1 = gemv_accs<NT>::value - 1; /* the second MMA's set */
    constexpr uint32_t ONES = ONES2<XDT>;
    /* packed 4-bit codes with a zero point: values 1 + c/16 (deq_packed4_top), no subtraction */
    constexpr bool TOP = FACT && ASYM && gemv_packed<BITS, DEC, FACT>::value;
    /* chunk sums and (zero point) sums of x, each in two sets: two independent MMA chains */
    float cs[FACT ? gemv_accs<NT>::value : 1][NT][4] = {}, xs[FACT && ASYM ? 2 : 1][FACT && ASYM ? NT : 1][4] = {};
#pragma unroll
    for (int u = 0; u < 4; u++) {
        uint32_t p[2][4];
        gemv_unit_a<BITS, XDT, SDT, DEC, FACT, TOP>(a, lut, st, u, p);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            float(&c0)[4] = FACT ? cs[0][nt] : acc[0][nt];
            float(&c1)[4] = FACT ? cs[A1][nt] : acc[A1][nt];
            mma16816<XDT>(c0, p[0][0], p[1][0], p[0][1], p[1][1], x[nt][4 * u], x[nt][4 * u + 1]);
            mma16816<XDT>(c1, p[0][2], p[1][2], p[0][3], p[1][3], x[nt][4 * u + 2], x[nt][4 * u + 3]);
            if constexpr (FACT && ASYM) {
                mma16816<XDT>(xs[0][nt], ONES, ONES, ONES, ONES, x[nt][4 * u], x[nt][4 * u + 1]);
                mma16816<XDT>(xs[FACT && ASYM ? 1 : 0][nt], ONES, ONES, ONES, ONES, x[nt][4 * u + 2], x[nt][4 * u + 3]);
            }
        }
    }
    if constexpr (FACT) {
        /* per row: the scale and zero point the sums take; TOP: s (c + min) + z = 16 s (1 + c/16)
         * + (z - (16 - min) s), 16 s exact */
        float sf[2], zf[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            sf[h] = TOP ? 16.0f * st.s[h] : st.s[h];
            zf[h] = TOP ? __fmaf_rn(-a.top_sub, st.s[h], st.z[h]) : st.z[h];
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const float v = A1 ? __fadd_rn(cs[0][nt][q], cs[A1][nt][q]) : cs[0][nt][q];
                acc[0][nt][q] = __fmaf_rn(v, sf[q >> 1], acc[0][nt][q]);
                if constexpr (ASYM)
                    acc[0][nt][q] = __fmaf_rn(__fadd_rn(xs[0][nt][q], xs[FACT && ASYM ? 1 : 0][nt][q]), zf[q >> 1],
                                              acc[0][nt][q]);
            }
    }
}

template <int BITS, int XDT, int SDT, int NT, int DEC, bool FACT>
__device__ __forceinline__ void gemv_compute(const GemvArgs &a, const float *lut, const GemvStage<BITS> &st,
                                             const uint32_t (&x)[NT][16],
                                             float (&acc)[gemv_accs<NT>::value][NT][4]) {
    if (FACT && a.asym) gemv_compute_t<BITS, XDT, SDT, NT, DEC, FACT, true>(a, lut, st, x, acc);
    else gemv_compute_t<BITS, XDT, SDT, NT, DEC, FACT, false>(a, lut, st, x, acc);
}

/* The SVD branch of one tile, on the tensor cores: A = up (the tile's 16 rows, ranks along k),
 * B = t^T (t = x @ down^T from the low-rank kernels, rounded to x's dtype as sdnq's own path
 * rounds it), fp32 accumulation; 16 ranks per MMA. c[q] += sum over ranks of up[row q][j] *
 * t[token q][j] for the warp's token tile nt. */
template <int XDT, int S>
__device__ __forceinline__ void svd_up_frags(const GemvArgs &a, int n0, int j0, int g, int t, uint32_t (&r)[S][4]) {
    /* step s: ranks j0 + 16 s ..; a0: row g, ranks 2t, 2t+1; a1: row g+8; a2/a3: ranks + 8; zeros
     * past N and the rank. up in x's dtype (sdnq's case): its raw halves, 8 S predicated loads
     * with no branch between them, all in flight at once; other dtypes through sdnq_load_float
     * (a branch on the dtype per value), rounded to x's */
    if (a.up_dtype == XDT) {
        uint32_t h[S][8];
#pragma unroll
        for (int s = 0; s < S; s++)
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const int n = n0 + g + (i >> 1 & 1) * 8, j = j0 + 16 * s + 2 * t + (i >> 2) * 8 + (i & 1);
                h[s][i] = n < a.N && j < a.rank
                              ? __ldg((const unsigned short *)a.up + (int64_t)n * a.us0 + (int64_t)j * a.us1)
                              : 0u;
            }
#pragma unroll
        for (int s = 0; s < S; s++)
#pragma unroll
            for (int i = 0; i < 4; i++) r[s][i] = h[s][2 * i] | h[s][2 * i + 1] << 16;
        return;
    }
#pragma unroll
    for (int s = 0; s < S; s++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int n = n0 + g + (i & 1) * 8, j = j0 + 16 * s + 2 * t + (i >> 1) * 8;
            float v[2];
#pragma unroll
            for (int e = 0; e < 2; e++)
                v[e] = n < a.N && j + e < a.rank
                           ? sdnq_load_float(a.up, (int64_t)n * a.us0 + (int64_t)(j + e) * a.us1, a.up_dtype)
                           : 0.0f;
            r[s][i] = pack_pair<XDT>(v[0], v[1]);
        }
}

/* t's B fragments for token tile nt and the S steps of 16 ranks from s0 (b0: ranks 2t, 2t+1; b1:
 * ranks 2t+8, 2t+9; token g): the low-rank blocks' partial sums, all loaded in one round (the
 * launcher's split is at most SDNQ_GEMV_LOWRANK_SPLITS blocks), added in block order, then
 * rounded to x's dtype (as sdnq's own path rounds t); steps past the rank are zeros */
template <int XDT, int NT, int S>
__device__ __forceinline__ void svd_t_frags(const GemvArgs &a, int nt, int s0, int lane, uint32_t (&b)[S][2]) {
    constexpr int NB = SDNQ_GEMV_LOWRANK_SPLITS;
    const int rs = (a.rank + 15) / 16;
    const float4 *p = (const float4 *)a.lowrank + (nt * rs + s0) * 32 + lane;
    const int64_t split = NT * rs * 32; /* float4s from one block's partial sums to the next */
    float4 v[S][NB];
    /* unconditional loads (past the last block: the last block's again, never added), so that
     * ptxas issues them all before the first add */
#pragma unroll
    for (int s = 0; s < S; s++)
#pragma unroll
        for (int i = 0; i < NB; i++)
            v[s][i] = __ldg(p + (s0 + s < rs ? s : 0) * 32 + (i < a.lr_blocks ? i : a.lr_blocks - 1) * split);
#pragma unroll
    for (int s = 0; s < S; s++) {
        float4 r = make_float4(0.f, 0.f, 0.f, 0.f);
        if (s0 + s < rs) {
            r = v[s][0];
#pragma unroll
            for (int i = 1; i < NB; i++)
                if (i < a.lr_blocks) {
                    r.x = __fadd_rn(r.x, v[s][i].x);
                    r.y = __fadd_rn(r.y, v[s][i].y);
                    r.z = __fadd_rn(r.z, v[s][i].z);
                    r.w = __fadd_rn(r.w, v[s][i].w);
                }
        }
        b[s][0] = pack_pair<XDT>(r.x, r.y);
        b[s][1] = pack_pair<XDT>(r.z, r.w);
    }
}

/* ranks whose up fragments the finishing kernel holds in registers, loaded before it waits */
constexpr int SVD_REG_RANKS = 32;

template <int XDT, int NT>
__device__ __forceinline__ void svd_tile(const GemvArgs &a, int n0, int nt, int g, int t, float (&c)[4]) {
    for (int s = 0; 16 * s < a.rank; s++) {
        uint32_t r[1][4], b[1][2];
        svd_up_frags<XDT, 1>(a, n0, 16 * s, g, t, r);
        svd_t_frags<XDT, NT, 1>(a, nt, s, 4 * g + t, b);
        mma16816<XDT>(c, r[0][0], r[0][1], r[0][2], r[0][3], b[0][0], b[0][1]);
    }
}

/* warp w's partial sums of token tile 0 in segment (block b, row group gi) of the work buffer,
 * lane by lane; token tile nt follows at + nt * GEMV_FRAG, accumulator q at + q * 32 */
template <int NT> __device__ __forceinline__ float *gemv_segment(const GemvArgs &a, int b, int gi, int w, int lane) {
    return a.work + (((int64_t)b + gi) * GEMV_WARPS + w) * NT * GEMV_FRAG + lane;
}

/* the A fragment of down for ranks j, j + 1 (rows g and g + 8 of the MMA) and the k's kp, kp + 1
 * (a0, a1) and kp + 8, kp + 9 (a2, a3); ranks past the rank, and every rank when !kv, are zeros */
template <int XDT, int LAYOUT>
__device__ __forceinline__ void lowrank_a_frag(const GemvArgs &a, int j, int kp, bool kv, uint32_t (&r)[4]) {
    const uint16_t *d = (const uint16_t *)a.down;
    const bool v0 = kv && j < a.rank, v1 = kv && j + 1 < a.rank;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int k = kp + 8 * h;
        if constexpr (LAYOUT == LR_KPAIRS) { /* down[j, k], down[j, k + 1]: one 4-byte load */
            r[2 * h] = v0 ? __ldg((const unsigned int *)(d + j * a.ds0 + k)) : 0u;
            r[2 * h + 1] = v1 ? __ldg((const unsigned int *)(d + (j + 1) * a.ds0 + k)) : 0u;
        } else if constexpr (LAYOUT == LR_JPAIRS) { /* ranks j, j + 1 of k and of k + 1 (rank even) */
            const uint32_t u = v0 ? __ldg((const unsigned int *)(d + k * a.ds1 + j)) : 0u;
            const uint32_t w = v0 ? __ldg((const unsigned int *)(d + (k + 1) * a.ds1 + j)) : 0u;
            r[2 * h] = __byte_perm(u, w, 0x5410);
            r[2 * h + 1] = __byte_perm(u, w, 0x7632);
        } else {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int64_t at = (int64_t)(j + e) * a.ds0 + (int64_t)k * a.ds1;
                const bool ok = e == 0 ? v0 : v1;
                r[2 * h + e] = pack_pair<XDT>(ok ? sdnq_load_float(a.down, at, a.down_dtype) : 0.0f,
                                              ok ? sdnq_load_float(a.down, at + a.ds1, a.down_dtype) : 0.0f);
            }
        }
    }
}

/* The SVD branch's t = x @ down^T, block b taking k in [b * lr_kb, (b + 1) * lr_kb): on the
 * tensor cores, A = down (rows g and g + 8 of an MMA are ranks 2g and 2g + 1 of its 16), B = x^T
 * as in the weight's MMAs. Per group of LR_RSTEPS x 16 ranks each warp takes the range's 16-k
 * steps in turn, the loads of LR_UNROLL steps (x and every rank of the group) issued before
 * their MMAs; the warps' results meet in shared memory and are summed in warp order (fp32,
 * deterministic) into lowrank in svd_t_frags' order, [block][token tile][16 ranks][lane][4].
 * A programmatic dependent of the GEMV on sm_90+, run beside it in the block slots its grid
 * leaves free; it waits for the GEMV only as it ends, so that its end implies the GEMV's for
 * the finishing kernel (its own dependent). */
constexpr int LR_RSTEPS = 2, LR_UNROLL = 4;
template <int XDT, int NT, int LAYOUT>
__global__ void __launch_bounds__(GEMV_THREADS) gemv_lowrank_kernel(const GemvArgs a) {
    __shared__ float red[GEMV_WARPS * NT * LR_FRAG]; /* [warp][token tile][token][16 ranks] */
    grid_dependency_trigger();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, b = blockIdx.x;
    const int kbeg = b * a.lr_kb, kend = a.K - kbeg < a.lr_kb ? a.K : kbeg + a.lr_kb;
    const int rs = (a.rank + 15) / 16;
    constexpr int KSTEP = 16 * GEMV_WARPS; /* k's from one of a warp's steps to its next */
    const uint16_t *xr[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) xr[nt] = nt * 8 + g < a.M ? (const uint16_t *)a.x + (nt * 8 + g) * a.ldx : NULL;
    for (int s0 = 0; s0 < rs; s0 += LR_RSTEPS) {
        float c[LR_RSTEPS][NT][4] = {};
        for (int k0 = kbeg + 16 * warp; k0 < kend; k0 += KSTEP * LR_UNROLL) {
            uint32_t xf[LR_UNROLL][NT][2], af[LR_UNROLL][LR_RSTEPS][4];
#pragma unroll
            for (int u = 0; u < LR_UNROLL; u++) {
                const int k = k0 + KSTEP * u + 2 * t;
                const bool kv = k0 + KSTEP * u < kend;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const bool ok = kv && xr[nt] != NULL;
                    xf[u][nt][0] = ok ? __ldg((const unsigned int *)(xr[nt] + k)) : 0u;
                    xf[u][nt][1] = ok ? __ldg((const unsigned int *)(xr[nt] + k + 8)) : 0u;
                }
#pragma unroll
                for (int r = 0; r < LR_RSTEPS; r++)
                    lowrank_a_frag<XDT, LAYOUT>(a, 16 * (s0 + r) + 2 * g, k, kv, af[u][r]);
            }
#pragma unroll
            for (int u = 0; u < LR_UNROLL; u++)
#pragma unroll
                for (int r = 0; r < LR_RSTEPS; r++)
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
                        mma16816<XDT>(c[r][nt], af[u][r][0], af[u][r][1], af[u][r][2], af[u][r][3], xf[u][nt][0],
                                      xf[u][nt][1]);
        }
#pragma unroll
        for (int r = 0; r < LR_RSTEPS; r++) {
            if (s0 + r >= rs) break; /* block-uniform */
            /* C[row][token]: c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1); row g is rank
             * 2g of the 16, row g + 8 rank 2g + 1 */
            __syncthreads(); /* the previous 16 ranks' sums are read */
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                float *p = red + (warp * NT + nt) * LR_FRAG;
                p[2 * t * 16 + 2 * g] = c[r][nt][0];
                p[(2 * t + 1) * 16 + 2 * g] = c[r][nt][1];
                p[2 * t * 16 + 2 * g + 1] = c[r][nt][2];
                p[(2 * t + 1) * 16 + 2 * g + 1] = c[r][nt][3];
            }
            __syncthreads();
            if (threadIdx.x < NT * LR_FRAG) { /* output (token tile nt, lane l, e) of svd_t_frag's order */
                const int nt = threadIdx.x / LR_FRAG, l = threadIdx.x / 4 % 32, e = threadIdx.x % 4;
                const int tok = l / 4, rank = 2 * (l % 4) + (e & 1) + (e >> 1) * 8;
                float v = 0.0f;
#pragma unroll
                for (int w = 0; w < GEMV_WARPS; w++) v = __fadd_rn(v, red[(w * NT + nt) * LR_FRAG + tok * 16 + rank]);
                a.lowrank[(((int64_t)b * NT + nt) * rs + s0 + r) * LR_FRAG + threadIdx.x % LR_FRAG] = v;
            }
        }
    }
    grid_dependency_wait(); /* the GEMV's end before this grid's: the finishing kernel waits for this one */
}

/* Split-K over persistent blocks (stream-K): the work is the sequence of items (row group gi of
 * GEMV_WARPS tiles, chunk c), gi-major, and block b takes the items [b * ipb, (b + 1) * ipb).
 * Warp w owns tile w of each row group and walks the block's items in order, with the codes of
 * the next STAGES items in flight across row-group boundaries; all warps of a block read the
 * same x chunk at once (L1 serves seven of them). Where a row group's run of items ends (or the
 * block's range does), the warp writes its partial sums to the work buffer, segment b + gi
 * (unique: each next segment raises b or gi or both), and starts again from zero. No barriers:
 * the warps never meet. gemv_finish_kernel sums the segments of each tile in block order. */
template <int BITS, int XDT, int SDT, int NT, int DEC, bool FACT>
__global__ void __launch_bounds__(GEMV_THREADS, 2) gemv_kernel(const GemvArgs a) {
    constexpr int COPIES = gemv_lut_copies<BITS>::value;
    __shared__ float lut_all[DEC == DEC_LUT ? (1 << BITS) * COPIES : 1];
    if constexpr (DEC == DEC_LUT) {
        gemv_build_lut<BITS, COPIES>(lut_all, a.t, SDT);
        __syncthreads();
    }
    /* the low-rank kernel (SVD branch) or the finishing kernel may launch: the first runs in the
     * block slots this grid leaves free, the second waits for the grids before it to end */
    grid_dependency_trigger();

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const float *lut = lut_all + (COPIES > 1 ? lane : 0); /* this lane's copy */
    constexpr bool PACKED = gemv_packed<BITS, DEC, FACT>::value;
    /* the factored mode's chunk sums take registers: one stage fewer there */
    constexpr int STAGES = gemv_stages<BITS, NT>::value - (FACT && gemv_stages<BITS, NT>::value > 2 ? 1 : 0);
    constexpr int A1 = gemv_accs<NT>::value - 1;
    const int C = a.nch;
    const int lo = (int)blockIdx.x * a.ipb;
    const int n_items = a.items - lo < a.ipb ? a.items - lo : a.ipb;
    auto tile_n0 = [&](int gi) { return (gi * GEMV_WARPS + warp) * GEMV_ROWS; };

    /* the next item to load: its index in the block's range, row group, chunk */
    int il = 0, gl = lo / C, kl = lo - gl * C;
    int gc = gl, kc = kl; /* the item computed */
    GemvRows rows;
    gemv_set_rows<SDT>(a, tile_n0(gl) + g, rows);
    auto load_next = [&](GemvStage<BITS> &stage) {
        gemv_load_stage<BITS, SDT>(a, rows, kl, il < n_items, t, stage);
        il++;
        if (++kl == C) {
            kl = 0, gl++;
            gemv_set_rows<SDT>(a, tile_n0(gl) + g, rows);
        }
    };
    GemvStage<BITS> st[STAGES];
#pragma unroll
    for (int s = 0; s < STAGES; s++) load_next(st[s]);
    const uint16_t *xr[NT]; /* this thread's token rows of x */
#pragma unroll
    for (int nt = 0; nt < NT; nt++) xr[nt] = nt * 8 + g < a.M ? (const uint16_t *)a.x + (nt * 8 + g) * a.ldx : NULL;
    uint32_t xc[NT][16];

    float acc[gemv_accs<NT>::value][NT][4] = {};
    auto flush = [&]() { /* this warp's partial sums of the segment (block, row group gc) */
        float *p = gemv_segment<NT>(a, (int)blockIdx.x, gc, warp, lane);
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                p[(nt * 4 + q) * 32] = A1 ? __fadd_rn(acc[0][nt][q], acc[A1][nt][q]) : acc[0][nt][q];
                acc[0][nt][q] = 0.0f;
                acc[A1][nt][q] = 0.0f;
            }
    };
    for (int i0 = 0; i0 < n_items; i0 += STAGES) {
#pragma unroll
        for (int s = 0; s < STAGES; s++) {
            const int i = i0 + s;
            if (i >= n_items) break; /* warp-uniform */
            /* x of this item: from L1 (the block's warps read the same chunk), its latency under
             * the decode of the codes in flight; loaded one item ahead it cost 16 register moves
             * per item and 16 registers, and ran up to 7 % slower at M = 1 (uint4 g128) */
            gemv_load_x<NT, PACKED>(a, xr, kc, t, xc);
            gemv_compute<BITS, XDT, SDT, NT, DEC, FACT>(a, lut, st[s], xc, acc);
            load_next(st[s]);
            if (++kc == C) {
                flush();
                kc = 0, gc++;
            } else if (i + 1 == n_items) {
                flush();
            }
        }
    }
}

/* asks L1 for the tile's up rows (the SVD branch's operand, ready before the kernels this one
 * waits for have ended): ranks above SVD_REG_RANKS */
__device__ __forceinline__ void gemv_prefetch_up(const GemvArgs &a, int n0, int lane) {
    if (a.rank <= 0) return;
    const int esz = a.up_dtype == SDNQ_DT_F32 ? 4 : 2; /* F32, BF16 or F16 (checked by the launcher) */
    if (a.us0 == 1) { /* column-major (sdnq's): per rank, the tile's 16 rows are contiguous */
        for (int j = lane; j < a.rank; j += 32) prefetch_l1((const char *)a.up + ((int64_t)n0 + (int64_t)j * a.us1) * esz);
    } else if (lane < GEMV_ROWS && n0 + lane < a.N) {
        prefetch_l1((const char *)a.up + (int64_t)(n0 + lane) * a.us0 * esz);
    }
}

/* Tile blockIdx.x of y: the sum of its segments' partial sums in block order (deterministic),
 * + the SVD branch on the tensor cores + bias, one rounding. Warp nt takes token tile nt. A
 * programmatic dependent of the kernel before it, whose end is this kernel's critical path:
 * bias and up fragments are loaded before it waits, the segments' and t's partial sums after,
 * each set in one round of loads (a round trip per load or per four loads had made the tail
 * after the GEMV 0.9-4.2 us longer with the SVD branch, up to 1.6 us without).
 * The launch bounds' minimum of one block lets ptxas hold those loads in registers (~130; with
 * no minimum it keeps ~80, for 32-thread blocks, and spreads the loads over several rounds). */
template <int XDT, int NT> __global__ void __launch_bounds__(32 * NT, 1) gemv_finish_kernel(const GemvArgs a) {
    const int tile = blockIdx.x, nt = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int gi = tile / GEMV_WARPS, w = tile % GEMV_WARPS, n0 = tile * GEMV_ROWS;
    /* the blocks whose item ranges meet row group gi */
    const int b0 = gi * a.nch / a.ipb, b1 = ((gi + 1) * a.nch - 1) / a.ipb;
    float bias[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int q = 0; q < 4; q++) {
        const int n = n0 + g + (q >= 2 ? 8 : 0);
        if (a.bias != NULL && n < a.N) bias[q] = from_bits16<XDT>(__ldg((const unsigned short *)a.bias + n));
    }
    /* the SVD branch's up fragments (rank <= SVD_REG_RANKS: in registers; else asked of L1) */
    constexpr int RS = SVD_REG_RANKS / 16;
    uint32_t up[RS][4] = {};
    const bool up_regs = a.rank <= SVD_REG_RANKS;
    if (up_regs && a.rank > 0) {
        svd_up_frags<XDT, RS>(a, n0, 0, g, t, up);
    } else {
        gemv_prefetch_up(a, n0, lane);
    }
    grid_dependency_wait();
    /* the segments b0..b1 and t (the low-rank kernel's partial sums), all loaded before the first
     * add where there are at most FIN_SEGS segments (the first batch goes out before t's loads);
     * each summed in block order */
    constexpr int FIN_SEGS = 12;
    const float *p0 = gemv_segment<NT>(a, b0, gi, w, lane) + nt * GEMV_FRAG;
    const int64_t seg = (int64_t)GEMV_WARPS * NT * GEMV_FRAG; /* floats from one segment to the next */
    float v[FIN_SEGS][4], sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    auto load_segs = [&](int b) {
#pragma unroll
        for (int u = 0; u < FIN_SEGS; u++)
#pragma unroll
            for (int q = 0; q < 4; q++) v[u][q] = b + u <= b1 - b0 ? p0[(b + u) * seg + q * 32] : 0.0f;
    };
    auto add_segs = [&]() {
#pragma unroll
        for (int u = 0; u < FIN_SEGS; u++)
#pragma unroll
            for (int q = 0; q < 4; q++) sum[q] = __fadd_rn(sum[q], v[u][q]);
    };
    load_segs(0);
    uint32_t tb[RS][2] = {};
    if (up_regs && a.rank > 0) svd_t_frags<XDT, NT, RS>(a, nt, 0, lane, tb);
    add_segs();
    for (int b = FIN_SEGS; b <= b1 - b0; b += FIN_SEGS) {
        load_segs(b);
        add_segs();
    }
    float lr[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (up_regs) {
#pragma unroll
        for (int s = 0; s < RS; s++)
            if (16 * s < a.rank) mma16816<XDT>(lr, up[s][0], up[s][1], up[s][2], up[s][3], tb[s][0], tb[s][1]);
    } else {
        svd_tile<XDT, NT>(a, n0, nt, g, t, lr);
    }
#pragma unroll
    for (int q = 0; q < 4; q++) {
        /* accumulator q holds C[row][token]: row = g (+8 for q >= 2), token = 2t (+1 for odd q) */
        const int n = n0 + g + (q >= 2 ? 8 : 0);
        const int m = nt * 8 + 2 * t + (q & 1);
        if (m < a.M && n < a.N) {
            float v = sum[q];
            if (a.bias != NULL) v = __fadd_rn(v, bias[q]);
            if (a.rank > 0) v = __fadd_rn(v, lr[q]);
            ((uint16_t *)a.y)[(int64_t)m * a.ldy + n] = (uint16_t)bits16<XDT>(v);
        }
    }
}

}  // namespace sdnq_cuda

#endif /* SDNQ_CUDA_GEMV_CUH */
