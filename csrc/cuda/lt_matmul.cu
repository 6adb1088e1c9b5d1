/*
 * lt_matmul.cu - the GEMM of the W8A8 linear through cuBLASLt (no kernel of
 * our own: the .cuh half of this op is w8a8.cuh's epilogue).
 *
 * Row-major d[M, N] = a[M, K] @ b^T is the column-major product
 * D'(N x M) = op(B')(N x K) * A'(K x M): the weight is cuBLASLt's A (a
 * [N, K] row-major weight is a K x N column-major matrix used transposed,
 * the "TN" layout int8 and fp8 tensor-core kernels want; a [K, N] weight,
 * sdnq's matmul-ready storage, is used untransposed where cuBLASLt allows),
 * the activations its B. int8: int32 accumulation and int32 output (the
 * caller applies the scales with sdnq_cuda_scale_epilogue); fp8 e4m3: fp32
 * accumulation, bf16/fp16/fp32 output, optionally with the per-row/per-token
 * scales applied by cuBLASLt's outer-vector scaling mode and the bias by its
 * bias epilogue.
 *
 * The heuristic query is the expensive part (tens of microseconds); its
 * answer is kept per problem (sizes, dtypes, layout, pointer alignments,
 * workspace) in a small round-robin cache inside the context. Descriptors are
 * rebuilt per call (host-side only). Nothing here synchronizes or allocates
 * device memory: the workspace is the caller's.
 */
#include <cublasLt.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

using namespace sdnq_cuda;

namespace {

struct PlanKey {
    int64_t M, N, K, workspace;
    int32_t in_dtype, d_dtype, b_kn, scaled, bias, fast_accum;
    uint32_t align_a, align_b, align_d;
};

struct Plan {
    PlanKey key;
    int32_t used;      /* slot holds a heuristic answer                  */
    int32_t found;     /* the answer: an algorithm, or none exists       */
    cublasLtMatmulAlgo_t algo;
};

constexpr int PLAN_SLOTS = 64;

/* largest power of two (<= 256) dividing the address */
uint32_t ptr_align(const void *p) {
    uint32_t a = 256;
    while (a > 1 && (uintptr_t)p % a != 0) a >>= 1;
    return a;
}

sdnq_status lt_status(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return SDNQ_OK;
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_INVALID_VALUE:
    case CUBLAS_STATUS_ARCH_MISMATCH: return SDNQ_ERR_UNSUPPORTED;
    default: return SDNQ_ERR_DEVICE;
    }
}

cudaDataType_t cuda_type(int32_t dt) {
    switch (dt) {
    case SDNQ_DT_I8: return CUDA_R_8I;
    case SDNQ_DT_I32: return CUDA_R_32I;
    case SDNQ_DT_F32: return CUDA_R_32F;
    case SDNQ_DT_BF16: return CUDA_R_16BF;
    case SDNQ_DT_F16: return CUDA_R_16F;
    default: return CUDA_R_8F_E4M3;
    }
}

/* descriptors of one call, destroyed together */
struct LtCall {
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    ~LtCall() {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (ld) cublasLtMatrixLayoutDestroy(ld);
        if (lb) cublasLtMatrixLayoutDestroy(lb);
        if (la) cublasLtMatrixLayoutDestroy(la);
        if (op) cublasLtMatmulDescDestroy(op);
    }
};

sdnq_status check(const sdnq_lt_matmul_desc *d) {
    const bool fp8 = d->in_dtype == SDNQ_DT_F8_E4M3FN;
    if (d->in_dtype != SDNQ_DT_I8 && !fp8) return SDNQ_ERR_DTYPE;
    if (!fp8 && d->d_dtype != SDNQ_DT_I32) return SDNQ_ERR_DTYPE;
    if (fp8 && !sdnq_is_arith_dtype(d->d_dtype)) return SDNQ_ERR_DTYPE;
    if (d->M < 0 || d->N < 0 || d->K < 0 || d->workspace_bytes < 0) return SDNQ_ERR_SIZE;
    if (d->M > INT32_MAX || d->N > INT32_MAX || d->K > INT32_MAX) return SDNQ_ERR_UNSUPPORTED;
    const int64_t na = sdnq_mul64(d->M, d->K), nb = sdnq_mul64(d->N, d->K), nd = sdnq_mul64(d->M, d->N);
    if (na < 0 || nb < 0 || nd < 0) return SDNQ_ERR_OVERFLOW;
    if (d->a_numel < na || d->b_numel < nb || d->d_numel < nd) return SDNQ_ERR_RANGE;
    if ((d->a_scale == NULL) != (d->b_scale == NULL)) return SDNQ_ERR_NULL;
    if (!fp8 && (d->a_scale != NULL || d->bias != NULL)) return SDNQ_ERR_UNSUPPORTED;
    if (d->bias != NULL && d->d_dtype == SDNQ_DT_F32) return SDNQ_ERR_UNSUPPORTED;
    if (nd == 0) return SDNQ_OK;
    if (d->K == 0) return SDNQ_ERR_UNSUPPORTED; /* nothing to multiply: the caller fills d */
    if (d->a == NULL || d->b == NULL || d->d == NULL || (d->workspace_bytes > 0 && d->workspace == NULL))
        return SDNQ_ERR_NULL;
    return SDNQ_OK;
}

}  // namespace

struct sdnq_cuda_lt {
    cublasLtHandle_t handle;
    Plan plans[PLAN_SLOTS];
    int next;
};

extern "C" sdnq_status sdnq_cuda_lt_create(sdnq_cuda_lt **ctx) {
    if (ctx == NULL) return SDNQ_ERR_NULL;
    *ctx = NULL;
    sdnq_cuda_lt *c = (sdnq_cuda_lt *)calloc(1, sizeof *c);
    if (c == NULL) return SDNQ_ERR_DEVICE;
    cublasStatus_t s = cublasLtCreate(&c->handle);
    if (s != CUBLAS_STATUS_SUCCESS) {
        free(c);
        return SDNQ_ERR_DEVICE;
    }
    *ctx = c;
    return SDNQ_OK;
}

extern "C" void sdnq_cuda_lt_destroy(sdnq_cuda_lt *ctx) {
    if (ctx == NULL) return;
    cublasLtDestroy(ctx->handle);
    free(ctx);
}

#define LT_TRY(call)                                                  \
    do {                                                              \
        cublasStatus_t s_ = (call);                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS) return lt_status(s_);        \
    } while (0)

extern "C" sdnq_status sdnq_cuda_lt_matmul(sdnq_cuda_lt *ctx, const sdnq_lt_matmul_desc *d, void *stream) {
    if (ctx == NULL || d == NULL) return SDNQ_ERR_NULL;
    sdnq_status st = check(d);
    if (st != SDNQ_OK || d->M == 0 || d->N == 0) return st;
    const bool fp8 = d->in_dtype == SDNQ_DT_F8_E4M3FN;
    const bool scaled = d->a_scale != NULL;

    LtCall call;
    LT_TRY(cublasLtMatmulDescCreate(&call.op, fp8 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32I,
                                    fp8 ? CUDA_R_32F : CUDA_R_32I));
    const cublasOperation_t opa = d->b_kn ? CUBLAS_OP_N : CUBLAS_OP_T, opb = CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    LT_TRY(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (fp8) {
        const int8_t fast = d->fast_accum ? 1 : 0;
        LT_TRY(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
    }
    if (scaled) { /* cuBLASLt's A is the weight: its scale runs over our N; B's over our M */
        const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        LT_TRY(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof mode));
        LT_TRY(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof mode));
        const void *sa = d->b_scale, *sb = d->a_scale;
        LT_TRY(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof sa));
        LT_TRY(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof sb));
    }
    if (d->bias != NULL) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        const int32_t bias_type = cuda_type(d->d_dtype);
        LT_TRY(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        LT_TRY(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &d->bias, sizeof d->bias));
        LT_TRY(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                              sizeof bias_type));
    }
    const cudaDataType_t tin = cuda_type(d->in_dtype), tout = cuda_type(d->d_dtype);
    if (d->b_kn)
        LT_TRY(cublasLtMatrixLayoutCreate(&call.la, tin, (uint64_t)d->N, (uint64_t)d->K, d->N));
    else
        LT_TRY(cublasLtMatrixLayoutCreate(&call.la, tin, (uint64_t)d->K, (uint64_t)d->N, d->K));
    LT_TRY(cublasLtMatrixLayoutCreate(&call.lb, tin, (uint64_t)d->K, (uint64_t)d->M, d->K));
    LT_TRY(cublasLtMatrixLayoutCreate(&call.ld, tout, (uint64_t)d->N, (uint64_t)d->M, d->N));

    PlanKey key;
    memset(&key, 0, sizeof key);
    key.M = d->M;
    key.N = d->N;
    key.K = d->K;
    key.workspace = d->workspace_bytes;
    key.in_dtype = d->in_dtype;
    key.d_dtype = d->d_dtype;
    key.b_kn = d->b_kn != 0;
    key.scaled = scaled;
    key.bias = d->bias != NULL;
    key.fast_accum = fp8 && d->fast_accum != 0;
    key.align_a = ptr_align(d->b); /* cuBLASLt's A: the weight */
    key.align_b = ptr_align(d->a);
    key.align_d = ptr_align(d->d);
    Plan *plan = NULL;
    for (int i = 0; i < PLAN_SLOTS; i++)
        if (ctx->plans[i].used && memcmp(&ctx->plans[i].key, &key, sizeof key) == 0) {
            plan = &ctx->plans[i];
            break;
        }
    if (plan == NULL) {
        LT_TRY(cublasLtMatmulPreferenceCreate(&call.pref));
        const uint64_t ws = (uint64_t)d->workspace_bytes;
        LT_TRY(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                    sizeof ws));
        const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        const uint32_t align_val[4] = {key.align_a, key.align_b, key.align_d, key.align_d};
        for (int i = 0; i < 4; i++)
            LT_TRY(cublasLtMatmulPreferenceSetAttribute(call.pref, align_attr[i], &align_val[i], sizeof align_val[i]));
        cublasLtMatmulHeuristicResult_t res;
        memset(&res, 0, sizeof res);
        int found = 0;
        cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(ctx->handle, call.op, call.la, call.lb, call.ld, call.ld,
                                                           call.pref, 1, &res, &found);
        if (hs != CUBLAS_STATUS_SUCCESS && hs != CUBLAS_STATUS_NOT_SUPPORTED) return lt_status(hs);
        plan = &ctx->plans[ctx->next];
        ctx->next = (ctx->next + 1) % PLAN_SLOTS;
        plan->key = key;
        plan->used = 1;
        plan->found = hs == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS;
        plan->algo = res.algo;
    }
    if (!plan->found) return SDNQ_ERR_UNSUPPORTED;

    const int32_t ione = 1, izero = 0;
    const float fone = 1.0f, fzero = 0.0f;
    const void *alpha = fp8 ? (const void *)&fone : (const void *)&ione;
    const void *beta = fp8 ? (const void *)&fzero : (const void *)&izero;
    cublasStatus_t s = cublasLtMatmul(ctx->handle, call.op, alpha, d->b, call.la, d->a, call.lb, beta, d->d, call.ld,
                                      d->d, call.ld, &plan->algo, d->workspace, (size_t)d->workspace_bytes,
                                      as_stream(stream));
    if (s != CUBLAS_STATUS_SUCCESS) {
        plan->found = 0; /* e.g. a scale mode refused only at matmul time: don't retry it */
        return lt_status(s);
    }
    return launch_status();
}
