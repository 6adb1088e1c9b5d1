/*
 * sdnq.h - public C API of the comfy_sdnq core.
 *
 * The core reads, writes and dequantizes SDNQ ("SD.Next Quantization")
 * weights. It knows nothing of torch or Python: callers pass pointers,
 * element counts, strides and dtypes, and get a status code back. It never
 * prints, exits or allocates memory that outlives a call.
 *
 * Every routine has a scalar reference (suffix _ref), the bit-exact oracle of
 * the format, and a fast version (no suffix) that must produce the same bits.
 *
 * Index space. A quantized weight is addressed as a 3-D view
 * [outer, red, inner]: element (o, j, i) lives at flat index
 * (o*red + j)*inner + i, and the quantization group of (o, j, i) is (o, i) -
 * the reduction runs over j. Every sdnq layout maps onto it:
 *   Linear row-wise  [out, in]         -> [out, in, 1]
 *   Linear grouped   [out, G, g]       -> [out*G, g, 1]
 *   Conv row-wise    [out, in, k...]   -> [out, in, prod(k)]
 *   Conv grouped     [out, G, g, k...] -> [out*G, g, prod(k)]
 *   tensor-wise      any               -> [1, numel, 1]
 * Scales and zero-points are read through strides over (o, i), so broadcast
 * (stride 0) and transposed storage need no copies.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(SDNQ_BUILD_SHARED)
#define SDNQ_API __declspec(dllexport)
#else
#define SDNQ_API
#endif

#define SDNQ_API_VERSION 1

/* ------------------------------------------------------------------------ */
/* status codes                                                              */

typedef enum sdnq_status {
    SDNQ_OK = 0,
    SDNQ_ERR_NULL = 1,        /* a required pointer is NULL                   */
    SDNQ_ERR_TYPE = 2,        /* unknown type id, or a type this call rejects */
    SDNQ_ERR_SIZE = 3,        /* a count, shape or stride is inconsistent     */
    SDNQ_ERR_RANGE = 4,       /* an access would fall outside a buffer        */
    SDNQ_ERR_OVERFLOW = 5,    /* a size computation overflows int64           */
    SDNQ_ERR_DTYPE = 6,       /* unsupported buffer dtype for this argument   */
    SDNQ_ERR_UNSUPPORTED = 7, /* valid input this build cannot handle         */
    SDNQ_ERR_DEVICE = 8,      /* CUDA runtime error                           */
    SDNQ_STATUS_COUNT
} sdnq_status;

SDNQ_API const char *sdnq_status_str(sdnq_status s);

/* ------------------------------------------------------------------------ */
/* buffer element dtypes (scales, outputs, file storage)                     */

#define SDNQ_DTYPES(X) \
    X(I8, 1)           \
    X(U8, 1)           \
    X(I16, 2)          \
    X(U16, 2)          \
    X(I32, 4)          \
    X(U32, 4)          \
    X(I64, 8)          \
    X(F32, 4)          \
    X(BF16, 2)         \
    X(F16, 2)          \
    X(F8_E4M3FN, 1)    \
    X(F8_E5M2, 1)      \
    X(F8_E4M3FNUZ, 1)  \
    X(F8_E5M2FNUZ, 1)  \
    X(F8_E8M0FNU, 1)

typedef enum sdnq_dtype {
#define SDNQ_X_(name, size) SDNQ_DT_##name,
    SDNQ_DTYPES(SDNQ_X_)
#undef SDNQ_X_
    SDNQ_DT_COUNT
} sdnq_dtype;

SDNQ_API int32_t sdnq_dtype_size(int32_t dtype);      /* 0 if unknown */
SDNQ_API const char *sdnq_dtype_name(int32_t dtype);  /* NULL if unknown */

/* ------------------------------------------------------------------------ */
/* weight storage types, expanded from types.def                             */

typedef enum sdnq_family {
    SDNQ_FAMILY_INT = 0,
    SDNQ_FAMILY_UINT = 1,
    SDNQ_FAMILY_FLOAT = 2,
    SDNQ_FAMILY_FLOATX = 3,
    SDNQ_FAMILY_UFLOATX = 4
} sdnq_family;

typedef enum sdnq_type {
    SDNQ_TYPE_INVALID = 0,
#define SDNQ_TYPE(id, NAME, name, family, bits, e, m, lo, hi, storage, packed) SDNQ_TYPE_##NAME = id,
#include "sdnq/types.def"
#undef SDNQ_TYPE
    SDNQ_TYPE_END
} sdnq_type;

typedef struct sdnq_type_traits {
    const char *name;      /* sdnq's config name                              */
    int32_t id;            /* stable id from types.def                        */
    int32_t family;        /* sdnq_family                                     */
    int32_t bits;
    int32_t exponent;
    int32_t mantissa;
    double min, max;       /* quantization range as sdnq uses it              */
    int32_t storage;       /* sdnq_dtype of the tensor in the file            */
    int32_t is_unsigned;   /* asymmetric: zero_point present                  */
    int32_t is_integer;
    int32_t is_packed;     /* codes are bit-packed or custom float codes      */
    int32_t block_elems;   /* elements per packing block (1 if not packed)    */
    int32_t block_words;   /* storage words per block                         */
} sdnq_type_traits;

/* Traits of a type id; NULL when the id is not in the table. */
SDNQ_API const sdnq_type_traits *sdnq_type_get(int32_t id);
/* Type id for a config name or alias ("uint4", "fp8", "bool"); 0 if unknown. */
SDNQ_API int32_t sdnq_type_by_name(const char *name);
SDNQ_API int32_t sdnq_type_count(void);                 /* base types      */
SDNQ_API int32_t sdnq_alias_count(void);
/* i-th alias: its name and target id; SDNQ_ERR_RANGE past the end. */
SDNQ_API sdnq_status sdnq_alias_get(int32_t i, const char **name, int32_t *target);

/* Storage words (elements of traits->storage) holding n codes of a type.
 * Packed types need n to be a multiple of block_elems, like sdnq. */
SDNQ_API sdnq_status sdnq_storage_words(int32_t type, int64_t n, int64_t *words);

/* ------------------------------------------------------------------------ */
/* packing: stored codes <-> file words (packed types only)                  */
/*
 * A stored code is what sdnq hands its packer: q - min for signed integers
 * (offset binary), q for unsigned integers, the float code bits for custom
 * floats. pack takes int32 codes and reproduces sdnq's packer bit for bit,
 * including how it lets an out-of-range code (2^bits for uint9..uint15)
 * spill into neighbouring fields. unpack returns the codes sdnq's unpacker
 * returns for any word contents.
 */
SDNQ_API sdnq_status sdnq_pack_ref(int32_t type, const int32_t *codes, int64_t n, void *dst, int64_t dst_bytes);
SDNQ_API sdnq_status sdnq_unpack_ref(int32_t type, const void *src, int64_t src_bytes, int64_t n, int32_t *codes);
SDNQ_API sdnq_status sdnq_pack(int32_t type, const int32_t *codes, int64_t n, void *dst, int64_t dst_bytes,
                               int32_t nthreads);
SDNQ_API sdnq_status sdnq_unpack(int32_t type, const void *src, int64_t src_bytes, int64_t n, int32_t *codes,
                                 int32_t nthreads);

/* ------------------------------------------------------------------------ */
/* code values                                                               */

/* Value of each stored code as fp32, as sdnq's unpacker yields it: signed
 * integers minus their offset, custom floats decoded (subnormals, no inf or
 * NaN). Integers wider than 24 bits round to nearest even. Packed types only. */
SDNQ_API sdnq_status sdnq_decode_ref(int32_t type, const int32_t *codes, int64_t n, float *out);
/* Custom float encoder (FLOATX/UFLOATX): fp32 values -> codes, rounding as sdnq does. */
SDNQ_API sdnq_status sdnq_encode_ref(int32_t type, const float *x, int64_t n, int32_t *codes);

/* Round fp32 values to a buffer dtype and store them (RNE, torch's NaN rules). */
SDNQ_API sdnq_status sdnq_convert_ref(const float *x, int64_t n, void *dst, int32_t dst_dtype);

/* ------------------------------------------------------------------------ */
/* dequantization                                                            */

typedef struct sdnq_dequant_desc {
    int32_t type;                 /* weight type id                            */
    int64_t outer, red, inner;    /* index space of the codes (see top)        */
    const void *codes;            /* file words (packed) or native elements    */
    int64_t codes_bytes;
    /* scale: per group value, or with codebook the 2^bits levels per group.
     * Element (o, i) at o*scale_stride[0] + i*scale_stride[1]; level l of a
     * codebook group at o*scale_stride[0] + l*scale_stride[2] + i*scale_stride[1]. */
    const void *scale;
    int32_t scale_dtype;          /* F32, BF16 or F16: the dequant arithmetic dtype */
    int64_t scale_numel;
    int64_t scale_stride[3];
    const void *zero_point;       /* unsigned families only; dtype == scale_dtype */
    int64_t zp_numel;
    int64_t zp_stride[2];
    int32_t codebook;             /* scale holds levels; codes index them      */
    void *out;                    /* element (o, j, i) at o*out_stride[0] + j*out_stride[1] + i*out_stride[2] */
    int32_t out_dtype;            /* F32, BF16 or F16                          */
    int64_t out_numel;
    int64_t out_stride[3];
} sdnq_dequant_desc;

/* r = value(code) * scale, or value(code) * scale + zero_point (one fused
 * multiply-add) for unsigned families, or levels[code] with a codebook, all in
 * the scale dtype, then converted to out_dtype. */
SDNQ_API sdnq_status sdnq_dequantize_ref(const sdnq_dequant_desc *d);
SDNQ_API sdnq_status sdnq_dequantize(const sdnq_dequant_desc *d, int32_t nthreads);

/* ------------------------------------------------------------------------ */
/* quantization                                                              */

typedef struct sdnq_quant_desc {
    int32_t type;                 /* weight type id                            */
    int64_t outer, red, inner;    /* index space; groups are (o, i)           */
    int32_t tensorwise;           /* one group over everything (group_size -2) */
    const float *w;               /* fp32 weights, index (o*red + j)*inner + i */
    int64_t w_numel;
    int32_t scale_dtype;          /* F32, or BF16/F16 to round scale and zero_point before dividing */
    void *scale;                  /* out: outer*inner values (1 if tensorwise) */
    void *zero_point;             /* out: unsigned families; NULL otherwise    */
    int64_t scale_numel;
    int32_t *codes;               /* out: stored codes (q - min for packed signed integers), w's index order */
    int64_t codes_numel;
} sdnq_quant_desc;

/* Scales, zero-points and stored codes exactly as sdnq's quantize_weight:
 * symmetric scale = amax|w|/max, asymmetric zero_point = min and
 * scale = (max-min)/(qmax-qmin), q = clamp(round_half_even(...)), NaN -> 0.
 * Native float types get their torch storage bits as codes. */
SDNQ_API sdnq_status sdnq_quantize_ref(const sdnq_quant_desc *d);
SDNQ_API sdnq_status sdnq_quantize(const sdnq_quant_desc *d, int32_t nthreads);

/* ------------------------------------------------------------------------ */
/* low-rank correction and Hadamard rotation of a dense [rows, cols] matrix  */

/* w[r, c] = round_w(w[r, c] + sum_k up[r, k] * down[k, c]), fp32 accumulation
 * in increasing k. up[r, k] at r*up_stride[0] + k*up_stride[1],
 * down[k, c] at k*down_stride[0] + c*down_stride[1]. */
typedef struct sdnq_svd_desc {
    void *w;
    int32_t w_dtype;
    int64_t rows, cols, w_numel;   /* w is row-major [rows, cols]              */
    int64_t rank;
    const void *up;
    int32_t up_dtype;
    int64_t up_numel, up_stride[2];
    const void *down;
    int32_t down_dtype;
    int64_t down_numel, down_stride[2];
} sdnq_svd_desc;

SDNQ_API sdnq_status sdnq_svd_add_ref(const sdnq_svd_desc *d);
SDNQ_API sdnq_status sdnq_svd_add(const sdnq_svd_desc *d, int32_t nthreads);

typedef enum sdnq_hadamard_kind {
    SDNQ_HADAMARD_SYLVESTER = 0,  /* kron powers of [[1,1],[1,-1]]                 */
    SDNQ_HADAMARD_AUTO = 1        /* kron powers of H4 when h is a power of 4 (sdnq >= 0.2.1) */
} sdnq_hadamard_kind;

/* Entry (i, j) of the normalized h x h Hadamard matrix rounded to dtype, as sdnq builds it. */
SDNQ_API sdnq_status sdnq_hadamard_entry(int64_t h, int32_t kind, int32_t dtype, int64_t i, int64_t j, float *value);

/* Each row of w, in blocks of h columns, becomes block @ H (fp32 accumulation,
 * rounded to w's dtype). h must be a power of two >= 2 dividing cols. */
SDNQ_API sdnq_status sdnq_hadamard_ref(void *w, int32_t w_dtype, int64_t rows, int64_t cols, int64_t w_numel,
                                       int64_t h, int32_t kind);
SDNQ_API sdnq_status sdnq_hadamard(void *w, int32_t w_dtype, int64_t rows, int64_t cols, int64_t w_numel,
                                   int64_t h, int32_t kind, int32_t nthreads);

#ifdef __cplusplus
}
#endif
