"""tests/test_cuda.py without a GPU: the CUDA sources compiled for the CPU under tests/cuda_emu.

csrc/cuda/*.cu (all but the cuBLASLt wrapper, replaced by tests/cuda_emu/lt_emu.cpp) and the
CPython binding module_cuda.c are compiled with g++/gcc, -DSDNQ_CUDA_EMU, into a stand-in for
comfy_sdnq._C_cuda that runs every kernel on host memory: blocks in sequence, the threads of a
block as coroutines meeting at __syncthreads, warp-collective mma.sync / shuffles exchanged per
warp (tests/cuda_emu/cuda_emu.h). The launchers, argument checks, index arithmetic, bit
unpacking, fragment layouts and tails are the very code the GPU runs; what the emulation cannot
show is timing, memory-model races and device-specific rounding of the tensor cores.

The checks are tests/test_cuda.py's, run with DEV = "cpu", the C core (impl="ref") as the
reference and the emulated kernels behind impl="fast". Needs g++ and the Python headers; the
build (about a minute) is cached in build/cuda_emu.
"""
import os
import shutil
import subprocess
import sysconfig
import tempfile

import pytest
import test_cuda as T
import torch

from comfy_sdnq import dtypes, kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "cuda_emu")
CU = ["dequant.cu", "svd_add.cu", "hadamard.cu", "gemv.cu", "w8a8.cu", "i8_gemm.cu"]


def _sources():
    cu = [os.path.join(ROOT, "csrc", "cuda", f) for f in CU] + [os.path.join(ROOT, "tests", "cuda_emu", "lt_emu.cpp")]
    c = [os.path.join(ROOT, "csrc", "types.c"), os.path.join(ROOT, "csrc", "cuda", "module_cuda.c")]
    return cu, c


def _build():
    """the emulated extension, rebuilt when a source or header is newer"""
    so = os.path.join(OUT, "_C_cuda_emu.so")
    cu, c = _sources()
    deps = cu + c + [os.path.join(d, f) for d in (os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "cuda"),
                                                  os.path.join(ROOT, "include", "sdnq"),
                                                  os.path.join(ROOT, "tests", "cuda_emu")) for f in os.listdir(d)]
    if os.path.exists(so) and os.path.getmtime(so) >= max(os.path.getmtime(p) for p in deps):
        return so
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(dir=OUT)  # concurrent test runs build side by side; the .so is replaced atomically
    inc = ["-I" + os.path.join(ROOT, "include"), "-I" + os.path.join(ROOT, "csrc"),
           "-I" + os.path.join(ROOT, "tests", "cuda_emu"), "-I" + sysconfig.get_paths()["include"]]
    flags = ["-O1", "-g", "-fPIC", "-ffp-contract=off", "-DSDNQ_CUDA_EMU", "-DPy_LIMITED_API=0x030A0000", "-w"]
    objs = []
    for src in cu:
        obj = os.path.join(work, os.path.basename(src) + ".o")
        subprocess.run(["g++", "-std=c++17", *flags, *inc, "-x", "c++", "-c", src, "-o", obj], check=True)
        objs.append(obj)
    for src in c:
        obj = os.path.join(work, os.path.basename(src) + ".o")
        subprocess.run(["gcc", "-std=c11", *flags, *inc, "-c", src, "-o", obj], check=True)
        objs.append(obj)
    tmp = os.path.join(work, "_C_cuda_emu.so")
    subprocess.run(["g++", "-shared", *objs, "-o", tmp], check=True)
    os.replace(tmp, so)
    shutil.rmtree(work, ignore_errors=True)
    return so


@pytest.fixture(scope="module")
def emu_module():
    if shutil.which("g++") is None or shutil.which("gcc") is None:
        pytest.skip("g++/gcc not found")
    if kernels.backend() != "c":
        pytest.skip("the C extension is the reference")
    import importlib.machinery
    import importlib.util

    so = _build()
    loader = importlib.machinery.ExtensionFileLoader("comfy_sdnq._C_cuda", so)
    spec = importlib.util.spec_from_file_location("comfy_sdnq._C_cuda", so, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


@pytest.fixture
def emu(emu_module, monkeypatch):
    """kernels run the emulated module on CPU tensors; test_cuda's checks run on the CPU"""
    monkeypatch.setattr(kernels, "_C_cuda", emu_module)
    monkeypatch.setattr(kernels, "_CUDA_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(T, "DEV", "cpu")
    monkeypatch.setattr(T, "EMU", True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.delenv("COMFY_SDNQ_W8A8", raising=False)
    monkeypatch.delenv("COMFY_SDNQ_W4A8", raising=False)
    return emu_module


# a cross-section of the type table: every family and packing width (the GPU run takes all)
EMU_TYPES = [dtypes.get(n) for n in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int2", "int3", "int4",
                                     "int5", "int6", "int7", "uint1", "uint2", "uint3", "uint4", "uint5", "uint6",
                                     "uint7", "int9", "uint11", "int13", "uint15", "int10", "uint12", "int14",
                                     "float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2",
                                     "float8_e8m0fnu", "float8_e4m3fnuz", "float5_e2m2fn", "float4_e2m1fn",
                                     "float8_e4m3fn_sdnq", "float16_e5m10fn", "float11_e4m7fnu", "float3_e1m1fn",
                                     "float1_e1m0fnu", "float9_e3m5fn", "float6_e3m3fnu")]


def test_emu_extension(emu):
    assert kernels.cuda_backend() == "cuda"


@pytest.mark.parametrize("t", EMU_TYPES, ids=lambda t: t.name)
def test_emu_dequant_every_type(emu, t):
    T.test_dequant_every_type(t)


@pytest.mark.parametrize("t", EMU_TYPES, ids=lambda t: t.name)
def test_emu_dequant_transposed_and_tail(emu, t):
    T.test_dequant_transposed_and_tail(t)


@pytest.mark.parametrize("name", T.SUBSET)
def test_emu_dequant_dtypes(emu, name):
    for sdt in (T.F32, T.BF16, T.F16):
        for odt in (T.F32, T.BF16, T.F16):
            T.test_dequant_dtypes(name, sdt, odt)


@pytest.mark.parametrize("name", ["uint4", "uint8", "uint2", "uint6", "uint11"])
def test_emu_dequant_codebook(emu, name):
    T.test_dequant_codebook(name)


@pytest.mark.parametrize("name", ["uint4", "int8", "int5", "float8_e4m3fn", "uint11", "bfloat16"])
def test_emu_dequant_unaligned_codes(emu, name):
    T.test_dequant_unaligned_codes(name)


def test_emu_dequant_errors(emu):
    T.test_dequant_errors_are_reported()


@pytest.mark.parametrize("name", ["uint4", "int8", "int5", "float8_e4m3fn", "int3"])
@pytest.mark.parametrize("case", [(100, 264, 40, 24, False), (130, 136, 16, 17, True), (7, 8, 3, 8, False),
                                  (200, 520, 32, 80, False), (64, 128, 32, 128, True), (96, 256, 20, 64, False),
                                  (200, 640, 32, 64, False)])
def test_emu_dequant_svd(emu, name, case):
    for odt in (T.BF16, T.F16, T.F32):
        T.test_dequant_svd(name, odt, *case)


@pytest.mark.parametrize("name", ["uint4", "int8", "int5"])
@pytest.mark.parametrize("M", [1, 9])
def test_emu_gemv_svd(emu, name, M):
    T.test_gemv_svd(name, M, M == 9, 72, 384, 128, 24)
    T.test_gemv_svd(name, M, M != 9, 40, 4096, 256, 2)
    T.test_gemv_svd(name, M, M == 9, 56, 256, 128, 40)


@pytest.mark.parametrize("form", ["f32", "odd_rank", "k_strided", "f16"])
@pytest.mark.parametrize("M", [1, 9])
def test_emu_gemv_svd_down_forms(emu, form, M):
    T.test_gemv_svd_down_forms(form, M)


@pytest.mark.parametrize("shape", [(64, 384, 8), (37, 70, 3), (5, 700, 40)])
def test_emu_svd_add(emu, shape):
    for wdt in (T.F32, T.BF16):
        T.test_svd_add(wdt, shape)


@pytest.mark.parametrize("h,h4", [(32, False), (64, True), (256, True), (4096, True), (2, False)])
def test_emu_hadamard(emu, h, h4):
    T.test_hadamard(T.BF16, h, h4)


@pytest.mark.parametrize("name", ["uint4", "int4", "int8", "int5", "float8_e4m3fn", "float4_e2m1fn", "uint2",
                                  "int3", "uint7", "int6"])
@pytest.mark.parametrize("M", [1, 3, 16])
def test_emu_gemv(emu, name, M):
    T.test_gemv(name, M)


@pytest.mark.parametrize("name", ["uint4", "int8", "float8_e4m3fn"])
@pytest.mark.parametrize("M", [1, 9])
@pytest.mark.parametrize("wide", [True, False])
def test_emu_gemv_many_tiles(emu, name, M, wide):
    T.test_gemv_many_tiles(name, M, wide)


@pytest.mark.parametrize("M", [1, 9])
def test_emu_gemv_work_buffer(emu, M):
    T.test_gemv_work_buffer(M)


def test_emu_gemv_scratch_checks(emu, monkeypatch):
    T.test_gemv_scratch_checks(monkeypatch)


def test_emu_gemv_refuses(emu):
    T.test_gemv_refuses_and_linear_falls_back()


@pytest.mark.parametrize("M", [1, 5, 40])
@pytest.mark.parametrize("case", [("uint4", 64, 8, 0, False), ("int8", -1, 0, 0, False), ("int5", 32, 0, 64, False),
                                  ("int8", -1, 0, 0, True)])
def test_emu_linear_op(emu, M, case):
    T.test_linear_op_cuda(M, *case)


@pytest.mark.parametrize("path,name,tol", [("w8a8_int8", "int8", 0.03), ("w8a8_fp8", "float8_e4m3fn", 0.08),
                                           ("w8a8_fp8_fast", "float8_e4m3fn", 0.08), ("w4a8", "uint4", 0.03)])
def test_emu_w8a8(emu, path, name, tol):
    T.test_w8a8(path, name, tol, 33)


@pytest.mark.parametrize("shape", [(7, 301), (6, 264), (3, 1024), (3, 1032), (4, 3072), (3, 4104), (2, 16384),
                                   (2, 24576), (2, 24584)])
def test_emu_quantize_rows(emu, shape):
    T.test_quantize_rows(shape)


def test_emu_scale_epilogue(emu):
    for n in (96, 1040, 45):
        T.test_scale_epilogue(n)


def test_emu_i8_gemm_checks(emu):
    T.test_i8_gemm_checks()


@pytest.mark.parametrize("name,group", [("uint4", 128), ("int4", 32), ("int8", -1)])
def test_emu_dequantize_q8(emu, name, group):
    T.test_dequantize_q8(name, group, torch.bfloat16, torch.float32)


def test_emu_dequantize_q8_refusals_and_checks(emu):
    T.test_dequantize_q8_refusals_and_checks()


@pytest.mark.parametrize("name,group", [("uint4", 128), ("int4", 64)])
def test_emu_dequantize_q8_derived_scales(emu, name, group):
    T.test_dequantize_q8_derived_scales(name, group)


def test_emu_w4a8_one_pass(emu, monkeypatch):
    T.test_w4a8_one_pass(monkeypatch)
