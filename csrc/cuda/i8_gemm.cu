/*
 * i8_gemm.cu - the int8 GEMM of the W8A8 linear with its scale epilogue fused (sm_90a).
 *
 * out[m, n] = (float)(a[m, :] . b[n, :]) * a_scale[m] * b_scale[n] (+ bias[n]) in bf16/fp16: the
 * same int32 sums (exact) and the same three rounded operations as cuBLASLt's int32 GEMM followed by
 * w8a8.cuh's scale_epilogue, so the same bits, without writing and re-reading the int32 product.
 * cuBLASLt 13 offers no int8 GEMM with a floating-point output or per-row scales on Hopper
 * (benchmarks/lt_probe.cu), hence a kernel of our own.
 *
 * Persistent and warp-specialized: one block per multiprocessor loops over output tiles of
 * BM x BN (BM = 64 NC). Warpgroup 0 is the producer: one thread issues TMA loads of 128-byte-wide
 * K slices of a (BM rows) and b (BN rows) into a STAGES-deep ring of shared-memory buffers, with
 * the hardware's 128-byte swizzle, and an mbarrier per buffer counting the bytes in ("full") and
 * the consumers out ("empty"). Warpgroups 1..NC each own 64 rows of the tile: per slice four
 * wgmma m64nBNk32 (s8 x s8 -> s32) read both operands from shared memory through descriptors and
 * accumulate in registers; a buffer is released once the next slice's wgmmas are issued and the
 * previous ones have completed. The epilogue's operands (two row scales, one column's scale and
 * bias per thread) are loaded when a tile starts, so their latency hides behind its main loop;
 * the results go through a swizzled shared-memory tile to TMA stores, which clip at M and N and
 * run while the next tile's main loop starts. K is zero-filled by TMA past its end. Tiles are
 * walked in bands of TILE_GROUP_M tile rows so the ones in flight share their operands in L2.
 *
 * Needs K % 16 == 0 and N % 8 == 0 (TMA row pitches are multiples of 16 bytes) and 16-byte-aligned
 * a, b and out; otherwise, on any device but compute capability 9.0, or in a build without sm_90a
 * code, it answers SDNQ_ERR_UNSUPPORTED and the caller keeps the cuBLASLt path.
 */
#include "common.cuh"

#ifndef SDNQ_CUDA_EMU
#include <cuda.h>
#include <cudaTypedefs.h>
#endif

using namespace sdnq_cuda;

namespace {

constexpr int BK = 128; /* bytes (= int8 values) of K per stage: one row of the 128-byte swizzle */

/* a tile configuration: NC consumer warpgroups (BM = 64 NC rows), BN columns, STAGES buffers */
template <int NC, int BN, int STAGES> struct Tile {
    static constexpr int nc = NC, bn = BN, stages = STAGES, bm = 64 * NC;
    static constexpr size_t smem = 1024 /* alignment of the swizzled buffers */ + (size_t)STAGES * (bm + BN) * BK +
                                   (size_t)bm * BN * 2 /* output tile */ + 2 * (size_t)STAGES * 8 /* mbarriers */ +
                                   (size_t)BN * 8 /* column scale, bias */;
    static_assert(smem <= 227 * 1024, "shared memory");
};
using Big = Tile<3, 192, 3>;
using Small = Tile<2, 128, 5>;

sdnq_status check(const sdnq_i8_gemm_desc *d) {
    if (d->out_dtype != SDNQ_DT_BF16 && d->out_dtype != SDNQ_DT_F16) {
        if (d->out_dtype == SDNQ_DT_F32) return SDNQ_ERR_UNSUPPORTED;
        return SDNQ_ERR_DTYPE;
    }
    if (!sdnq_is_arith_dtype(d->b_scale_dtype)) return SDNQ_ERR_DTYPE;
    if (d->M < 0 || d->N < 0 || d->K < 0 || d->a_numel < 0 || d->b_numel < 0 || d->a_scale_numel < 0 ||
        d->b_scale_numel < 0 || d->b_scale_stride < 0 || d->bias_numel < 0 || d->out_numel < 0)
        return SDNQ_ERR_SIZE;
    if (d->M > INT32_MAX - 256 || d->N > INT32_MAX - 256 || d->K > INT32_MAX) return SDNQ_ERR_UNSUPPORTED;
    const int64_t na = sdnq_mul64(d->M, d->K), nb = sdnq_mul64(d->N, d->K), no = sdnq_mul64(d->M, d->N);
    if (na < 0 || nb < 0 || no < 0) return SDNQ_ERR_OVERFLOW;
    if (no == 0) return SDNQ_OK;
    const int64_t smax = sdnq_max_index3(d->N, d->b_scale_stride, 1, 0, 1, 0);
    if (smax < 0) return SDNQ_ERR_SIZE;
    if (d->a_numel < na || d->b_numel < nb || d->out_numel < no || d->a_scale_numel < d->M ||
        smax >= d->b_scale_numel || (d->bias != NULL && d->bias_numel < d->N))
        return SDNQ_ERR_RANGE;
    if (d->K == 0) return SDNQ_ERR_UNSUPPORTED; /* nothing to multiply: the caller fills out */
    if (d->a == NULL || d->b == NULL || d->a_scale == NULL || d->b_scale == NULL || d->out == NULL)
        return SDNQ_ERR_NULL;
    if (d->K % 16 != 0 || d->N % 8 != 0 || !aligned(d->a, 16) || !aligned(d->b, 16) || !aligned(d->out, 16) ||
        !aligned(d->a_scale, 4) || !aligned(d->b_scale, (uintptr_t)sdnq_dtype_size(d->b_scale_dtype)) ||
        (d->bias != NULL && !aligned(d->bias, 2)))
        return SDNQ_ERR_UNSUPPORTED;
    return SDNQ_OK;
}

#ifndef SDNQ_CUDA_EMU

/* ------------------------------------------------------------------------ */
/* device side                                                               */

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SDNQ_WGMMA 1
#endif

__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

#ifdef SDNQ_WGMMA
__device__ __forceinline__ void mbar_init(uint64_t *b, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(b)), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t *b, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t *b) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(b)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t *b, uint32_t parity) {
    asm volatile("{\n.reg .pred P1;\nLAB_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                 "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}" ::"r"(smem_addr(b)),
                 "r"(parity)
                 : "memory");
}
/* rows [c1, c1 + box rows) x bytes [c0, c0 + 128) of a 2-D tensor map into shared memory */
__device__ __forceinline__ void tma_load(void *dst, const CUtensorMap *map, uint64_t *bar, int c0, int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
            smem_addr(dst)),
        "l"((uint64_t)map), "r"(smem_addr(bar)), "r"(c0), "r"(c1)
        : "memory");
}
__device__ __forceinline__ void tma_store(const CUtensorMap *map, const void *src, int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];" ::"l"((uint64_t)map),
                 "r"(smem_addr(src)), "r"(c0), "r"(c1)
                 : "memory");
}
/* wgmma descriptor of a K-major operand in 128-byte-swizzled rows, 8-row groups 1024 bytes apart */
__device__ __forceinline__ uint64_t sw128_desc(uint32_t saddr) {
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}
/* keeps the compiler from moving accumulator accesses across the asynchronous wgmma */
template <int R> __device__ __forceinline__ void fence_regs(int (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; i++) asm volatile("" : "+r"(d[i])::"memory");
}

/* wgmma.m64nNk32 s32 += s8 x s8, both operands K-major in shared memory (operand lists spelled out) */
template <int BN> struct Wgmma;
template <> struct Wgmma<128> {
    static __device__ __forceinline__ void run(int (&d)[64], uint64_t da, uint64_t db) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p;\n}\n"
                     : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
                       "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
                       "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
                       "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
                       "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]),
                       "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
                       "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
                       "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
                     : "l"(da), "l"(db), "r"(1));
    }
};
template <> struct Wgmma<192> {
    static __device__ __forceinline__ void run(int (&d)[96], uint64_t da, uint64_t db) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n192k32.s32.s8.s8 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95}, %96, %97, p;\n}\n"
                     : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
                       "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
                       "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
                       "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
                       "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]),
                       "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
                       "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
                       "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]),
                       "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]),
                       "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]),
                       "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]),
                       "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95])
                     : "l"(da), "l"(db), "r"(1));
    }
};

/* the origin of tile p: bands of TILE_GROUP_M tile rows, each walked along N column by column
 * (tile rows first), so the tiles in flight at once share a few row slabs of a and all touch
 * the same columns of b: both stay in L2 when a is larger than it (M = 16384) */
constexpr int TILE_GROUP_M = 8;
__device__ __forceinline__ void tile_origin(int p, int tiles_m, int tiles_n, int bm, int bn, int &m0, int &n0) {
    const int band = p / (TILE_GROUP_M * tiles_n), first = band * TILE_GROUP_M;
    const int rows = min(tiles_m - first, TILE_GROUP_M), q = p - band * TILE_GROUP_M * tiles_n;
    m0 = (first + q % rows) * bm;
    n0 = (q / rows) * bn;
}
#endif /* SDNQ_WGMMA */

template <int NC, int BN, int STAGES, int ODT>
__global__ void __launch_bounds__((NC + 1) * 128, 1)
    i8_gemm_kernel(const __grid_constant__ CUtensorMap tma_a, const __grid_constant__ CUtensorMap tma_b,
                   const __grid_constant__ CUtensorMap tma_out, int M, int N, int K, const float *__restrict__ a_scale,
                   const void *__restrict__ b_scale, int32_t b_scale_dtype, int64_t b_scale_stride,
                   const void *__restrict__ bias) {
#ifdef SDNQ_WGMMA
    constexpr int BM = 64 * NC;
    extern __shared__ uint8_t smem_raw[];
    uint8_t *sA = (uint8_t *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
    uint8_t *sB = sA + STAGES * BM * BK;
    uint8_t *sC = sB + STAGES * BN * BK;
    uint64_t *full = (uint64_t *)(sC + BM * BN * 2);
    uint64_t *empty = full + STAGES;
    float2 *colbuf = (float2 *)(empty + STAGES);
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128;
    const int KT = (K + BK - 1) / BK;
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN, tiles = tiles_m * tiles_n;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], NC);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (wg == 0) { /* producer */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (t == 0) {
            int it = 0;
            for (int p = blockIdx.x; p < tiles; p += gridDim.x) {
                int m0, n0;
                tile_origin(p, tiles_m, tiles_n, BM, BN, m0, n0);
                for (int kt = 0; kt < KT; kt++, it++) {
                    const int s = it % STAGES;
                    if (it >= STAGES) mbar_wait(&empty[s], ((it / STAGES) - 1) & 1);
                    mbar_expect_tx(&full[s], (BM + BN) * BK);
                    tma_load(sA + s * BM * BK, &tma_a, &full[s], kt * BK, m0);
                    tma_load(sB + s * BN * BK, &tma_b, &full[s], kt * BK, n0);
                }
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(NC == 2 ? 232 : 152));
    const int c = wg - 1, w = t / 32, l = t % 32;
    const int rl = w * 16 + l / 4; /* the thread's rows in its warpgroup's 64: rl, rl + 8 */
    const int tc = c * 128 + t;    /* the column whose scale and bias this thread fetches */
    uint8_t *myC = sC + c * 64 * BN * 2;
    int it = 0;
    for (int p = blockIdx.x; p < tiles; p += gridDim.x) {
        int m0, n0;
        tile_origin(p, tiles_m, tiles_n, BM, BN, m0, n0);
        int acc[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; i++) acc[i] = 0;
        const int r0 = m0 + c * 64 + rl;
        const float sa0 = r0 < M ? __ldg(a_scale + r0) : 0.f, sa1 = r0 + 8 < M ? __ldg(a_scale + r0 + 8) : 0.f;
        float csb = 0.f, cbb = 0.f;
        if (tc < BN && n0 + tc < N) {
            csb = sdnq_load_float(b_scale, (int64_t)(n0 + tc) * b_scale_stride, b_scale_dtype);
            if (bias != NULL) cbb = ld_float<ODT>(bias, n0 + tc);
        }
        for (int kt = 0; kt < KT; kt++, it++) {
            const int s = it % STAGES;
            mbar_wait(&full[s], (it / STAGES) & 1);
            const uint32_t a0 = smem_addr(sA + s * BM * BK + c * 64 * BK), b0 = smem_addr(sB + s * BN * BK);
            fence_regs(acc);
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
            for (int kk = 0; kk < BK / 32; kk++) Wgmma<BN>::run(acc, sw128_desc(a0 + kk * 32), sw128_desc(b0 + kk * 32));
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
            fence_regs(acc);
            if (kt > 0 && t == 0) mbar_arrive(&empty[(it - 1) % STAGES]);
        }
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        fence_regs(acc);
        if (t == 0) mbar_arrive(&empty[(it - 1) % STAGES]);

        /* epilogue: acc[4j + {0,1}] is (row rl, columns 8j + 2(l%4) + {0,1}), acc[4j + {2,3}] row rl + 8 */
        if (tc < BN) colbuf[tc] = make_float2(csb, cbb);
        if (t == 0) asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); /* myC free again */
        asm volatile("bar.sync 1, %0;\n" ::"n"(NC * 128) : "memory");
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
            const int jn = 8 * j + 2 * (l % 4);
            const float2 c0 = colbuf[jn], c1 = colbuf[jn + 1];
            float v[4];
#pragma unroll
            for (int h = 0; h < 4; h++) {
                const float2 cc = h % 2 ? c1 : c0;
                v[h] = __fmul_rn(__fmul_rn((float)acc[4 * j + h], h < 2 ? sa0 : sa1), cc.x);
                if (bias != NULL) v[h] = __fadd_rn(v[h], cc.y);
            }
            /* 64-column boxes of 128-byte rows; 16-byte chunk j % 8 of a row r sits at (j % 8) ^ (r % 8) */
            uint8_t *box = myC + (j / 8) * 64 * 128;
            const int off = ((j % 8) ^ (rl % 8)) * 16 + 4 * (l % 4);
            *(uint32_t *)(box + rl * 128 + off) = pack_pair<ODT>(v[0], v[1]);
            *(uint32_t *)(box + (rl + 8) * 128 + off) = pack_pair<ODT>(v[2], v[3]);
        }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        asm volatile("bar.sync 1, %0;\n" ::"n"(NC * 128) : "memory");
        if (t == 0) {
#pragma unroll
            for (int b = 0; b < BN / 64; b++) tma_store(&tma_out, myC + b * 64 * 128, n0 + 64 * b, m0 + c * 64);
            asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
        }
    }
    if (t == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#else
    /* built without sm_90a code: the static buffer marks this variant (built_with_wgmma) */
    __shared__ uint32_t no_wgmma[4];
    asm volatile("" ::"r"(smem_addr(no_wgmma)));
#endif
}

/* ------------------------------------------------------------------------ */
/* host side                                                                 */

/* the driver's tensor-map encoder, looked up once (a concurrent first lookup stores the same pointer) */
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder(void) {
    static PFN_cuTensorMapEncodeTiled_v12000 fn;
    if (fn == NULL) {
        void *p = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) !=
                cudaSuccess ||
            q != cudaDriverEntryPointSuccess) {
            (void)cudaGetLastError();
            return NULL;
        }
        fn = (PFN_cuTensorMapEncodeTiled_v12000)p;
    }
    return fn;
}

/* a rows x cols row-major matrix (pitch = cols elements), boxes of box_cols x box_rows, 128-byte swizzle */
bool tensor_map(CUtensorMap *m, CUtensorMapDataType type, size_t elem, const void *p, int64_t rows, int64_t cols,
                int box_cols, int box_rows) {
    const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
    const cuuint64_t pitch[1] = {(cuuint64_t)cols * elem};
    const cuuint32_t box[2] = {(cuuint32_t)box_cols, (cuuint32_t)box_rows};
    const cuuint32_t estride[2] = {1, 1};
    return tensor_map_encoder()(m, type, 2, (void *)p, dims, pitch, box, estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* 1: this build holds the sm_90a kernels for the current device's architecture (cached per device) */
bool built_with_wgmma(void) {
    static int cache[64]; /* 0 unknown, 1 yes, 2 no */
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
    if (cache[dev] == 0) {
        cudaFuncAttributes fa;
        const bool ok = device_cc_major() == 9 &&
                        cudaFuncGetAttributes(&fa, i8_gemm_kernel<Big::nc, Big::bn, Big::stages, SDNQ_DT_BF16>) == cudaSuccess &&
                        fa.sharedSizeBytes == 0 && tensor_map_encoder() != NULL;
        (void)cudaGetLastError();
        cache[dev] = ok ? 1 : 2;
    }
    return cache[dev] == 1;
}

template <class C> int64_t tile_count(int64_t M, int64_t N) { return ((M + C::bm - 1) / C::bm) * ((N + C::bn - 1) / C::bn); }

template <class C> double tile_cost(int64_t M, int64_t N, int sms, double speed) {
    return (double)((tile_count<C>(M, N) + sms - 1) / sms) * C::bm * C::bn / speed;
}

template <class C, int ODT> sdnq_status launch(const sdnq_i8_gemm_desc *d, cudaStream_t s) {
    CUtensorMap ma, mb, mo;
    const CUtensorMapDataType ot = ODT == SDNQ_DT_BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    if (!tensor_map(&ma, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, d->a, d->M, d->K, BK, C::bm) ||
        !tensor_map(&mb, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, d->b, d->N, d->K, BK, C::bn) ||
        !tensor_map(&mo, ot, 2, d->out, d->M, d->N, 64, 64))
        return SDNQ_ERR_UNSUPPORTED;
    const auto kernel = &i8_gemm_kernel<C::nc, C::bn, C::stages, ODT>;
    constexpr size_t smem = C::smem;
    static int attr_set[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return SDNQ_ERR_DEVICE;
    if (!attr_set[dev]) {
        if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess)
            return launch_status();
        attr_set[dev] = 1;
    }
    const int64_t tiles = tile_count<C>(d->M, d->N);
    const unsigned grid = (unsigned)(tiles < device_sms() ? tiles : device_sms());
    kernel<<<grid, (C::nc + 1) * 128, smem, s>>>(ma, mb, mo, (int)d->M, (int)d->N, (int)d->K, d->a_scale, d->b_scale,
                                                d->b_scale_dtype, d->b_scale_stride, d->bias);
    return launch_status();
}

#endif /* !SDNQ_CUDA_EMU */

}  // namespace

extern "C" int sdnq_cuda_i8_gemm_available(void) {
#ifdef SDNQ_CUDA_EMU
    return 0;
#else
    return built_with_wgmma() ? 1 : 0;
#endif
}

extern "C" sdnq_status sdnq_cuda_i8_gemm(const sdnq_i8_gemm_desc *d, void *stream) {
    if (d == NULL) return SDNQ_ERR_NULL;
    const sdnq_status st = check(d);
    if (st != SDNQ_OK || d->M == 0 || d->N == 0) return st;
#ifdef SDNQ_CUDA_EMU
    (void)stream;
    return SDNQ_ERR_UNSUPPORTED; /* TMA and wgmma have no emulation */
#else
    if (!built_with_wgmma()) return SDNQ_ERR_UNSUPPORTED;
    const cudaStream_t s = as_stream(stream);
    const int sms = device_sms();
    if (tile_count<Small>(d->M, d->N) > INT32_MAX) return SDNQ_ERR_UNSUPPORTED; /* int32 tile indices */
    /* waves of tiles over the multiprocessors times the tile's area, the small tile's weighted by
     * 1 / 0.9: it stages more bytes per multiply-add (a tuning weight; bench_gpu's GEMM table
     * shows the outcome per shape) */
    const bool big = tile_cost<Big>(d->M, d->N, sms, 1.0) <= tile_cost<Small>(d->M, d->N, sms, 0.9);
    if (d->out_dtype == SDNQ_DT_BF16)
        return big ? launch<Big, SDNQ_DT_BF16>(d, s) : launch<Small, SDNQ_DT_BF16>(d, s);
    return big ? launch<Big, SDNQ_DT_F16>(d, s) : launch<Small, SDNQ_DT_F16>(d, s);
#endif
}
