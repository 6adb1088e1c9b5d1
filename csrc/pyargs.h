/*
 * csrc/pyargs.h - argument helpers shared by the two CPython modules
 * (csrc/module.c for _C, csrc/cuda/module_cuda.c for _C_cuda): integer
 * vectors from fastcall arguments, and the core's descriptors from them in
 * the argument order both modules document.
 */
#ifndef SDNQ_PYARGS_H
#define SDNQ_PYARGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "sdnq/sdnq.h"

#define PTR(x) ((void *)(intptr_t)(x))
#define CPTR(x) ((const void *)(intptr_t)(x))

/* Parse nargs integers (pointers, sizes) from a fastcall vector. */
static inline int parse_i64(const char *fname, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected,
                            int64_t *out) {
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", fname, expected, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        long long v = PyLong_AsLongLong(args[i]);
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s(): argument %zd must be an integer", fname, i + 1);
            return -1;
        }
        out[i] = (int64_t)v;
    }
    return 0;
}

/* a[0..22]: type, outer, red, inner, codes, codes_bytes, scale, scale_dtype, scale_numel,
 * ss0, ss1, ss2, zp, zp_numel, zs0, zs1, codebook, out, out_dtype, out_numel, os0, os1, os2 */
static inline sdnq_dequant_desc dequant_desc_from(const int64_t *a) {
    sdnq_dequant_desc d = {
        .type = (int32_t)a[0],
        .outer = a[1],
        .red = a[2],
        .inner = a[3],
        .codes = CPTR(a[4]),
        .codes_bytes = a[5],
        .scale = CPTR(a[6]),
        .scale_dtype = (int32_t)a[7],
        .scale_numel = a[8],
        .scale_stride = {a[9], a[10], a[11]},
        .zero_point = CPTR(a[12]),
        .zp_numel = a[13],
        .zp_stride = {a[14], a[15]},
        .codebook = (int32_t)a[16],
        .out = PTR(a[17]),
        .out_dtype = (int32_t)a[18],
        .out_numel = a[19],
        .out_stride = {a[20], a[21], a[22]},
    };
    return d;
}

/* a[0..15]: w, w_dtype, rows, cols, w_numel, rank, up, up_dtype, up_numel, us0, us1,
 * down, down_dtype, down_numel, ds0, ds1 */
static inline sdnq_svd_desc svd_desc_from(const int64_t *a) {
    sdnq_svd_desc d = {
        .w = PTR(a[0]),
        .w_dtype = (int32_t)a[1],
        .rows = a[2],
        .cols = a[3],
        .w_numel = a[4],
        .rank = a[5],
        .up = CPTR(a[6]),
        .up_dtype = (int32_t)a[7],
        .up_numel = a[8],
        .up_stride = {a[9], a[10]},
        .down = CPTR(a[11]),
        .down_dtype = (int32_t)a[12],
        .down_numel = a[13],
        .down_stride = {a[14], a[15]},
    };
    return d;
}

#endif /* SDNQ_PYARGS_H */
