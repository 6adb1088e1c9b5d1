/*
 * fuzz_values.c - libFuzzer harness for the value and table entry points: sdnq_decode_ref,
 * sdnq_encode_ref, sdnq_convert_ref, sdnq_type_by_name (config type names come from files),
 * sdnq_type_get, sdnq_alias_get, sdnq_dtype_size / sdnq_dtype_name, sdnq_status_str and
 * sdnq_hadamard_entry.
 *
 * Input: an operation byte, then its arguments and data. Contract: a defined status;
 * decode gives finite values for custom floats and encode codes in [0, 2^bits) whose value
 * re-encodes to itself (value-wise); convert writes exactly n elements of its dtype; a name the
 * table knows maps to a type whose traits are consistent; hadamard_entry agrees with
 * sdnq_hadamard applied to a unit row.
 */
#include <math.h>

#include "fuzz_common.h"

#define CAP_N 4096

static int32_t read_type(fz_reader *r) {
    const uint8_t b = fz_u8(r);
    return b < 0xF8 ? (int32_t)b : (int32_t)fz_svar(r);
}

static void check_traits(const sdnq_type_traits *t, int32_t id) {
    if (t == NULL) return;
    if (t->id != id || t->name == NULL || t->bits < 1 || t->bits > 32 || t->block_elems < 1 || t->block_words < 1 ||
        sdnq_dtype_size(t->storage) <= 0 || !(t->min <= t->max))
        FZ_FAIL("inconsistent traits for id %d", id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_reader r = {data, size, 0};
    const uint8_t op = fz_u8(&r);
    switch (op % 5) {
    case 0:   /* decode any int32 codes, re-encode custom floats */
    case 1: { /* encode any fp32 values */
        const int32_t type = read_type(&r);
        int64_t n = fz_svar(&r);
        const int64_t cn = n > CAP_N ? CAP_N : n, bytes = cn > 0 ? cn * 4 : 0;
        const sdnq_type_traits *t = sdnq_type_get(type);
        const int custom = t != NULL && (t->family == SDNQ_FAMILY_FLOATX || t->family == SDNQ_FAMILY_UFLOATX);
        void *in = fz_buffer(&r, bytes, (op & 0x80) != 0);
        int32_t *codes = (int32_t *)malloc(bytes ? (size_t)bytes : 1);
        float *v = (float *)malloc(bytes ? (size_t)bytes : 1);
        if (op % 5 == 0) {
            const sdnq_status st = sdnq_decode_ref(type, (const int32_t *)in, cn, v);
            FZ_STATUS_OK("decode_ref", st);
            if ((t == NULL || !t->is_packed) && st != SDNQ_ERR_TYPE) FZ_FAIL("decode_ref: type %d gave %d", type, st);
            if (st == SDNQ_OK && custom) {
                /* codes past 2^bits are the caller's business; re-encode the in-range ones */
                int64_t m = 0;
                for (int64_t k = 0; k < cn; k++)
                    if (((const int32_t *)in)[k] >= 0 && ((const int32_t *)in)[k] < (1 << t->bits)) v[m++] = v[k];
                for (int64_t k = 0; k < m; k++)
                    if (!isfinite(v[k])) FZ_FAIL("decode %s: non-finite value", t->name);
                if (sdnq_encode_ref(type, v, m, codes) != SDNQ_OK) FZ_FAIL("encode of decoded %s values", t->name);
                float *w = (float *)malloc(m > 0 ? (size_t)m * 4 : 1);
                if (sdnq_decode_ref(type, codes, m, w) != SDNQ_OK) FZ_FAIL("decode of encoded %s codes", t->name);
                for (int64_t k = 0; k < m; k++)
                    if (!(w[k] == v[k])) FZ_FAIL("%s: value %g re-encodes to %g", t->name, (double)v[k], (double)w[k]);
                free(w);
            }
        } else {
            const sdnq_status st = sdnq_encode_ref(type, (const float *)in, cn, codes);
            FZ_STATUS_OK("encode_ref", st);
            if (!custom && st != SDNQ_ERR_TYPE) FZ_FAIL("encode_ref: type %d gave %d", type, st);
            if (st == SDNQ_OK) {
                for (int64_t k = 0; k < cn; k++)
                    if (codes[k] < 0 || codes[k] >= (1 << t->bits)) FZ_FAIL("encode %s: code %d", t->name, codes[k]);
                if (sdnq_decode_ref(type, codes, cn, v) != SDNQ_OK) FZ_FAIL("decode of encoded %s codes", t->name);
                for (int64_t k = 0; k < cn; k++)
                    if (!isfinite(v[k]) || fabsf(v[k]) > t->max + (t->max - t->min))
                        FZ_FAIL("encode %s: %g decodes to %g", t->name, (double)((const float *)in)[k], (double)v[k]);
            }
        }
        free(in), free(codes), free(v);
        break;
    }
    case 2: { /* convert fp32 -> any dtype */
        const int32_t dt = fz_dtype(fz_u8(&r));
        int64_t n = fz_svar(&r);
        const int64_t cn = n > CAP_N ? CAP_N : n;
        float *x = (float *)fz_buffer(&r, cn > 0 ? cn * 4 : 0, (op & 0x80) != 0);
        const int64_t es = sdnq_dtype_size(dt), ob = cn > 0 ? cn * (es > 0 ? es : 1) : 0;
        uint8_t *dst = (uint8_t *)malloc(ob + 8);
        memset(dst, 0x77, (size_t)ob + 8);
        const sdnq_status st = sdnq_convert_ref(x, cn, ob || !(op & 0x80) ? dst : NULL, dt);
        FZ_STATUS_OK("convert_ref", st);
        if (es == 0 && cn >= 0 && st == SDNQ_OK) FZ_FAIL("convert_ref to unknown dtype %d succeeded", dt);
        for (int k = 0; k < 8; k++)
            if (dst[ob + k] != 0x77) FZ_FAIL("convert_ref wrote past %lld elements", (long long)cn);
        if (st == SDNQ_OK && dt == SDNQ_DT_F32)
            for (int64_t k = 0; k < cn; k++)
                if (!isnan(x[k]) && memcmp(dst + 4 * k, x + k, 4) != 0) FZ_FAIL("convert_ref to F32 changed a value");
        free(x), free(dst);
        break;
    }
    case 3: { /* names, ids, aliases, dtypes, status strings */
        char name[64];
        size_t len = 0;
        while (len < sizeof name - 1 && r.i < r.n) {
            char c = (char)fz_u8(&r);
            if (c == 0) break;
            name[len++] = c;
        }
        name[len] = 0;
        const int32_t id = sdnq_type_by_name(name);
        if (id != 0) {
            const sdnq_type_traits *t = sdnq_type_get(id);
            if (t == NULL) FZ_FAIL("type_by_name('%s') = %d, which type_get does not know", name, id);
            check_traits(t, id);
        }
        const int32_t any = (int32_t)fz_svar(&r);
        check_traits(sdnq_type_get(any), any);
        const char *an = NULL;
        int32_t at = 0;
        const sdnq_status st = sdnq_alias_get(any, &an, &at);
        FZ_STATUS_OK("alias_get", st);
        if (st == SDNQ_OK && (an == NULL || sdnq_type_get(at) == NULL || sdnq_type_by_name(an) != at))
            FZ_FAIL("alias %d inconsistent", any);
        if (st != SDNQ_OK && (any >= 0 && any < sdnq_alias_count())) FZ_FAIL("alias_get(%d) failed", any);
        const int32_t ds = sdnq_dtype_size(any);
        const char *dn = sdnq_dtype_name(any);
        if ((ds == 0) != (dn == NULL)) FZ_FAIL("dtype %d: size %d but name %p", any, ds, (const void *)dn);
        if (dn != NULL) (void)strlen(dn);
        const char *ss = sdnq_status_str((sdnq_status)any);
        if (ss != NULL) (void)strlen(ss);
        break;
    }
    default: { /* Hadamard entries, cross-checked against the transform of a unit row */
        const uint8_t hb = fz_u8(&r);
        const int64_t h = hb < 0xC0 ? (int64_t)1 << (hb % 14) : fz_svar(&r);
        const int32_t kind = (int32_t)fz_svar(&r);
        const int32_t dt = fz_arith_dtype(&r, fz_u8(&r));
        const int64_t i = fz_svar(&r), j = fz_svar(&r);
        float value = 0;
        const sdnq_status st = sdnq_hadamard_entry(h, kind, dt, i, j, (op & 0x80) ? NULL : &value);
        FZ_STATUS_OK("hadamard_entry", st);
        if (st == SDNQ_OK && h <= 4096) {
            const int64_t es = sdnq_dtype_size(dt);
            uint8_t *row = (uint8_t *)calloc((size_t)h, (size_t)es);
            float one = 1.0f;
            sdnq_convert_ref(&one, 1, row + i * es, dt);
            const sdnq_status hs = sdnq_hadamard(row, dt, 1, h, h, h, kind, 1);
            if (hs != SDNQ_OK) FZ_FAIL("hadamard h=%lld kind=%d: %d", (long long)h, kind, hs);
            uint8_t want[4];
            sdnq_convert_ref(&value, 1, want, dt);
            if (memcmp(want, row + j * es, (size_t)es) != 0)
                FZ_FAIL("hadamard_entry(%lld, %d, %d, %lld, %lld) differs from the transform", (long long)h, kind, dt,
                        (long long)i, (long long)j);
            free(row);
        }
        break;
    }
    }
    return 0;
}
