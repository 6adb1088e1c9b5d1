/*
 * sdnq_cuda.h - public C API of comfy_sdnq's CUDA kernels.
 *
 * The same contract as sdnq.h, on device memory: callers pass device
 * pointers, element counts, strides and dtype ids, plus the CUDA stream to
 * launch on (`void *stream` is a cudaStream_t; NULL is the legacy default
 * stream). Every routine validates its arguments on the host before
 * launching and returns a status; it never prints, exits, synchronizes the
 * host, or allocates device memory (cuBLASLt's workspace is passed in). So
 * every launcher can be captured into a CUDA graph. SDNQ_ERR_DEVICE reports
 * a failed launch (cudaGetLastError right after it); errors of the kernel
 * itself surface asynchronously, as for any CUDA work.
 *
 * Pointers must be valid device pointers for the stated element counts;
 * "_numel" arguments bound every index the kernels may touch, exactly as in
 * the CPU core. Data pointers need the alignment of their element type.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "sdnq/sdnq.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* dense steps of dequantization                                            */

/* sdnq_dequantize on device: same descriptor, same bits (every weight type,
 * codebooks, strided scale/zero-point/output, transposed output). */
SDNQ_API sdnq_status sdnq_cuda_dequantize(const sdnq_dequant_desc *d, void *stream);

/* sdnq_cuda_dequantize, then svd (whose w must be d's output: same pointer,
 * dtype and element count, row-major [rows, cols]): the dequantizer's
 * elementwise stage and SVD correction. One fused kernel where it applies
 * (rank <= 32, <= 8-bit codes, no codebook, output in code order with inner ==
 * 1 and groups of a multiple of 8 codes, cols a multiple of 8, 16-byte aligned
 * codes and output, BF16/F16 output with up and down in that dtype): the
 * rank-r product on the tensor cores, added in fp32 to
 * the elementwise result rounded to the output dtype, one more rounding - the
 * two steps' operations, the rank sum in another order. Otherwise the two
 * launches in sequence. */
SDNQ_API sdnq_status sdnq_cuda_dequantize_svd(const sdnq_dequant_desc *d, const sdnq_svd_desc *svd, void *stream);

/* The weight that sdnq_cuda_dequantize would write in d->out_dtype (BF16/F16), re-quantized per row
 * to int8 as quantize_rows does, in one pass that never writes that weight: q[r, c] =
 * clamp(round_half_even(w[r, c] / row_scale[r]), -128, 127) (0 where row_scale[r] is 0), the
 * division as quantize_rows divides. With derive_scales, row_scale[r] is written first: the bound
 * of |w| over row r that its groups' ranges give, divided by 127 (each group's values at the lowest
 * and the highest code, rounded to out_dtype: dequantization is monotonic in the code, so this is
 * the row's amax - quantize_rows' scale - wherever each row holds a group's extreme code, and never
 * below it); otherwise row_scale is read (quantize_rows' own scales of w give its bits). d's out
 * pointer, size and strides are ignored (its dtype is w's rounding); q is [rows, cols] row-major,
 * rows x cols the weight's elements in code order. 4- and 8-bit integer codes through the grouped
 * kernel only: otherwise (other widths and families, codebooks, groups not of whole 8-code units,
 * cols % 8, codes or q not 16-byte aligned, an F32 rounding) SDNQ_ERR_UNSUPPORTED. */
typedef struct sdnq_q8_desc {
    int8_t *q;
    int64_t q_numel;
    int64_t rows, cols;
    float *row_scale;
    int64_t row_scale_numel;
    int32_t derive_scales;
} sdnq_q8_desc;

SDNQ_API sdnq_status sdnq_cuda_dequantize_q8(const sdnq_dequant_desc *d, const sdnq_q8_desc *q, void *stream);

/* sdnq_svd_add on device: w[r, c] += sum_k up[r, k] * down[k, c], fp32
 * products and sums in increasing k (the CPU core's order), one rounding. */
SDNQ_API sdnq_status sdnq_cuda_svd_add(const sdnq_svd_desc *d, void *stream);

/* sdnq_hadamard on device: rows of a contiguous [rows, cols] matrix, in
 * blocks of h columns, become block @ H (butterfly in fp32, the CPU fast
 * path's order), in place. Also rotates activations (x @ H). */
SDNQ_API sdnq_status sdnq_cuda_hadamard(void *w, int32_t w_dtype, int64_t rows, int64_t cols, int64_t w_numel,
                                        int64_t h, int32_t kind, void *stream);

/* ------------------------------------------------------------------------ */
/* small-M linear: y[M, N] = x[M, K] @ W^T (+ bias), W read compressed once */

typedef struct sdnq_gemv_desc {
    int32_t type;                 /* weight type id                                     */
    int64_t M, N, K;              /* 1 <= M <= SDNQ_GEMV_MAX_M                          */
    const void *x;                /* [M, K] at m*ldx + k; BF16 or F16                    */
    int32_t x_dtype;              /* also the dtype of y and bias                       */
    int64_t x_numel, ldx;
    void *y;                      /* [M, N] at m*ldy + n                                */
    int64_t y_numel, ldy;
    const void *bias;             /* [N] or NULL                                        */
    int64_t bias_numel;
    /* W[n, k] is code e = n*K + k of the [outer, red, 1] index space of sdnq.h:
     * group e / red, red a divisor of K (row-wise: red = K; groups of g: red = g)
     * or red = N*K (tensor-wise, one group). */
    const void *codes;
    int64_t codes_bytes, red;
    const void *scale;            /* group o at o*scale_stride                          */
    int32_t scale_dtype;          /* F32, BF16 or F16                                   */
    int64_t scale_numel, scale_stride;
    const void *zero_point;       /* unsigned families; scale_dtype                    */
    int64_t zp_numel, zp_stride;
    /* optional SVD branch (rank > 0): y += (x @ down^T) @ up^T in fp32 before the
     * rounding. up[n, j] at n*up_stride[0] + j*up_stride[1], down[j, k] at
     * j*down_stride[0] + k*down_stride[1] (F32, BF16 or F16); lowrank is a caller
     * scratch (16-byte aligned) for the partial sums of x @ down^T over k ranges:
     * at least SDNQ_GEMV_LOWRANK_FLOATS(M, rank, 1) floats, up to
     * SDNQ_GEMV_LOWRANK_FLOATS(M, rank, SDNQ_GEMV_LOWRANK_SPLITS) for the best split
     * (it uses as many ranges as fit). */
    int64_t rank;
    const void *up;
    int32_t up_dtype;
    int64_t up_numel, up_stride[2];
    const void *down;
    int32_t down_dtype;
    int64_t down_numel, down_stride[2];
    float *lowrank;
    int64_t lowrank_numel;
    /* caller scratch for the split-K partial sums, disjoint from lowrank: at
     * least SDNQ_GEMV_WORK_FLOATS(M, N, 1) floats; with
     * SDNQ_GEMV_WORK_FLOATS(M, N, 2 * multiprocessors) the kernel runs as many
     * blocks as the GPU holds at once (it runs as many as the scratch allows) */
    float *work;
    int64_t work_numel;
} sdnq_gemv_desc;

#define SDNQ_GEMV_MAX_M 16
#define SDNQ_GEMV_LOWRANK_SPLITS 8
/* splits x (1 or 2 token tiles) x (16-rank steps) fragments of 128 floats */
#define SDNQ_GEMV_LOWRANK_FLOATS(M, rank, splits) \
    ((int64_t)(splits) * ((M) > 8 ? 2 : 1) * (((int64_t)(rank) + 15) / 16) * 128)
/* (blocks + row groups of 128 rows) segments of 128 rows x (8 or 16) tokens */
#define SDNQ_GEMV_WORK_FLOATS(M, N, blocks) \
    (((int64_t)(blocks) + ((int64_t)(N) + 127) / 128) * 128 * ((M) > 8 ? 16 : 8))

/* SDNQ_OK when sdnq_cuda_gemv takes this descriptor (type, sizes and
 * alignment the fused kernel handles), else the status sdnq_cuda_gemv would
 * return; callers fall back to dequantize + GEMM. Host only, launches nothing. */
SDNQ_API sdnq_status sdnq_cuda_gemv_supported(const sdnq_gemv_desc *d);
/* The work_numel that lets sdnq_cuda_gemv run its full grid on the current
 * device: SDNQ_GEMV_WORK_FLOATS(M, N, 2 * multiprocessors); -1 for sizes out
 * of range. Host only. */
SDNQ_API int64_t sdnq_cuda_gemv_work_floats(int64_t M, int64_t N);
/* Dequantizes W in registers (the values sdnq_cuda_dequantize writes for
 * out dtype x_dtype) and multiplies on the tensor cores, fp32 accumulation.
 * K is split over the blocks (partial sums in work); a second kernel sums each
 * tile's parts in block order and adds bias and SVD branch. With rank > 0, the
 * low-rank product is launched first (as partial sums over k ranges, then their
 * sum in split order when there are several); on sm_90+ each launch is a
 * programmatic dependent of the one before, so the GEMV streams its weight
 * while they run. */
SDNQ_API sdnq_status sdnq_cuda_gemv(const sdnq_gemv_desc *d, void *stream);

/* ------------------------------------------------------------------------ */
/* W8A8: per-row quantization, cuBLASLt int8/fp8 GEMM, scale epilogue       */

/* Each row of x [rows, cols] (at r*ldx + c; F32, BF16 or F16) -> q [rows, cols]
 * contiguous and scale[rows] (fp32), as sdnq quantizes activations per token:
 * I8: s = amax/127, q = clamp(round_half_even(x / s), -128, 127);
 * F8_E4M3FN: s = amax/448, q = fp8(clamp(x / s, -448, 448)), NaN -> 0.
 * A row of zeros gets s = 0 and q = 0. */
SDNQ_API sdnq_status sdnq_cuda_quantize_rows(const void *x, int32_t x_dtype, int64_t rows, int64_t cols, int64_t ldx,
                                             int64_t x_numel, void *q, int32_t q_dtype, int64_t q_numel,
                                             float *scale, int64_t scale_numel, void *stream);

/* out[m, n] = acc[m, n] * a_scale[m] * b_scale[n*b_scale_stride] (+ bias[n]),
 * acc I32 or F32 [M, N] contiguous, a_scale fp32 [M], b_scale F32/BF16/F16,
 * bias [N] in out_dtype or NULL, out F32/BF16/F16 [M, N] contiguous. */
typedef struct sdnq_epilogue_desc {
    int64_t M, N;
    const void *acc;
    int32_t acc_dtype;
    int64_t acc_numel;
    const float *a_scale;
    int64_t a_scale_numel;
    const void *b_scale;
    int32_t b_scale_dtype;
    int64_t b_scale_numel, b_scale_stride;
    const void *bias;
    int64_t bias_numel;
    void *out;
    int32_t out_dtype;
    int64_t out_numel;
} sdnq_epilogue_desc;

SDNQ_API sdnq_status sdnq_cuda_scale_epilogue(const sdnq_epilogue_desc *d, void *stream);

/* out[m, n] = (float)(a[m, :] . b[n, :]) * a_scale[m] * b_scale[n*b_scale_stride] (+ bias[n]):
 * the int8 GEMM with the scale epilogue above fused (the same bits as cuBLASLt's int32 product
 * through sdnq_cuda_scale_epilogue). a int8 [M, K] and b int8 [N, K] row-major, a_scale fp32 [M],
 * b_scale F32/BF16/F16, bias [N] in out_dtype or NULL, out BF16/F16 [M, N] row-major.
 * SDNQ_ERR_UNSUPPORTED unless sdnq_cuda_i8_gemm_available(), K % 16 == 0, N % 8 == 0 and a, b,
 * out 16-byte aligned; also for an F32 out, K == 0 and sizes near int32's range. */
typedef struct sdnq_i8_gemm_desc {
    int64_t M, N, K;
    const void *a;
    int64_t a_numel;
    const void *b;
    int64_t b_numel;
    const float *a_scale;
    int64_t a_scale_numel;
    const void *b_scale;
    int32_t b_scale_dtype;
    int64_t b_scale_numel, b_scale_stride;
    const void *bias;
    int64_t bias_numel;
    void *out;
    int32_t out_dtype;
    int64_t out_numel;
} sdnq_i8_gemm_desc;

/* 1 where the current device can run sdnq_cuda_i8_gemm (compute capability 9.0 and this build
 * holds sm_90a code), else 0 */
SDNQ_API int sdnq_cuda_i8_gemm_available(void);
SDNQ_API sdnq_status sdnq_cuda_i8_gemm(const sdnq_i8_gemm_desc *d, void *stream);

/* cuBLASLt: a handle and a cache of the algorithms its heuristic picked.
 * Not thread-safe: one context per device, calls serialized by the caller. */
typedef struct sdnq_cuda_lt sdnq_cuda_lt;
SDNQ_API sdnq_status sdnq_cuda_lt_create(sdnq_cuda_lt **ctx);
SDNQ_API void sdnq_cuda_lt_destroy(sdnq_cuda_lt *ctx);

typedef struct sdnq_lt_matmul_desc {
    int64_t M, N, K;
    int32_t in_dtype;             /* I8 or F8_E4M3FN, both operands                     */
    const void *a;                /* activations [M, K] row-major                       */
    int64_t a_numel;
    const void *b;                /* weights [N, K] row-major, or [K, N] when b_kn      */
    int64_t b_numel;
    int32_t b_kn;
    void *d;                      /* [M, N] row-major: I32 for I8 inputs; BF16, F16 or F32 for fp8 */
    int32_t d_dtype;
    int64_t d_numel;
    /* fp8 only, optional (both or neither): d[m, n] *= a_scale[m] * b_scale[n],
     * cuBLASLt's outer-vector scaling; SDNQ_ERR_UNSUPPORTED where it is refused */
    const float *a_scale, *b_scale;
    const void *bias;             /* fp8 only, optional: [N] in d_dtype (BF16/F16)      */
    void *workspace;
    int64_t workspace_bytes;
    int32_t fast_accum;           /* fp8: cuBLASLt's fast accumulation                  */
} sdnq_lt_matmul_desc;

/* d = a @ b^T through cublasLtMatmul (int32 accumulation for I8, fp32 for fp8).
 * SDNQ_ERR_UNSUPPORTED: no cuBLASLt algorithm for this problem on this device. */
SDNQ_API sdnq_status sdnq_cuda_lt_matmul(sdnq_cuda_lt *ctx, const sdnq_lt_matmul_desc *d, void *stream);

#ifdef __cplusplus
}
#endif
