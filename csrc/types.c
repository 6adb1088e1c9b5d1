/*
 * types.c - the type traits table, expanded from types.def, and the small
 * lookups around it (names, aliases, dtypes, status strings, storage sizes).
 */
#include <string.h>

#include "sdnq/sdnq.h"

/* sdnq's packing block per bit width (SDNQ_BLOCK lines), as enum constants so the traits table
 * below stays a constant initializer in standard C (reading a const array there is a GCC
 * extension that Clang rejects). Widths with no block (32: never packed) are 0. */
enum {
#define SDNQ_BLOCK(bits, elems, words) SDNQ_BLOCK_ELEMS_##bits = elems, SDNQ_BLOCK_WORDS_##bits = words,
#include "sdnq/types.def"
#undef SDNQ_BLOCK
    SDNQ_BLOCK_ELEMS_32 = 0,
    SDNQ_BLOCK_WORDS_32 = 0
};

static const sdnq_type_traits type_table[SDNQ_TYPE_END] = {
#define SDNQ_TYPE(id_, NAME, name_, fam, bits_, e, m, lo, hi, st, packed)                         \
    [id_] = {.name = name_,                                                                        \
             .id = id_,                                                                            \
             .family = SDNQ_FAMILY_##fam,                                                          \
             .bits = bits_,                                                                        \
             .exponent = e,                                                                        \
             .mantissa = m,                                                                        \
             .min = lo,                                                                            \
             .max = hi,                                                                            \
             .storage = SDNQ_DT_##st,                                                              \
             .is_unsigned = SDNQ_FAMILY_##fam == SDNQ_FAMILY_UINT || SDNQ_FAMILY_##fam == SDNQ_FAMILY_UFLOATX, \
             .is_integer = SDNQ_FAMILY_##fam == SDNQ_FAMILY_INT || SDNQ_FAMILY_##fam == SDNQ_FAMILY_UINT,      \
             .is_packed = packed,                                                                  \
             .block_elems = packed ? SDNQ_BLOCK_ELEMS_##bits_ : 1,                               \
             .block_words = packed ? SDNQ_BLOCK_WORDS_##bits_ : 1},
#include "sdnq/types.def"
#undef SDNQ_TYPE
};

typedef struct alias_entry {
    const char *name;
    int32_t target;
} alias_entry;

static const alias_entry alias_table[] = {
#define SDNQ_ALIAS(name_, NAME) {name_, SDNQ_TYPE_##NAME},
#include "sdnq/types.def"
#undef SDNQ_ALIAS
};

#define N_ALIASES ((int32_t)(sizeof alias_table / sizeof alias_table[0]))

const sdnq_type_traits *sdnq_type_get(int32_t id) {
    if (id <= 0 || id >= SDNQ_TYPE_END || type_table[id].name == NULL) return NULL;
    return &type_table[id];
}

int32_t sdnq_type_count(void) {
    int32_t n = 0;
    for (int32_t i = 1; i < SDNQ_TYPE_END; i++) n += type_table[i].name != NULL;
    return n;
}

int32_t sdnq_alias_count(void) { return N_ALIASES; }

sdnq_status sdnq_alias_get(int32_t i, const char **name, int32_t *target) {
    if (name == NULL || target == NULL) return SDNQ_ERR_NULL;
    if (i < 0 || i >= N_ALIASES) return SDNQ_ERR_RANGE;
    *name = alias_table[i].name;
    *target = alias_table[i].target;
    return SDNQ_OK;
}

int32_t sdnq_type_by_name(const char *name) {
    if (name == NULL) return 0;
    for (int32_t i = 1; i < SDNQ_TYPE_END; i++)
        if (type_table[i].name != NULL && strcmp(type_table[i].name, name) == 0) return i;
    for (int32_t i = 0; i < N_ALIASES; i++)
        if (strcmp(alias_table[i].name, name) == 0) return alias_table[i].target;
    return 0;
}

sdnq_status sdnq_storage_words(int32_t type, int64_t n, int64_t *words) {
    const sdnq_type_traits *t = sdnq_type_get(type);
    if (words == NULL) return SDNQ_ERR_NULL;
    if (t == NULL) return SDNQ_ERR_TYPE;
    if (n < 0 || n % t->block_elems != 0) return SDNQ_ERR_SIZE;
    int64_t blocks = n / t->block_elems;
    if (blocks > INT64_MAX / t->block_words) return SDNQ_ERR_OVERFLOW;
    *words = blocks * t->block_words;
    return SDNQ_OK;
}

static const int32_t dtype_sizes[SDNQ_DT_COUNT] = {
#define SDNQ_X_(name, size) size,
    SDNQ_DTYPES(SDNQ_X_)
#undef SDNQ_X_
};

static const char *const dtype_names[SDNQ_DT_COUNT] = {
#define SDNQ_X_(name, size) #name,
    SDNQ_DTYPES(SDNQ_X_)
#undef SDNQ_X_
};

int32_t sdnq_dtype_size(int32_t dtype) { return dtype >= 0 && dtype < SDNQ_DT_COUNT ? dtype_sizes[dtype] : 0; }

const char *sdnq_dtype_name(int32_t dtype) { return dtype >= 0 && dtype < SDNQ_DT_COUNT ? dtype_names[dtype] : NULL; }

const char *sdnq_status_str(sdnq_status s) {
    switch (s) {
    case SDNQ_OK: return "ok";
    case SDNQ_ERR_NULL: return "required pointer is NULL";
    case SDNQ_ERR_TYPE: return "unknown or unsupported weight type";
    case SDNQ_ERR_SIZE: return "inconsistent size, shape or stride";
    case SDNQ_ERR_RANGE: return "access outside a buffer";
    case SDNQ_ERR_OVERFLOW: return "size computation overflows";
    case SDNQ_ERR_DTYPE: return "unsupported buffer dtype";
    case SDNQ_ERR_UNSUPPORTED: return "not supported by this build";
    case SDNQ_ERR_DEVICE: return "CUDA error";
    default: return "unknown status";
    }
}
