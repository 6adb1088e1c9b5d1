/*
 * module_cuda.c - comfy_sdnq._C_cuda, the CPython binding of the CUDA kernels.
 *
 * A separate limited-API (abi3) module, so the CPU module comfy_sdnq._C never
 * depends on CUDA. Same style as csrc/module.c: every function takes plain
 * integers (device pointers from torch's data_ptr(), sizes, strides, type and
 * dtype ids, the cudaStream_t as an integer), launches on that stream and
 * turns a status into comfy_sdnq._C_cuda.SdnqError(message, status), a
 * ValueError. Launches are asynchronous and quick, so the GIL stays held
 * (which also serializes the cuBLASLt contexts, which are not thread-safe).
 * Importing it needs no GPU: nothing touches the device before the first call.
 *
 * In Python terms:
 *
 *     class SdnqError(ValueError): ...        # args: (message, status)
 *     UNSUPPORTED: int                         # the status of valid input a kernel does not take
 *     def dequantize(type, outer, red, inner, codes, codes_bytes, scale, scale_dtype, scale_numel,
 *                    ss0, ss1, ss2, zp, zp_numel, zs0, zs1, codebook, out, out_dtype, out_numel,
 *                    os0, os1, os2, stream) -> None
 *     def dequantize_svd(<dequantize's arguments but stream>, rows, cols, rank, up, up_dtype, up_numel,
 *                        us0, us1, down, down_dtype, down_numel, ds0, ds1, stream) -> None
 *     def dequantize_q8(<dequantize's arguments but stream; out = q, int8>, rows, cols, row_scale,
 *                       row_scale_numel, derive_scales, stream) -> int   # 0: launched; UNSUPPORTED: refused
 *     def svd_add(w, w_dtype, rows, cols, w_numel, rank, up, up_dtype, up_numel, us0, us1,
 *                 down, down_dtype, down_numel, ds0, ds1, stream) -> None
 *     def hadamard(w, w_dtype, rows, cols, w_numel, h, kind, stream) -> None
 *     def gemv(type, M, N, K, x, x_dtype, x_numel, ldx, y, y_numel, ldy, bias, bias_numel,
 *              codes, codes_bytes, red, scale, scale_dtype, scale_numel, scale_stride,
 *              zp, zp_numel, zp_stride, rank, up, up_dtype, up_numel, us0, us1,
 *              down, down_dtype, down_numel, ds0, ds1, lowrank, lowrank_numel, work, work_numel,
 *              stream) -> int                  # 0: launched; else the refusal's status (nothing ran)
 *     def gemv_supported(<the same arguments>) -> int   # 0 (OK) or the status gemv would return
 *     def gemv_work_floats(M, N) -> int        # gemv's work_numel for its full grid on this device
 *     def gemv_lowrank_floats(M, rank) -> int  # gemv's lowrank_numel for its best split of the SVD branch
 *     def quantize_rows(x, x_dtype, rows, cols, ldx, x_numel, q, q_dtype, q_numel,
 *                       scale, scale_numel, stream) -> None
 *     def scale_epilogue(M, N, acc, acc_dtype, acc_numel, a_scale, a_scale_numel, b_scale,
 *                        b_scale_dtype, b_scale_numel, b_scale_stride, bias, bias_numel,
 *                        out, out_dtype, out_numel, stream) -> None
 *     def lt_matmul(device, M, N, K, in_dtype, a, a_numel, b, b_numel, b_kn, d, d_dtype, d_numel,
 *                   a_scale, b_scale, bias, workspace, workspace_bytes, fast_accum, stream) -> None
 *     def i8_gemm(M, N, K, a, a_numel, b, b_numel, a_scale, a_scale_numel, b_scale, b_scale_dtype,
 *                 b_scale_numel, b_scale_stride, bias, bias_numel, out, out_dtype, out_numel,
 *                 stream) -> int               # 0: launched; UNSUPPORTED: refused (nothing ran)
 *     def i8_gemm_available() -> bool           # the current device runs i8_gemm
 */
#define PY_SSIZE_T_CLEAN
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#include <Python.h>

#include "pyargs.h"
#include "sdnq/sdnq_cuda.h"

#define MAX_DEVICES 64

typedef struct {
    PyObject *error;                  /* comfy_sdnq._C_cuda.SdnqError            */
    sdnq_cuda_lt *lt[MAX_DEVICES];    /* cuBLASLt contexts, created on first use */
} module_state;

static inline module_state *get_state(PyObject *module) { return (module_state *)PyModule_GetState(module); }

static PyObject *raise_status(PyObject *module, const char *fname, sdnq_status st) {
    PyObject *msg = PyUnicode_FromFormat("%s: %s (status %d)", fname, sdnq_status_str(st), (int)st);
    if (msg == NULL) return NULL;
    PyObject *exc = PyObject_CallFunction(get_state(module)->error, "Oi", msg, (int)st);
    Py_DECREF(msg);
    if (exc == NULL) return NULL;
    PyErr_SetObject(get_state(module)->error, exc);
    Py_DECREF(exc);
    return NULL;
}

#define DONE(fname, call)                                            \
    do {                                                             \
        sdnq_status st_ = (call);                                    \
        if (st_ != SDNQ_OK) return raise_status(module, fname, st_); \
        Py_RETURN_NONE;                                              \
    } while (0)

/* ------------------------------------------------------------------------ */

PyDoc_STRVAR(dequantize_doc, "dequantize(type, outer, red, inner, codes, codes_bytes, scale, scale_dtype, "
                             "scale_numel, ss0, ss1, ss2, zp, zp_numel, zs0, zs1, codebook, out, out_dtype, "
                             "out_numel, os0, os1, os2, stream)");

static PyObject *dequantize(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[24];
    if (parse_i64("dequantize", args, nargs, 24, a) < 0) return NULL;
    sdnq_dequant_desc d = dequant_desc_from(a);
    DONE("dequantize", sdnq_cuda_dequantize(&d, PTR(a[23])));
}

PyDoc_STRVAR(dequantize_svd_doc, "dequantize_svd(<dequantize's arguments but stream>, rows, cols, rank, up, "
                                 "up_dtype, up_numel, us0, us1, down, down_dtype, down_numel, ds0, ds1, stream)");

static PyObject *dequantize_svd(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[37];
    if (parse_i64("dequantize_svd", args, nargs, 37, a) < 0) return NULL;
    sdnq_dequant_desc d = dequant_desc_from(a);
    /* the SVD branch writes the dequantized weight: w = out (a[17..19]), then a[23..35] */
    const int64_t sv[16] = {a[17], a[18], a[23], a[24], a[19], a[25], a[26], a[27],
                            a[28], a[29], a[30], a[31], a[32], a[33], a[34], a[35]};
    sdnq_svd_desc s = svd_desc_from(sv);
    DONE("dequantize_svd", sdnq_cuda_dequantize_svd(&d, &s, PTR(a[36])));
}

PyDoc_STRVAR(dequantize_q8_doc, "dequantize_q8(<dequantize's arguments but stream, out = q (int8), out_dtype = "
                                "w's rounding, out_numel = q's>, rows, cols, row_scale, row_scale_numel, "
                                "derive_scales, stream) -> 0 when launched, UNSUPPORTED when refused (nothing ran)");

static PyObject *dequantize_q8(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[29];
    if (parse_i64("dequantize_q8", args, nargs, 29, a) < 0) return NULL;
    sdnq_dequant_desc d = dequant_desc_from(a);
    const sdnq_q8_desc q = {
        .q = (int8_t *)PTR(a[17]),
        .q_numel = a[19],
        .rows = a[23],
        .cols = a[24],
        .row_scale = (float *)PTR(a[25]),
        .row_scale_numel = a[26],
        .derive_scales = (int32_t)a[27],
    };
    sdnq_status st = sdnq_cuda_dequantize_q8(&d, &q, PTR(a[28]));
    if (st != SDNQ_OK && st != SDNQ_ERR_UNSUPPORTED) return raise_status(module, "dequantize_q8", st);
    return PyLong_FromLong((long)st);
}

PyDoc_STRVAR(svd_add_doc, "svd_add(w, w_dtype, rows, cols, w_numel, rank, up, up_dtype, up_numel, us0, us1, "
                          "down, down_dtype, down_numel, ds0, ds1, stream)");

static PyObject *svd_add(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[17];
    if (parse_i64("svd_add", args, nargs, 17, a) < 0) return NULL;
    sdnq_svd_desc d = svd_desc_from(a);
    DONE("svd_add", sdnq_cuda_svd_add(&d, PTR(a[16])));
}

PyDoc_STRVAR(hadamard_doc, "hadamard(w, w_dtype, rows, cols, w_numel, h, kind, stream)");

static PyObject *hadamard(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[8];
    if (parse_i64("hadamard", args, nargs, 8, a) < 0) return NULL;
    DONE("hadamard", sdnq_cuda_hadamard(PTR(a[0]), (int32_t)a[1], a[2], a[3], a[4], a[5], (int32_t)a[6], PTR(a[7])));
}

#define GEMV_NARGS 39

static int gemv_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, sdnq_gemv_desc *d, void **stream) {
    int64_t a[GEMV_NARGS];
    if (parse_i64(fname, args, nargs, GEMV_NARGS, a) < 0) return -1;
    *d = (sdnq_gemv_desc){
        .type = (int32_t)a[0],
        .M = a[1],
        .N = a[2],
        .K = a[3],
        .x = CPTR(a[4]),
        .x_dtype = (int32_t)a[5],
        .x_numel = a[6],
        .ldx = a[7],
        .y = PTR(a[8]),
        .y_numel = a[9],
        .ldy = a[10],
        .bias = CPTR(a[11]),
        .bias_numel = a[12],
        .codes = CPTR(a[13]),
        .codes_bytes = a[14],
        .red = a[15],
        .scale = CPTR(a[16]),
        .scale_dtype = (int32_t)a[17],
        .scale_numel = a[18],
        .scale_stride = a[19],
        .zero_point = CPTR(a[20]),
        .zp_numel = a[21],
        .zp_stride = a[22],
        .rank = a[23],
        .up = CPTR(a[24]),
        .up_dtype = (int32_t)a[25],
        .up_numel = a[26],
        .up_stride = {a[27], a[28]},
        .down = CPTR(a[29]),
        .down_dtype = (int32_t)a[30],
        .down_numel = a[31],
        .down_stride = {a[32], a[33]},
        .lowrank = (float *)PTR(a[34]),
        .lowrank_numel = a[35],
        .work = (float *)PTR(a[36]),
        .work_numel = a[37],
    };
    *stream = PTR(a[38]);
    return 0;
}

PyDoc_STRVAR(gemv_doc, "gemv(type, M, N, K, x, x_dtype, x_numel, ldx, y, y_numel, ldy, bias, bias_numel, codes, "
                       "codes_bytes, red, scale, scale_dtype, scale_numel, scale_stride, zp, zp_numel, zp_stride, "
                       "rank, up, up_dtype, up_numel, us0, us1, down, down_dtype, down_numel, ds0, ds1, lowrank, "
                       "lowrank_numel, work, work_numel, stream) -> 0 when launched, else the status of the "
                       "refusal (nothing ran)");

/* validation and launch in one call: a refused descriptor returns its status (the
 * caller falls back to dequantize + GEMM); only a failed launch raises */
static PyObject *gemv(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    sdnq_gemv_desc d;
    void *stream;
    if (gemv_args("gemv", args, nargs, &d, &stream) < 0) return NULL;
    sdnq_status st = sdnq_cuda_gemv(&d, stream);
    if (st == SDNQ_ERR_DEVICE) return raise_status(module, "gemv", st);
    return PyLong_FromLong((long)st);
}

PyDoc_STRVAR(gemv_supported_doc, "gemv_supported(<gemv's arguments>) -> 0 if gemv takes them, else its status");

static PyObject *gemv_supported(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    sdnq_gemv_desc d;
    void *stream;
    if (gemv_args("gemv_supported", args, nargs, &d, &stream) < 0) return NULL;
    return PyLong_FromLong((long)sdnq_cuda_gemv_supported(&d));
}

PyDoc_STRVAR(gemv_work_floats_doc, "gemv_work_floats(M, N) -> the work_numel that gives gemv its full grid on the "
                                   "current device");

static PyObject *gemv_work_floats(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[2];
    if (parse_i64("gemv_work_floats", args, nargs, 2, a) < 0) return NULL;
    const int64_t n = sdnq_cuda_gemv_work_floats(a[0], a[1]);
    if (n < 0) return raise_status(module, "gemv_work_floats", SDNQ_ERR_SIZE);
    return PyLong_FromLongLong((long long)n);
}

PyDoc_STRVAR(gemv_lowrank_floats_doc, "gemv_lowrank_floats(M, rank) -> the lowrank_numel that gives gemv's SVD "
                                      "branch its best split");

static PyObject *gemv_lowrank_floats(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[2];
    if (parse_i64("gemv_lowrank_floats", args, nargs, 2, a) < 0) return NULL;
    if (a[0] < 1 || a[0] > SDNQ_GEMV_MAX_M || a[1] < 0 || a[1] > INT32_MAX)
        return raise_status(module, "gemv_lowrank_floats", SDNQ_ERR_SIZE);
    return PyLong_FromLongLong((long long)SDNQ_GEMV_LOWRANK_FLOATS(a[0], a[1], SDNQ_GEMV_LOWRANK_SPLITS));
}

PyDoc_STRVAR(quantize_rows_doc, "quantize_rows(x, x_dtype, rows, cols, ldx, x_numel, q, q_dtype, q_numel, scale, "
                                "scale_numel, stream)");

static PyObject *quantize_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[12];
    if (parse_i64("quantize_rows", args, nargs, 12, a) < 0) return NULL;
    DONE("quantize_rows", sdnq_cuda_quantize_rows(CPTR(a[0]), (int32_t)a[1], a[2], a[3], a[4], a[5], PTR(a[6]),
                                                  (int32_t)a[7], a[8], (float *)PTR(a[9]), a[10], PTR(a[11])));
}

PyDoc_STRVAR(scale_epilogue_doc, "scale_epilogue(M, N, acc, acc_dtype, acc_numel, a_scale, a_scale_numel, b_scale, "
                                 "b_scale_dtype, b_scale_numel, b_scale_stride, bias, bias_numel, out, out_dtype, "
                                 "out_numel, stream)");

static PyObject *scale_epilogue(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[17];
    if (parse_i64("scale_epilogue", args, nargs, 17, a) < 0) return NULL;
    sdnq_epilogue_desc d = {
        .M = a[0],
        .N = a[1],
        .acc = CPTR(a[2]),
        .acc_dtype = (int32_t)a[3],
        .acc_numel = a[4],
        .a_scale = (const float *)CPTR(a[5]),
        .a_scale_numel = a[6],
        .b_scale = CPTR(a[7]),
        .b_scale_dtype = (int32_t)a[8],
        .b_scale_numel = a[9],
        .b_scale_stride = a[10],
        .bias = CPTR(a[11]),
        .bias_numel = a[12],
        .out = PTR(a[13]),
        .out_dtype = (int32_t)a[14],
        .out_numel = a[15],
    };
    DONE("scale_epilogue", sdnq_cuda_scale_epilogue(&d, PTR(a[16])));
}

PyDoc_STRVAR(lt_matmul_doc, "lt_matmul(device, M, N, K, in_dtype, a, a_numel, b, b_numel, b_kn, d, d_dtype, "
                            "d_numel, a_scale, b_scale, bias, workspace, workspace_bytes, fast_accum, stream)");

static PyObject *lt_matmul(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[20];
    if (parse_i64("lt_matmul", args, nargs, 20, a) < 0) return NULL;
    if (a[0] < 0 || a[0] >= MAX_DEVICES) {
        PyErr_Format(PyExc_ValueError, "lt_matmul: device index %lld out of range", (long long)a[0]);
        return NULL;
    }
    module_state *state = get_state(module);
    if (state->lt[a[0]] == NULL) {
        sdnq_status st = sdnq_cuda_lt_create(&state->lt[a[0]]);
        if (st != SDNQ_OK) return raise_status(module, "lt_matmul (cublasLtCreate)", st);
    }
    sdnq_lt_matmul_desc d = {
        .M = a[1],
        .N = a[2],
        .K = a[3],
        .in_dtype = (int32_t)a[4],
        .a = CPTR(a[5]),
        .a_numel = a[6],
        .b = CPTR(a[7]),
        .b_numel = a[8],
        .b_kn = (int32_t)a[9],
        .d = PTR(a[10]),
        .d_dtype = (int32_t)a[11],
        .d_numel = a[12],
        .a_scale = (const float *)CPTR(a[13]),
        .b_scale = (const float *)CPTR(a[14]),
        .bias = CPTR(a[15]),
        .workspace = PTR(a[16]),
        .workspace_bytes = a[17],
        .fast_accum = (int32_t)a[18],
    };
    DONE("lt_matmul", sdnq_cuda_lt_matmul(state->lt[a[0]], &d, PTR(a[19])));
}

PyDoc_STRVAR(i8_gemm_doc, "i8_gemm(M, N, K, a, a_numel, b, b_numel, a_scale, a_scale_numel, b_scale, "
                          "b_scale_dtype, b_scale_numel, b_scale_stride, bias, bias_numel, out, out_dtype, "
                          "out_numel, stream) -> 0 when launched, UNSUPPORTED when refused (nothing ran)");

/* a refusal (no sm_90a device or build, or an operand TMA cannot address) returns its status:
 * the caller keeps the cuBLASLt path; inconsistent arguments raise */
static PyObject *i8_gemm(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[19];
    if (parse_i64("i8_gemm", args, nargs, 19, a) < 0) return NULL;
    sdnq_i8_gemm_desc d = {
        .M = a[0],
        .N = a[1],
        .K = a[2],
        .a = CPTR(a[3]),
        .a_numel = a[4],
        .b = CPTR(a[5]),
        .b_numel = a[6],
        .a_scale = (const float *)CPTR(a[7]),
        .a_scale_numel = a[8],
        .b_scale = CPTR(a[9]),
        .b_scale_dtype = (int32_t)a[10],
        .b_scale_numel = a[11],
        .b_scale_stride = a[12],
        .bias = CPTR(a[13]),
        .bias_numel = a[14],
        .out = PTR(a[15]),
        .out_dtype = (int32_t)a[16],
        .out_numel = a[17],
    };
    sdnq_status st = sdnq_cuda_i8_gemm(&d, PTR(a[18]));
    if (st != SDNQ_OK && st != SDNQ_ERR_UNSUPPORTED) return raise_status(module, "i8_gemm", st);
    return PyLong_FromLong((long)st);
}

PyDoc_STRVAR(i8_gemm_available_doc, "i8_gemm_available() -> whether the current device runs i8_gemm");

static PyObject *i8_gemm_available(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    (void)args;
    if (nargs != 0) {
        PyErr_SetString(PyExc_TypeError, "i8_gemm_available() takes no arguments");
        return NULL;
    }
    return PyBool_FromLong(sdnq_cuda_i8_gemm_available());
}

/* ------------------------------------------------------------------------ */
/* module                                                                    */

static PyMethodDef module_methods[] = {
    {"dequantize",     (PyCFunction)(void (*)(void))dequantize,     METH_FASTCALL, dequantize_doc},
    {"dequantize_svd", (PyCFunction)(void (*)(void))dequantize_svd, METH_FASTCALL, dequantize_svd_doc},
    {"svd_add",        (PyCFunction)(void (*)(void))svd_add,        METH_FASTCALL, svd_add_doc},
    {"hadamard",       (PyCFunction)(void (*)(void))hadamard,       METH_FASTCALL, hadamard_doc},
    {"gemv",           (PyCFunction)(void (*)(void))gemv,           METH_FASTCALL, gemv_doc},
    {"gemv_supported", (PyCFunction)(void (*)(void))gemv_supported, METH_FASTCALL, gemv_supported_doc},
    {"gemv_work_floats", (PyCFunction)(void (*)(void))gemv_work_floats, METH_FASTCALL, gemv_work_floats_doc},
    {"gemv_lowrank_floats", (PyCFunction)(void (*)(void))gemv_lowrank_floats, METH_FASTCALL,
     gemv_lowrank_floats_doc},
    {"quantize_rows",  (PyCFunction)(void (*)(void))quantize_rows,  METH_FASTCALL, quantize_rows_doc},
    {"scale_epilogue", (PyCFunction)(void (*)(void))scale_epilogue, METH_FASTCALL, scale_epilogue_doc},
    {"lt_matmul",      (PyCFunction)(void (*)(void))lt_matmul,      METH_FASTCALL, lt_matmul_doc},
    {"dequantize_q8",  (PyCFunction)(void (*)(void))dequantize_q8,  METH_FASTCALL, dequantize_q8_doc},
    {"i8_gemm",        (PyCFunction)(void (*)(void))i8_gemm,        METH_FASTCALL, i8_gemm_doc},
    {"i8_gemm_available", (PyCFunction)(void (*)(void))i8_gemm_available, METH_FASTCALL, i8_gemm_available_doc},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *module) {
    module_state *state = get_state(module);
    state->error = PyErr_NewException("comfy_sdnq._C_cuda.SdnqError", PyExc_ValueError, NULL);
    if (state->error == NULL) return -1;
    if (PyModule_AddObjectRef(module, "SdnqError", state->error) < 0) return -1;
    if (PyModule_AddIntConstant(module, "API_VERSION", SDNQ_API_VERSION) < 0) return -1;
    if (PyModule_AddIntConstant(module, "UNSUPPORTED", SDNQ_ERR_UNSUPPORTED) < 0) return -1;
    if (PyModule_AddIntConstant(module, "GEMV_MAX_M", SDNQ_GEMV_MAX_M) < 0) return -1;
    if (PyModule_AddIntConstant(module, "GEMV_LOWRANK_SPLITS", SDNQ_GEMV_LOWRANK_SPLITS) < 0) return -1;
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg) {
    module_state *state = get_state(module);
    Py_VISIT(state->error);
    return 0;
}

/* The cuBLASLt contexts are not destroyed: at interpreter exit the CUDA
 * runtime may already be torn down (torch leaks its handles for the same
 * reason); they live as long as the process. */
static int module_clear(PyObject *module) {
    module_state *state = get_state(module);
    Py_CLEAR(state->error);
    return 0;
}

static void module_free(void *module) { (void)module_clear((PyObject *)module); }

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "comfy_sdnq._C_cuda",
    .m_doc = "CUDA kernels of comfy_sdnq: SDNQ dequantization, small-M linear, W8A8 GEMM pieces.",
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModuleDef_Init(&module_def); }
