/*
 * module.c - comfy_sdnq._C, the CPython binding of the C core.
 *
 * A limited-API (abi3) module: every function takes plain integers (data
 * pointers from torch's data_ptr(), sizes, strides, type and dtype ids) and
 * floats, calls the core with the GIL released, and turns a status code into
 * comfy_sdnq._C.SdnqError (a ValueError). It keeps no Python objects and
 * links no libtorch, so one build serves every torch.
 *
 * In Python terms:
 *
 *     class SdnqError(ValueError): ...
 *     def type_table() -> list[tuple]: ...     # one row per types.def line
 *     def aliases() -> list[tuple[str, int]]
 *     def dtype_names() -> list[str]           # index = sdnq_dtype value
 *     def pack(type, codes, n, dst, dst_bytes, fast, nthreads) -> None
 *     def unpack(type, src, src_bytes, n, codes, fast, nthreads) -> None
 *     def decode(type, codes, n, out) -> None
 *     def encode(type, x, n, codes) -> None
 *     def convert(x, n, dst, dst_dtype) -> None
 *     def dequantize(type, outer, red, inner, codes, codes_bytes,
 *                    scale, scale_dtype, scale_numel, ss0, ss1, ss2,
 *                    zp, zp_numel, zs0, zs1, codebook,
 *                    out, out_dtype, out_numel, os0, os1, os2, fast, nthreads) -> None
 *     def quantize(type, outer, red, inner, tensorwise, w, w_numel, scale_dtype,
 *                  scale, zp, scale_numel, codes, codes_numel, fast, nthreads) -> None
 *     def svd_add(w, w_dtype, rows, cols, w_numel, rank, up, up_dtype, up_numel,
 *                 us0, us1, down, down_dtype, down_numel, ds0, ds1, fast, nthreads) -> None
 *     def hadamard(w, w_dtype, rows, cols, w_numel, h, kind, fast, nthreads) -> None
 *     def hadamard_entry(h, kind, dtype, i, j) -> float
 */
#define PY_SSIZE_T_CLEAN
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#include <Python.h>

#include "pyargs.h"
#include "sdnq/sdnq.h"

typedef struct {
    PyObject *error; /* comfy_sdnq._C.SdnqError */
} module_state;

static inline module_state *get_state(PyObject *module) {
    void *state = PyModule_GetState(module);
    return (module_state *)state;
}

static PyObject *raise_status(PyObject *module, const char *fname, sdnq_status st) {
    PyErr_Format(get_state(module)->error, "%s: %s (status %d)", fname, sdnq_status_str(st), (int)st);
    return NULL;
}

/* the end of an entry point: the core call (an sdnq_status expression) with the GIL released,
 * then None, or SdnqError naming the function and the status */
#define CALL_NOGIL(fname, ...)                                       \
    do {                                                             \
        sdnq_status st_;                                             \
        Py_BEGIN_ALLOW_THREADS                                       \
        st_ = (__VA_ARGS__);                                         \
        Py_END_ALLOW_THREADS                                         \
        if (st_ != SDNQ_OK) return raise_status(module, fname, st_); \
        Py_RETURN_NONE;                                              \
    } while (0)


/* ------------------------------------------------------------------------ */
/* tables                                                                    */

PyDoc_STRVAR(type_table_doc, "type_table() -> list of (id, name, family, bits, exponent, mantissa, min, max, "
                             "storage, is_unsigned, is_integer, is_packed, block_elems, block_words)");

static PyObject *type_table(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    PyObject *list = PyList_New(0);
    if (list == NULL) return NULL;
    for (int32_t id = 1; id < SDNQ_TYPE_END; id++) {
        const sdnq_type_traits *t = sdnq_type_get(id);
        if (t == NULL) continue;
        PyObject *row = Py_BuildValue("(isiiiiddsiiiii)", t->id, t->name, t->family, t->bits, t->exponent,
                                      t->mantissa, t->min, t->max, sdnq_dtype_name(t->storage), t->is_unsigned,
                                      t->is_integer, t->is_packed, t->block_elems, t->block_words);
        if (row == NULL || PyList_Append(list, row) < 0) {
            Py_XDECREF(row);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(row);
    }
    return list;
}

PyDoc_STRVAR(aliases_doc, "aliases() -> list of (alias, type id)");

static PyObject *aliases(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    PyObject *list = PyList_New(0);
    if (list == NULL) return NULL;
    for (int32_t i = 0; i < sdnq_alias_count(); i++) {
        const char *name;
        int32_t target;
        if (sdnq_alias_get(i, &name, &target) != SDNQ_OK) break;
        PyObject *row = Py_BuildValue("(si)", name, target);
        if (row == NULL || PyList_Append(list, row) < 0) {
            Py_XDECREF(row);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(row);
    }
    return list;
}

PyDoc_STRVAR(dtype_names_doc, "dtype_names() -> list of buffer dtype names; index = dtype id");

static PyObject *dtype_names(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    PyObject *list = PyList_New(0);
    if (list == NULL) return NULL;
    for (int32_t i = 0; i < SDNQ_DT_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(sdnq_dtype_name(i));
        if (name == NULL || PyList_Append(list, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(name);
    }
    return list;
}

/* ------------------------------------------------------------------------ */
/* kernels                                                                   */

PyDoc_STRVAR(pack_doc, "pack(type, codes, n, dst, dst_bytes, fast, nthreads)");

static PyObject *pack(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[7];
    if (parse_i64("pack", args, nargs, 7, a) < 0) return NULL;
    CALL_NOGIL("pack", a[5] ? sdnq_pack((int32_t)a[0], (const int32_t *)CPTR(a[1]), a[2], PTR(a[3]), a[4],
                                        (int32_t)a[6])
                            : sdnq_pack_ref((int32_t)a[0], (const int32_t *)CPTR(a[1]), a[2], PTR(a[3]), a[4]));
}

PyDoc_STRVAR(unpack_doc, "unpack(type, src, src_bytes, n, codes, fast, nthreads)");

static PyObject *unpack(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[7];
    if (parse_i64("unpack", args, nargs, 7, a) < 0) return NULL;
    CALL_NOGIL("unpack", a[5] ? sdnq_unpack((int32_t)a[0], CPTR(a[1]), a[2], a[3], (int32_t *)PTR(a[4]),
                                            (int32_t)a[6])
                              : sdnq_unpack_ref((int32_t)a[0], CPTR(a[1]), a[2], a[3], (int32_t *)PTR(a[4])));
}

PyDoc_STRVAR(decode_doc, "decode(type, codes, n, out): stored codes -> fp32 values");

static PyObject *decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[4];
    if (parse_i64("decode", args, nargs, 4, a) < 0) return NULL;
    CALL_NOGIL("decode", sdnq_decode_ref((int32_t)a[0], (const int32_t *)CPTR(a[1]), a[2], (float *)PTR(a[3])));
}

PyDoc_STRVAR(encode_doc, "encode(type, x, n, codes): fp32 values -> custom float codes");

static PyObject *encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[4];
    if (parse_i64("encode", args, nargs, 4, a) < 0) return NULL;
    CALL_NOGIL("encode", sdnq_encode_ref((int32_t)a[0], (const float *)CPTR(a[1]), a[2], (int32_t *)PTR(a[3])));
}

PyDoc_STRVAR(convert_doc, "convert(x, n, dst, dst_dtype): fp32 values -> buffer dtype");

static PyObject *convert(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[4];
    if (parse_i64("convert", args, nargs, 4, a) < 0) return NULL;
    CALL_NOGIL("convert", sdnq_convert_ref((const float *)CPTR(a[0]), a[1], PTR(a[2]), (int32_t)a[3]));
}

PyDoc_STRVAR(dequantize_doc, "dequantize(type, outer, red, inner, codes, codes_bytes, scale, scale_dtype, "
                             "scale_numel, ss0, ss1, ss2, zp, zp_numel, zs0, zs1, codebook, out, out_dtype, "
                             "out_numel, os0, os1, os2, fast, nthreads)");

static PyObject *dequantize(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[25];
    if (parse_i64("dequantize", args, nargs, 25, a) < 0) return NULL;
    sdnq_dequant_desc d = dequant_desc_from(a);
    CALL_NOGIL("dequantize", a[23] ? sdnq_dequantize(&d, (int32_t)a[24]) : sdnq_dequantize_ref(&d));
}

PyDoc_STRVAR(quantize_doc, "quantize(type, outer, red, inner, tensorwise, w, w_numel, scale_dtype, scale, zp, "
                           "scale_numel, codes, codes_numel, fast, nthreads)");

static PyObject *quantize(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[15];
    if (parse_i64("quantize", args, nargs, 15, a) < 0) return NULL;
    sdnq_quant_desc d = {
        .type = (int32_t)a[0],
        .outer = a[1],
        .red = a[2],
        .inner = a[3],
        .tensorwise = (int32_t)a[4],
        .w = (const float *)CPTR(a[5]),
        .w_numel = a[6],
        .scale_dtype = (int32_t)a[7],
        .scale = PTR(a[8]),
        .zero_point = PTR(a[9]),
        .scale_numel = a[10],
        .codes = (int32_t *)PTR(a[11]),
        .codes_numel = a[12],
    };
    CALL_NOGIL("quantize", a[13] ? sdnq_quantize(&d, (int32_t)a[14]) : sdnq_quantize_ref(&d));
}

PyDoc_STRVAR(svd_add_doc, "svd_add(w, w_dtype, rows, cols, w_numel, rank, up, up_dtype, up_numel, us0, us1, "
                          "down, down_dtype, down_numel, ds0, ds1, fast, nthreads)");

static PyObject *svd_add(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[18];
    if (parse_i64("svd_add", args, nargs, 18, a) < 0) return NULL;
    sdnq_svd_desc d = svd_desc_from(a);
    CALL_NOGIL("svd_add", a[16] ? sdnq_svd_add(&d, (int32_t)a[17]) : sdnq_svd_add_ref(&d));
}

PyDoc_STRVAR(hadamard_doc, "hadamard(w, w_dtype, rows, cols, w_numel, h, kind, fast, nthreads)");

static PyObject *hadamard(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[9];
    if (parse_i64("hadamard", args, nargs, 9, a) < 0) return NULL;
    CALL_NOGIL("hadamard", a[7] ? sdnq_hadamard(PTR(a[0]), (int32_t)a[1], a[2], a[3], a[4], a[5], (int32_t)a[6],
                                                (int32_t)a[8])
                                : sdnq_hadamard_ref(PTR(a[0]), (int32_t)a[1], a[2], a[3], a[4], a[5], (int32_t)a[6]));
}

PyDoc_STRVAR(hadamard_entry_doc, "hadamard_entry(h, kind, dtype, i, j) -> float");

static PyObject *hadamard_entry(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[5];
    if (parse_i64("hadamard_entry", args, nargs, 5, a) < 0) return NULL;
    float v = 0.0f;
    sdnq_status st = sdnq_hadamard_entry(a[0], (int32_t)a[1], (int32_t)a[2], a[3], a[4], &v);
    if (st != SDNQ_OK) return raise_status(module, "hadamard_entry", st);
    return PyFloat_FromDouble((double)v);
}

/* ------------------------------------------------------------------------ */
/* module                                                                    */

static PyMethodDef module_methods[] = {
    {"type_table",     (PyCFunction)type_table,            METH_NOARGS,   type_table_doc},
    {"aliases",        (PyCFunction)aliases,               METH_NOARGS,   aliases_doc},
    {"dtype_names",    (PyCFunction)dtype_names,           METH_NOARGS,   dtype_names_doc},
    {"pack",           (PyCFunction)(void (*)(void))pack,           METH_FASTCALL, pack_doc},
    {"unpack",         (PyCFunction)(void (*)(void))unpack,         METH_FASTCALL, unpack_doc},
    {"decode",         (PyCFunction)(void (*)(void))decode,         METH_FASTCALL, decode_doc},
    {"encode",         (PyCFunction)(void (*)(void))encode,         METH_FASTCALL, encode_doc},
    {"convert",        (PyCFunction)(void (*)(void))convert,        METH_FASTCALL, convert_doc},
    {"dequantize",     (PyCFunction)(void (*)(void))dequantize,     METH_FASTCALL, dequantize_doc},
    {"quantize",       (PyCFunction)(void (*)(void))quantize,       METH_FASTCALL, quantize_doc},
    {"svd_add",        (PyCFunction)(void (*)(void))svd_add,        METH_FASTCALL, svd_add_doc},
    {"hadamard",       (PyCFunction)(void (*)(void))hadamard,       METH_FASTCALL, hadamard_doc},
    {"hadamard_entry", (PyCFunction)(void (*)(void))hadamard_entry, METH_FASTCALL, hadamard_entry_doc},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *module) {
    module_state *state = get_state(module);
    state->error = PyErr_NewException("comfy_sdnq._C.SdnqError", PyExc_ValueError, NULL);
    if (state->error == NULL) return -1;
    if (PyModule_AddObjectRef(module, "SdnqError", state->error) < 0) return -1;
    if (PyModule_AddIntConstant(module, "API_VERSION", SDNQ_API_VERSION) < 0) return -1;
#ifdef SDNQ_WITH_OPENMP
    if (PyModule_AddIntConstant(module, "OPENMP", 1) < 0) return -1;
#else
    if (PyModule_AddIntConstant(module, "OPENMP", 0) < 0) return -1;
#endif
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg) {
    module_state *state = get_state(module);
    Py_VISIT(state->error);
    return 0;
}

static int module_clear(PyObject *module) {
    module_state *state = get_state(module);
    Py_CLEAR(state->error);
    return 0;
}

/* the state is released in module_clear; m_free only makes sure it runs */
static void module_free(void *module) { (void)module_clear((PyObject *)module); }

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "comfy_sdnq._C",
    .m_doc = "C core of comfy_sdnq: SDNQ packing, dequantization and quantization.",
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&module_def); }
