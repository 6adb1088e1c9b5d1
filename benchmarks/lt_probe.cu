// benchmarks/lt_probe.cu - what cuBLASLt offers the W8A8 paths on this GPU, standalone (no torch).
//
// For the five Flux shapes at M = 4608 (and the scaled forms at M = 1024): bf16, int8 with int32
// output (what w8a8_int8 uses), int8 with bf16 / fp16 / fp32 / int8 output, with outer-vector
// scales or a per-row alpha vector, and fp8 with outer-vector scales, bias and fast accumulation.
// "algos" is the number of algorithms the heuristic returned (negative: -cublasStatus_t, e.g. -15
// = CUBLAS_STATUS_NOT_SUPPORTED), "ms" the median of 15 calls after a 256 MiB read that evicts L2
// (-1: not run). Then the int8 GEMM with int32 output split along M into 1-6 pieces, each followed
// by an epilogue kernel into bf16, to see whether an L2-resident int32 output pays.
//
//   P=$(python -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
//   nvcc -O2 -std=c++17 -arch=sm_90a -I$P/include benchmarks/lt_probe.cu -o lt_probe \
//        -L$P/lib -l:libcublasLt.so.13 && LD_LIBRARY_PATH=$P/lib ./lt_probe
//
// Result on an H200 (2026-11-28): benchmarks/results/lt-probe-h200-2026-11-28.txt.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include <algorithm>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("cuda %s @%d\n", cudaGetErrorString(e_), __LINE__); exit(1);} } while (0)

static cublasLtHandle_t H;
static void *ws; static size_t WS = 32u << 20;
static float *flushbuf; static float *flushout;

__global__ void flush_read(const float4 *p, size_t n, float *out) {
    float s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float4 v = p[i]; s += v.x + v.y + v.z + v.w;
    }
    if (s == 12345.f) *out = s;
}
static void flush() { flush_read<<<1024, 256>>>((const float4 *)flushbuf, (256u << 20) / 16, flushout); }

__global__ void epi(const int *acc, int M, int N, const float *as, const float *bs, const __nv_bfloat16 *bias,
                    __nv_bfloat16 *out, int ldo) {
    int n8 = N / 8;
    for (int m = blockIdx.y; m < M; m += gridDim.y) {
        float sa = as[m];
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < n8; j += gridDim.x * blockDim.x) {
            const int4 *src = (const int4 *)(acc + (size_t)m * N + 8 * j);
            int4 u0 = src[0], u1 = src[1];
            int a[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
            __align__(16) __nv_bfloat16 r[8];
            for (int k = 0; k < 8; k++) r[k] = __float2bfloat16((float)a[k] * sa * bs[8 * j + k] + __bfloat162float(bias[8 * j + k]));
            *(int4 *)(out + (size_t)m * ldo + 8 * j) = *(int4 *)r;
        }
    }
}

struct Cfg {
    const char *name;
    cublasComputeType_t ct; cudaDataType_t st, tin, tout;
    int outer;    // outer-vec scale
    int bias;     // bias epilogue
    int fast;     // fp8 fast accum
    int alphavec; // ALPHA_DEVICE_VECTOR_BETA_ZERO
};

// returns ms median or -1 (no algo) / -2 (matmul failed)
static float run(const Cfg &c, int M, int N, int K, void *A, void *B, void *D, float *sa, float *sb, void *bias,
                 int reps, int *nalgo) {
    cublasLtMatmulDesc_t op; cublasLtMatrixLayout_t la, lb, ld; cublasLtMatmulPreference_t pref;
    if (cublasLtMatmulDescCreate(&op, c.ct, c.st) != CUBLAS_STATUS_SUCCESS) return -3;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (c.fast) { int8_t f = 1; cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &f, 1); }
    if (c.outer) {
        int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof mode);
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof mode);
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sb, sizeof sb);
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sa, sizeof sa);
    }
    if (c.alphavec) {
        int32_t pm = CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO;
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof pm);
    }
    if (c.bias) {
        cublasLtEpilogue_t e = CUBLASLT_EPILOGUE_BIAS; cudaDataType_t bt = c.tout == CUDA_R_32F ? CUDA_R_32F : c.tout;
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof e);
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt);
    }
    cublasLtMatrixLayoutCreate(&la, c.tin, K, N, K);
    cublasLtMatrixLayoutCreate(&lb, c.tin, K, M, K);
    cublasLtMatrixLayoutCreate(&ld, c.tout, N, M, N);
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &WS, sizeof WS);
    cublasLtMatmulHeuristicResult_t res[8]; int found = 0;
    cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(H, op, la, lb, ld, ld, pref, 8, res, &found);
    *nalgo = hs == CUBLAS_STATUS_SUCCESS ? found : -(int)hs;
    float best = -1;
    if (hs == CUBLAS_STATUS_SUCCESS && found > 0) {
        // alpha: scalar one (host) or device vector of ones over D's rows (N)
        static float *ones = NULL; static int onesn = 0;
        if (c.alphavec && onesn < N) { if (ones) cudaFree(ones); CK(cudaMalloc(&ones, N * 4)); std::vector<float> h(N, 1.f); cudaMemcpy(ones, h.data(), N * 4, cudaMemcpyHostToDevice); onesn = N; }
        int32_t ione = 1, izero = 0; float fone = 1, fzero = 0;
        const void *alpha = c.alphavec ? (const void *)ones : (c.st == CUDA_R_32I ? (const void *)&ione : (const void *)&fone);
        const void *beta = c.st == CUDA_R_32I ? (const void *)&izero : (const void *)&fzero;
        cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
        for (int w = 0; w < 3; w++)
            if (cublasLtMatmul(H, op, alpha, B, la, A, lb, beta, D, ld, D, ld, &res[0].algo, ws, WS, 0) != CUBLAS_STATUS_SUCCESS) { best = -2; goto out; }
        {
        std::vector<float> t;
        for (int r = 0; r < reps; r++) {
            flush();
            cudaEventRecord(e0);
            cublasLtMatmul(H, op, alpha, B, la, A, lb, beta, D, ld, D, ld, &res[0].algo, ws, WS, 0);
            cudaEventRecord(e1); cudaEventSynchronize(e1);
            float ms; cudaEventElapsedTime(&ms, e0, e1); t.push_back(ms);
        }
        std::sort(t.begin(), t.end()); best = t[t.size() / 2];
        }
        out:
        cudaEventDestroy(e0); cudaEventDestroy(e1);
        CK(cudaDeviceSynchronize());
    }
    cublasLtMatmulPreferenceDestroy(pref); cublasLtMatrixLayoutDestroy(ld); cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(la); cublasLtMatmulDescDestroy(op);
    return best;
}

// int8 -> int32 GEMM in `chunks` pieces over M, each followed by the epilogue into bf16 out
static float chunked(int M, int N, int K, int chunks, int8_t *A, int8_t *B, int *acc, float *sa, float *sb,
                     __nv_bfloat16 *bias, __nv_bfloat16 *out, int reps) {
    int Mc = (M + chunks - 1) / chunks;
    std::vector<cublasLtMatmulDesc_t> ops; std::vector<cublasLtMatrixLayout_t> lbs, lds; std::vector<cublasLtMatmulAlgo_t> algos;
    cublasLtMatrixLayout_t la; cublasLtMatrixLayoutCreate(&la, CUDA_R_8I, K, N, K);
    cublasLtMatmulPreference_t pref; cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &WS, sizeof WS);
    std::vector<int> rows;
    for (int c = 0; c < chunks; c++) {
        int m0 = c * Mc, m = std::min(Mc, M - m0); if (m <= 0) break;
        rows.push_back(m);
        cublasLtMatmulDesc_t op; cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32I, CUDA_R_32I);
        cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
        cublasLtMatrixLayout_t lb, ld; cublasLtMatrixLayoutCreate(&lb, CUDA_R_8I, K, m, K); cublasLtMatrixLayoutCreate(&ld, CUDA_R_32I, N, m, N);
        cublasLtMatmulHeuristicResult_t res; int found = 0;
        cublasLtMatmulAlgoGetHeuristic(H, op, la, lb, ld, ld, pref, 1, &res, &found);
        if (!found) return -1;
        ops.push_back(op); lbs.push_back(lb); lds.push_back(ld); algos.push_back(res.algo);
    }
    int32_t ione = 1, izero = 0;
    auto once = [&]() {
        int m0 = 0;
        for (size_t c = 0; c < ops.size(); c++) {
            int *accc = acc; /* every piece reuses the front of the buffer */
            cublasLtMatmul(H, ops[c], &ione, B, la, A + (size_t)m0 * K, lbs[c], &izero, accc, lds[c], accc, lds[c], &algos[c], ws, WS, 0);
            dim3 g((N / 8 + 255) / 256, std::min(rows[c], 65535));
            epi<<<g, 256>>>(accc, rows[c], N, sa + m0, sb, bias, out + (size_t)m0 * N, N);
            m0 += rows[c];
        }
    };
    for (int w = 0; w < 3; w++) once();
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    std::vector<float> t;
    for (int r = 0; r < reps; r++) {
        flush(); cudaEventRecord(e0); once(); cudaEventRecord(e1); cudaEventSynchronize(e1);
        float ms; cudaEventElapsedTime(&ms, e0, e1); t.push_back(ms);
    }
    CK(cudaDeviceSynchronize());
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

int main() {
    cublasLtCreate(&H);
    CK(cudaMalloc(&ws, WS)); CK(cudaMalloc(&flushbuf, 256u << 20)); CK(cudaMalloc(&flushout, 4));
    cudaMemset(flushbuf, 0, 256u << 20);
    printf("cublasLt version %zu\n", cublasLtGetVersion());
    const int shapes[5][2] = {{3072, 3072}, {9216, 3072}, {12288, 3072}, {3072, 12288}, {3072, 15360}};
    const int Ms[2] = {4608, 1024};
    size_t maxA = 16384ull * 15360, maxB = 12288ull * 15360, maxD = 16384ull * 12288;
    void *A, *B, *D, *bias; float *sa, *sb;
    CK(cudaMalloc(&A, maxA * 2)); CK(cudaMalloc(&B, maxB * 2)); CK(cudaMalloc(&D, maxD * 4));
    CK(cudaMalloc(&bias, 16384 * 4)); CK(cudaMalloc(&sa, 16384 * 4)); CK(cudaMalloc(&sb, 16384 * 4));
    cudaMemset(A, 0x11, maxA * 2); cudaMemset(B, 0x12, maxB * 2); cudaMemset(bias, 0, 16384 * 4);
    { std::vector<float> h(16384, 0.01f); cudaMemcpy(sa, h.data(), 16384 * 4, cudaMemcpyHostToDevice); cudaMemcpy(sb, h.data(), 16384 * 4, cudaMemcpyHostToDevice); }
    const Cfg cfgs[] = {
        {"bf16", CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, 0, 0, 0, 0},
        {"bf16+bias", CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, 0, 1, 0, 0},
        {"i8->i32", CUBLAS_COMPUTE_32I, CUDA_R_32I, CUDA_R_8I, CUDA_R_32I, 0, 0, 0, 0},
        {"i8->bf16 s32f", CUBLAS_COMPUTE_32I, CUDA_R_32F, CUDA_R_8I, CUDA_R_16BF, 0, 0, 0, 0},
        {"i8->bf16 outer", CUBLAS_COMPUTE_32I, CUDA_R_32F, CUDA_R_8I, CUDA_R_16BF, 1, 0, 0, 0},
        {"i8->bf16 outer+bias", CUBLAS_COMPUTE_32I, CUDA_R_32F, CUDA_R_8I, CUDA_R_16BF, 1, 1, 0, 0},
        {"i8->f32 s32f", CUBLAS_COMPUTE_32I, CUDA_R_32F, CUDA_R_8I, CUDA_R_32F, 0, 0, 0, 0},
        {"i8->f16 s32f", CUBLAS_COMPUTE_32I, CUDA_R_32F, CUDA_R_8I, CUDA_R_16F, 0, 0, 0, 0},
        {"i8->i8 alphavec", CUBLAS_COMPUTE_32I, CUDA_R_32F, CUDA_R_8I, CUDA_R_8I, 0, 0, 0, 1},
        {"i8->bf16 alphavec", CUBLAS_COMPUTE_32I, CUDA_R_32F, CUDA_R_8I, CUDA_R_16BF, 0, 0, 0, 1},
        {"i8->i32 32I_PED", CUBLAS_COMPUTE_32I_PEDANTIC, CUDA_R_32I, CUDA_R_8I, CUDA_R_32I, 0, 0, 0, 0},
        {"fp8->bf16", CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_8F_E4M3, CUDA_R_16BF, 0, 0, 0, 0},
        {"fp8->bf16 outer+bias", CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_8F_E4M3, CUDA_R_16BF, 1, 1, 0, 0},
        {"fp8->bf16 outer+bias fast", CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_8F_E4M3, CUDA_R_16BF, 1, 1, 1, 0},
        {"fp8->bf16 outer", CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_8F_E4M3, CUDA_R_16BF, 1, 0, 0, 0},
    };
    for (int mi = 0; mi < 2; mi++)
        for (int s = 0; s < 5; s++) {
            int N = shapes[s][0], K = shapes[s][1], M = Ms[mi];
            for (const Cfg &c : cfgs) {
                if (mi == 1 && strncmp(c.name, "bf16", 4) && !strstr(c.name, "outer")) continue;
                int na = 0;
                float ms = run(c, M, N, K, A, B, D, sa, sb, bias, 15, &na);
                printf("M=%d N=%d K=%d %-28s algos=%d ms=%.4f\n", M, N, K, c.name, na, ms);
            }
            if (mi == 0)
                for (int ch : {1, 2, 3, 4, 6})
                    printf("M=%d N=%d K=%d chunked i8->i32+epi x%d ms=%.4f\n", M, N, K, ch,
                           chunked(M, N, K, ch, (int8_t *)A, (int8_t *)B, (int *)D, sa, sb, (__nv_bfloat16 *)bias,
                                   (__nv_bfloat16 *)((char *)D + maxD * 2), 15));
            fflush(stdout);
        }
    return 0;
}
