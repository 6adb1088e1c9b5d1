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
 *   already bf16/fp16 in memory).
 *
 * Dequantization is dequant.cuh's arithmetic: code -> value, * scale (+ zero
 * point), rounded to the scale dtype, then to x's dtype - the bits
 * sdnq_cuda_dequantize writes for out dtype = x dtype (NaN payloads aside:
 * hardware conversions, same rounding). The value of a code comes from a
 * shared lookup table (sdnq_weight_value), except for 4- and 8-bit integer
 * types (int4, uint4, int8, uint8), decoded with the float "magic number":
 * the byte (or nibble) is placed into the mantissa of 2^23 with one byte
 * permute and 2^23 (minus the type's offset) subtracted, exact for these small
 * integers and free of shared-memory traffic. So the only difference from
 * F.linear(x, W_dequantized) is the fp32 summation order.
 *
 * Memory pipeline. A CUDA block (8 warps) owns 16 weight rows; warp w takes
 * the K-chunks w, w+8, ...; the codes (and scales) of STAGES chunks (for M <= 8:
 * 5 for <= 4 bits, 4 for 5-6 bits, 3 for 7-8 bits; 3 for M > 8) are in flight per warp: a chunk's
 * registers are refilled with the chunk STAGES*8 further on as soon as it has
 * been multiplied. For M <= 8 the x
 * fragment of the next chunk is loaded one chunk ahead as well (x is small and
 * mostly hits L2). The 8 warps' partial tiles are summed in shared memory in
 * warp order (deterministic); bias and the SVD branch are added in fp32 and y is
 * rounded once. Invalid rows (n >= N), tokens (m >= M) and k's (past K)
 * contribute zeros: every lane runs every mma.sync, which is warp-collective.
 *
 * SVD branch. lowrank_kernel first computes t = x @ down^T in fp32 as partial
 * sums over a few k ranges (one block per rank index, k range and group of 4
 * tokens, so that a rank of 32 still fills the GPU; deterministic block
 * reductions); the GEMV's epilogue sums the ranges in order and adds
 * sum_j t[m, j] * up[n, j] before the rounding. The launcher runs both on the
 * caller's stream, in that order; on sm_90+ the GEMV is a programmatic dependent
 * launch (PDL): it starts as soon as every low-rank block runs, streams its weight
 * meanwhile, and waits for the low-rank results (griddepcontrol.wait) only in its
 * epilogue, so the small kernel and the launch gap hide behind the weight stream.
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
constexpr int GEMV_ROWS = 16;                    /* weight rows per block (one m16 tile) */
constexpr int GEMV_CODES = 32;                   /* consecutive k's per thread per chunk */
constexpr int GEMV_CHUNK = 4 * GEMV_CODES;       /* k's per warp per chunk               */
/* chunks of codes in flight per warp: deeper for narrow codes (fewer registers per chunk, fewer
 * bytes per chunk), 3 for 7- and 8-bit codes (two 8-warp blocks per multiprocessor at 128
 * registers) */
template <int BITS, int NT> struct gemv_stages {
    static constexpr int value = NT == 2 ? 3 : BITS <= 4 ? 5 : BITS <= 6 ? 4 : 3;
};

constexpr int LR_THREADS = 128;                  /* low-rank pre-kernel                  */
constexpr int LR_TOKENS = 4;                     /* tokens per low-rank block            */
constexpr int LR_KSTEP = 8 * LR_THREADS;         /* k's per block per step (one 16-byte load each) */
constexpr int LR_TSTEP = LR_THREADS / 4;         /* rank-contiguous down: k's per block per step */
constexpr int LR_TRANKS = 32;                    /* rank-contiguous down: ranks per block (4 x 8) */
constexpr int GEMV_RC = 64;                      /* ranks per epilogue pass (staged in shared memory) */

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
    int64_t ss, zs;
    int32_t asym;
    /* DEC_INT: value = float(2^23 + (byte ^ xor8)) - magic_sub */
    uint32_t xor8;
    float magic_sub;
    /* SVD epilogue: y[m, n] += sum_j (sum_s lowrank[(s*M + m)*rank + j]) * up[n*us0 + j*us1] */
    int32_t rank, splits;
    const float *lowrank;
    const void *up;
    int32_t up_dtype;
    int64_t us0, us1;
};

struct LowrankArgs {
    const void *x;
    int64_t ldx;
    int32_t M, K, rank;
    int32_t kc; /* k's per split (blockIdx.y): a multiple of LR_KSTEP */
    const void *down;
    int32_t down_dtype;
    int64_t ds0, ds1;
    int32_t vec;    /* down rows contiguous along k, 16-byte aligned, in x's dtype          */
    int32_t tvec;   /* down contiguous along the rank (sdnq's column-major factor), 16-byte
                       aligned, rank % 8 == 0, in x's dtype: lowrank_t_kernel            */
    float *t;    /* [splits, M, rank]: partial sums over each split's k range */
};

/* two fp32 values -> one register of two XDT halves, lo first (RNE) */
template <int XDT> __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    uint32_t u;
    if constexpr (XDT == SDNQ_DT_BF16) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        memcpy(&u, &v, sizeof u);
    } else {
        const __half2 v = __floats2half2_rn(lo, hi);
        memcpy(&u, &v, sizeof u);
    }
    return u;
}

/* 8 values of one weight row -> 4 registers of XDT pairs */
template <int SDT, int XDT, bool ASYM>
__device__ __forceinline__ void deq_pack8(const float (&v)[UNIT], float s, float z, uint32_t (&p)[4]) {
#pragma unroll
    for (int q = 0; q < 4; q++)
        p[q] = pack2<XDT>(dq_value<SDT, XDT, ASYM>(v[2 * q], s, z), dq_value<SDT, XDT, ASYM>(v[2 * q + 1], s, z));
}

/* one XDT value (raw bits) -> fp32 */
template <int XDT> __device__ __forceinline__ float unpack1(uint32_t bits) {
    return XDT == SDNQ_DT_BF16 ? sdnq_bf16_to_f32((uint16_t)bits) : sdnq_f16_to_f32((uint16_t)bits);
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

/* this thread's first k in a chunk */
__device__ __forceinline__ int64_t chunk_k(int64_t chunk, int t) { return chunk * GEMV_CHUNK + (int64_t)t * GEMV_CODES; }

template <int BITS, int SDT>
__device__ __forceinline__ void gemv_load_stage(const GemvArgs &a, int64_t chunk, int64_t nchunks, int n0, int g,
                                                int t, GemvStage<BITS> &st) {
    const int64_t kb = chunk_k(chunk, t);
    const bool kv = chunk < nchunks && kb < a.K;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int n = n0 + g + 8 * h;
        if (kv && n < a.N) {
            load_codes32<BITS>((const uint8_t *)a.codes + ((int64_t)n * a.K + kb) * BITS / 8, st.w[h]);
            const int64_t grp = (int64_t)n * a.gpr + (uint32_t)kb / (uint32_t)a.gk;
            st.s[h] = ld_float<SDT>(a.scale, grp * a.ss);
            st.z[h] = a.asym ? ld_float<SDT>(a.zp, grp * a.zs) : 0.0f;
        } else { /* zero codes with zero scale and zero point: exact zeros for every type taken */
#pragma unroll
            for (int i = 0; i < BITS; i++) st.w[h][i] = 0;
            st.s[h] = 0.0f;
            st.z[h] = 0.0f;
        }
    }
}

/* x fragments of this thread's tokens (g, and g + 8 when NT == 2) for a chunk */
template <int NT>
__device__ __forceinline__ void gemv_load_x(const GemvArgs &a, int64_t chunk, int64_t nchunks, int g, int t,
                                            uint32_t (&x)[NT][16]) {
    const int64_t kb = chunk_k(chunk, t);
    const bool kv = chunk < nchunks && kb < a.K;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int m = nt * 8 + g;
        load_x32((const uint16_t *)a.x + (int64_t)m * a.ldx + kb, kv && m < a.M, x[nt]);
    }
}

/* float(2^23 + byte q of w) */
__device__ __forceinline__ float magic_byte(uint32_t w, int q) {
    return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7440u | (uint32_t)q));
}

/* the raw values (before scaling) of unit u (codes 8u .. 8u+7) of 32 codes in w */
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
        for (int k = 0; k < UNIT; k++) v[k] = lut[c[k]];
    }
}

/* the 16 MMAs of one chunk: per unit of 8 k's, two MMAs per token tile */
template <int BITS, int XDT, int SDT, int NT, int DEC>
__device__ __forceinline__ void gemv_compute(const GemvArgs &a, const float *lut, const GemvStage<BITS> &st,
                                             const uint32_t (&x)[NT][16], float (&acc)[NT][4]) {
    const bool asym = a.asym != 0;
#pragma unroll
    for (int u = 0; u < 4; u++) {
        uint32_t p[2][4];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float v[UNIT];
            gemv_unit_values<BITS, DEC>(a, lut, st.w[h], u, v);
            if (asym) deq_pack8<SDT, XDT, true>(v, st.s[h], st.z[h], p[h]);
            else deq_pack8<SDT, XDT, false>(v, st.s[h], st.z[h], p[h]);
        }
        /* MMA 2u: k's +8u+0..3 (x words 4u, 4u+1); MMA 2u+1: k's +8u+4..7 (words 4u+2, 4u+3) */
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            mma16816<XDT>(acc[nt], p[0][0], p[1][0], p[0][1], p[1][1], x[nt][4 * u], x[nt][4 * u + 1]);
            mma16816<XDT>(acc[nt], p[0][2], p[1][2], p[0][3], p[1][3], x[nt][4 * u + 2], x[nt][4 * u + 3]);
        }
    }
}

template <int BITS, int XDT, int SDT, int NT, int DEC>
__global__ void __launch_bounds__(GEMV_THREADS, 2) gemv_kernel(const GemvArgs a) {
    __shared__ float lut[DEC == DEC_LUT ? 1 << BITS : 1];
    __shared__ float part[GEMV_WARPS][NT][4][32];
    if constexpr (DEC == DEC_LUT) {
        build_lut(lut, a.t, SDT);
        __syncthreads();
    }

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int n0 = blockIdx.x * GEMV_ROWS;
    float acc[NT][4] = {};
    const int64_t nchunks = (a.K + GEMV_CHUNK - 1) / GEMV_CHUNK;

    constexpr int STAGES = gemv_stages<BITS, NT>::value;
    GemvStage<BITS> st[STAGES];
#pragma unroll
    for (int s = 0; s < STAGES; s++) gemv_load_stage<BITS, SDT>(a, warp + s * GEMV_WARPS, nchunks, n0, g, t, st[s]);
    constexpr bool XPF = NT == 1; /* x one chunk ahead (registers allowing) */
    uint32_t xc[NT][16];
    if constexpr (XPF) gemv_load_x<NT>(a, warp, nchunks, g, t, xc);

    for (int64_t c0 = warp; c0 < nchunks; c0 += STAGES * GEMV_WARPS) {
#pragma unroll
        for (int s = 0; s < STAGES; s++) {
            const int64_t c = c0 + (int64_t)s * GEMV_WARPS;
            if (c >= nchunks) break; /* warp-uniform */
            if constexpr (XPF) {
                uint32_t xn[NT][16];
                gemv_load_x<NT>(a, c + GEMV_WARPS, nchunks, g, t, xn);
                gemv_compute<BITS, XDT, SDT, NT, DEC>(a, lut, st[s], xc, acc);
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int i = 0; i < 16; i++) xc[nt][i] = xn[nt][i];
            } else {
                gemv_load_x<NT>(a, c, nchunks, g, t, xc);
                gemv_compute<BITS, XDT, SDT, NT, DEC>(a, lut, st[s], xc, acc);
            }
            gemv_load_stage<BITS, SDT>(a, c + STAGES * GEMV_WARPS, nchunks, n0, g, t, st[s]);
        }
    }

#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int q = 0; q < 4; q++) part[warp][nt][q][lane] = acc[nt][q];

    /* SVD branch: the low-rank sums (split partials added in order) and the block's up rows,
     * staged in shared memory GEMV_RC ranks at a time; warp nt's lanes then take dot products */
    float lr[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (a.rank > 0) {
        __shared__ float ts[16][GEMV_RC], ups[GEMV_ROWS][GEMV_RC + 1];
        grid_dependency_wait(); /* the low-rank kernel's results (launched as its dependent) */
        const int64_t sstride = (int64_t)a.M * a.rank;
        __shared__ float tpart[GEMV_THREADS];
        for (int j0 = 0; j0 < a.rank; j0 += GEMV_RC) {
            const int nj = a.rank - j0 < GEMV_RC ? a.rank - j0 : GEMV_RC;
            /* sum of the splits: P threads per (token, rank) pair when there are few pairs, each
             * over a fixed range of splits, then the P partials in order (deterministic) */
            const int E = a.M * nj;
            int P = E >= GEMV_THREADS ? 1 : GEMV_THREADS / E;
            if (P > a.splits) P = a.splits;
            for (int idx = threadIdx.x; idx < E * P; idx += GEMV_THREADS) {
                const int e = idx % E, p = idx / E, m = e / nj, jj = e % nj;
                const int s0 = p * a.splits / P, s1 = (p + 1) * a.splits / P;
                const float *src = a.lowrank + (int64_t)m * a.rank + j0 + jj;
                float v = 0.0f;
#pragma unroll 8
                for (int sp = s0; sp < s1; sp++) v = __fadd_rn(v, __ldg(src + sp * sstride));
                if (P == 1) ts[m][jj] = v;
                else tpart[idx] = v;
            }
            if (P > 1) {
                __syncthreads();
                for (int e = threadIdx.x; e < E; e += GEMV_THREADS) {
                    float v = 0.0f;
                    for (int p = 0; p < P; p++) v = __fadd_rn(v, tpart[p * E + e]);
                    ts[e / nj][e % nj] = v;
                }
            }
            for (int idx = threadIdx.x; idx < GEMV_ROWS * nj; idx += GEMV_THREADS) {
                const int rr = idx / nj, jj = idx % nj, n = n0 + rr;
                ups[rr][jj] = n < a.N ? sdnq_load_float(a.up, (int64_t)n * a.us0 + (int64_t)(j0 + jj) * a.us1,
                                                        a.up_dtype)
                                      : 0.0f;
            }
            __syncthreads();
            if (warp < NT) {
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const int rr = g + (q >= 2 ? 8 : 0), m = warp * 8 + 2 * t + (q & 1);
                    if (m < a.M)
                        for (int jj = 0; jj < nj; jj++) lr[q] = __fmaf_rn(ts[m][jj], ups[rr][jj], lr[q]);
                }
            }
            __syncthreads();
        }
    } else {
        __syncthreads();
    }
    if (warp >= NT) return;
    const int nt = warp; /* warp w sums token tile w over the warps, in warp order */
#pragma unroll
    for (int q = 0; q < 4; q++) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < GEMV_WARPS; w++) sum = __fadd_rn(sum, part[w][nt][q][lane]);
        /* accumulator q holds C[row][token]: row = g (+8 for q >= 2), token = 2t (+1 for odd q) */
        const int n = n0 + g + (q >= 2 ? 8 : 0);
        const int m = nt * 8 + 2 * t + (q & 1);
        if (m < a.M && n < a.N) {
            if (a.bias != NULL) sum = __fadd_rn(sum, unpack1<XDT>(__ldg((const unsigned short *)a.bias + n)));
            if (a.rank > 0) sum = __fadd_rn(sum, lr[q]);
            ((uint16_t *)a.y)[(int64_t)m * a.ldy + n] = (uint16_t)bits16<XDT>(sum);
        }
    }
}

/* t[s, m, j] = sum over split s's k's of x[m, k] * down[j, k], fp32: block (j, split s, group of
 * LR_TOKENS tokens); the GEMV's epilogue sums the splits in order */
template <int XDT> __global__ void __launch_bounds__(LR_THREADS) lowrank_kernel(const LowrankArgs a) {
    __shared__ float red[LR_THREADS / 32][LR_TOKENS];
    grid_dependency_trigger(); /* the GEMV may start streaming its weight now */
    const int j = blockIdx.x, sp = blockIdx.y, m0 = blockIdx.z * LR_TOKENS;
    const int tid = threadIdx.x;
    const int kbeg = sp * a.kc, kend = a.K - kbeg < a.kc ? a.K : kbeg + a.kc;
    float acc[LR_TOKENS] = {};
    const uint16_t *x = (const uint16_t *)a.x;
    if (a.vec) { /* 8 k's per step: one 16-byte load of down and of each token's x */
        const uint16_t *d = (const uint16_t *)a.down + (int64_t)j * a.ds0;
        for (int k = kbeg + tid * 8; k < kend; k += LR_KSTEP) {
            const uint4 dv = __ldg((const uint4 *)(d + k));
            const uint32_t dw[4] = {dv.x, dv.y, dv.z, dv.w};
#pragma unroll
            for (int mm = 0; mm < LR_TOKENS; mm++) {
                if (m0 + mm >= a.M) break;
                const uint4 xv = __ldg((const uint4 *)(x + (int64_t)(m0 + mm) * a.ldx + k));
                const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    acc[mm] = __fmaf_rn(unpack1<XDT>(xw[i] & 0xFFFFu), unpack1<XDT>(dw[i] & 0xFFFFu), acc[mm]);
                    acc[mm] = __fmaf_rn(unpack1<XDT>(xw[i] >> 16), unpack1<XDT>(dw[i] >> 16), acc[mm]);
                }
            }
        }
    } else {
        for (int k = kbeg + tid; k < kend; k += LR_THREADS) {
            const float dv = sdnq_load_float(a.down, (int64_t)j * a.ds0 + (int64_t)k * a.ds1, a.down_dtype);
#pragma unroll
            for (int mm = 0; mm < LR_TOKENS; mm++) {
                if (m0 + mm >= a.M) break;
                acc[mm] = __fmaf_rn(unpack1<XDT>(__ldg(x + (int64_t)(m0 + mm) * a.ldx + k)), dv, acc[mm]);
            }
        }
    }
#pragma unroll
    for (int mm = 0; mm < LR_TOKENS; mm++) {
        float v = acc[mm];
#pragma unroll
        for (int off = 16; off > 0; off /= 2) v = __fadd_rn(v, __shfl_xor_sync(0xFFFFFFFFu, v, off));
        if (tid % 32 == 0) red[tid / 32][mm] = v;
    }
    __syncthreads();
    if (tid < LR_TOKENS && m0 + tid < a.M) {
        float s = 0.0f;
        for (int w = 0; w < LR_THREADS / 32; w++) s = __fadd_rn(s, red[w][tid]);
        a.t[((int64_t)sp * a.M + m0 + tid) * a.rank + j] = s;
    }
}

/* the same for down stored rank-contiguous (down[j, k] at j + k*ds1, sdnq's column-major
 * factor): block (group of 32 ranks, split s, group of LR_TOKENS tokens); thread (k lane kk,
 * rank chunk c) reads the 8 ranks 8c..8c+7 of row k with one 16-byte load and accumulates them
 * for its tokens; lanes of the same chunk are reduced with shuffles, warps in order */
template <int XDT> __global__ void __launch_bounds__(LR_THREADS) lowrank_t_kernel(const LowrankArgs a) {
    __shared__ float red[LR_THREADS / 32][4][LR_TOKENS][8];
    grid_dependency_trigger();
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, c = tid % 4, kk = tid / 4;
    const int sp = blockIdx.y, m0 = blockIdx.z * LR_TOKENS;
    const int j0 = blockIdx.x * LR_TRANKS + c * 8;
    const bool jv = j0 < a.rank;
    const int kbeg = sp * a.kc, kend = a.K - kbeg < a.kc ? a.K : kbeg + a.kc;
    float acc[LR_TOKENS][8] = {};
    const uint16_t *x = (const uint16_t *)a.x, *d = (const uint16_t *)a.down;
#pragma unroll 4
    for (int k = kbeg + kk; k < kend; k += LR_TSTEP) {
        uint4 dv = make_uint4(0, 0, 0, 0);
        if (jv) dv = __ldg((const uint4 *)(d + (int64_t)k * a.ds1 + j0));
        const uint32_t dw[4] = {dv.x, dv.y, dv.z, dv.w};
#pragma unroll
        for (int mm = 0; mm < LR_TOKENS; mm++) {
            if (m0 + mm >= a.M) break;
            const float xv = unpack1<XDT>(__ldg(x + (int64_t)(m0 + mm) * a.ldx + k));
#pragma unroll
            for (int i = 0; i < 4; i++) {
                acc[mm][2 * i] = __fmaf_rn(xv, unpack1<XDT>(dw[i] & 0xFFFFu), acc[mm][2 * i]);
                acc[mm][2 * i + 1] = __fmaf_rn(xv, unpack1<XDT>(dw[i] >> 16), acc[mm][2 * i + 1]);
            }
        }
    }
#pragma unroll
    for (int mm = 0; mm < LR_TOKENS; mm++)
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float v = acc[mm][i];
            v = __fadd_rn(v, __shfl_xor_sync(0xFFFFFFFFu, v, 4));
            v = __fadd_rn(v, __shfl_xor_sync(0xFFFFFFFFu, v, 8));
            v = __fadd_rn(v, __shfl_xor_sync(0xFFFFFFFFu, v, 16));
            if (lane < 4) red[warp][lane][mm][i] = v;
        }
    __syncthreads();
    { /* thread tid < 4*LR_TOKENS*8 writes (chunk, token, rank) */
        const int cc = tid / (LR_TOKENS * 8), mm = (tid / 8) % LR_TOKENS, i = tid % 8, j = blockIdx.x * LR_TRANKS + cc * 8 + i;
        if (tid < 4 * LR_TOKENS * 8 && m0 + mm < a.M && j < a.rank) {
            float sum = 0.0f;
            for (int w = 0; w < LR_THREADS / 32; w++) sum = __fadd_rn(sum, red[w][cc][mm][i]);
            a.t[((int64_t)sp * a.M + m0 + mm) * a.rank + j] = sum;
        }
    }
}

}  // namespace sdnq_cuda

#endif /* SDNQ_CUDA_GEMV_CUH */
