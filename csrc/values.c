/*
 * values.c - element conversions exposed for testing and tooling: the value
 * of stored codes, the custom float encoder, and fp32 -> buffer dtype
 * rounding. The kernels use the same codec.h functions inline.
 */
#include <stdint.h>

#include "codec.h"
#include "internal.h"

sdnq_status sdnq_decode_ref(int32_t type, const int32_t *codes, int64_t n, float *out) {
    const sdnq_type_traits *t = sdnq_type_get(type);
    if (t == NULL || !t->is_packed) return SDNQ_ERR_TYPE;
    if (n < 0) return SDNQ_ERR_SIZE;
    if (n > 0 && (codes == NULL || out == NULL)) return SDNQ_ERR_NULL;
    for (int64_t e = 0; e < n; e++) out[e] = sdnq_code_value(t, codes[e]);
    return SDNQ_OK;
}

sdnq_status sdnq_encode_ref(int32_t type, const float *x, int64_t n, int32_t *codes) {
    const sdnq_type_traits *t = sdnq_type_get(type);
    if (t == NULL || (t->family != SDNQ_FAMILY_FLOATX && t->family != SDNQ_FAMILY_UFLOATX)) return SDNQ_ERR_TYPE;
    if (n < 0) return SDNQ_ERR_SIZE;
    if (n > 0 && (codes == NULL || x == NULL)) return SDNQ_ERR_NULL;
    const int is_signed = t->family == SDNQ_FAMILY_FLOATX;
    for (int64_t e = 0; e < n; e++)
        codes[e] = (int32_t)sdnq_floatx_encode(x[e], t->bits, t->exponent, t->mantissa, is_signed);
    return SDNQ_OK;
}

sdnq_status sdnq_convert_ref(const float *x, int64_t n, void *dst, int32_t dst_dtype) {
    if (n < 0) return SDNQ_ERR_SIZE;
    if (n > 0 && (x == NULL || dst == NULL)) return SDNQ_ERR_NULL;
    if (sdnq_is_arith_dtype(dst_dtype)) {
        for (int64_t e = 0; e < n; e++) sdnq_store_float(dst, e, dst_dtype, x[e]);
        return SDNQ_OK;
    }
    if (sdnq_dtype_size(dst_dtype) == 1 && dst_dtype != SDNQ_DT_I8 && dst_dtype != SDNQ_DT_U8) {
        for (int64_t e = 0; e < n; e++) ((uint8_t *)dst)[e] = sdnq_f32_to_fp8(x[e], dst_dtype);
        return SDNQ_OK;
    }
    return SDNQ_ERR_DTYPE;
}
