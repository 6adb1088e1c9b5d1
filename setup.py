"""Build comfy_sdnq._C (C11, no libtorch link) and, where nvcc is found, comfy_sdnq._C_cuda.

    pip install .                      # or: python setup.py build_ext --inplace

Both are abi3 extensions. _C_cuda holds the CUDA kernels (csrc/cuda); it links cudart and
cuBLASLt from the nvidia-*-cu13 wheels torch depends on (found through the `nvidia` namespace
package, or a CUDA toolkit that ships cublasLt.h), which torch has loaded before it is imported.

Environment:
    COMFY_SDNQ_WERROR=1     treat compiler warnings as errors (CI)
    COMFY_SDNQ_NO_OPENMP=1  build the serial fallback
    COMFY_SDNQ_SANITIZE=1   build _C with ASan + UBSan (tests); skips _C_cuda unless COMFY_SDNQ_CUDA=1
    COMFY_SDNQ_CUDA=0|1     never / always (fail without nvcc) build _C_cuda; default: if nvcc is found
    COMFY_SDNQ_CUDA_ARCHS   nvcc -gencode list, e.g. "arch=compute_90a,code=sm_90a" (';'-separated)
    NVCC                    the nvcc to use (default: on PATH, then $CUDA_HOME/bin)
"""
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["csrc/types.c", "csrc/pack.c", "csrc/values.c", "csrc/dequant.c", "csrc/quant.c", "csrc/linalg.c",
           "csrc/module.c"]
CUDA_SOURCES = ["csrc/types.c", "csrc/cuda/module_cuda.c", "csrc/cuda/dequant.cu", "csrc/cuda/svd_add.cu",
                "csrc/cuda/hadamard.cu", "csrc/cuda/gemv.cu", "csrc/cuda/w8a8.cu", "csrc/cuda/lt_matmul.cu",
                "csrc/cuda/i8_gemm.cu"]
# sm_80 (A100), sm_89 (Ada), sm_90a (Hopper), sm_100a (Blackwell DC), sm_120 (Blackwell desktop), + PTX for newer
CUDA_ARCHS = ["arch=compute_80,code=sm_80", "arch=compute_89,code=sm_89", "arch=compute_90a,code=sm_90a",
              "arch=compute_100a,code=sm_100a", "arch=compute_120,code=sm_120", "arch=compute_90,code=compute_90"]
INCLUDES = [os.path.join(ROOT, "include"), os.path.join(ROOT, "csrc")]


def _env(name):
    return os.environ.get(name, "") not in ("", "0")


def _compiles(compiler, flags, code="int main(void){return 0;}\n"):
    """Whether the compiler accepts flags for a tiny C program."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        except Exception:
            return False
    return True


def _nvcc():
    cands = [os.environ.get("NVCC"), shutil.which("nvcc")]
    cands += [os.path.join(os.environ[v], "bin", "nvcc") for v in ("CUDA_HOME", "CUDA_PATH") if v in os.environ]
    cands.append("/usr/local/cuda/bin/nvcc")
    return next((c for c in cands if c and os.path.isfile(c)), None)


def _cublas_dirs(nvcc):
    """(include dir, lib dir) holding cublasLt.h and libcublasLt.so.13: torch's nvidia wheel, or the toolkit"""
    roots = []
    try:
        import nvidia  # the namespace package of the nvidia-*-cu13 wheels torch depends on

        roots += [os.path.join(p, "cu13") for p in nvidia.__path__]
    except ImportError:
        pass
    roots.append(os.path.dirname(os.path.dirname(nvcc)))
    for r in roots:
        for lib in ("lib", "lib64"):
            if os.path.isfile(os.path.join(r, "include", "cublasLt.h")) and os.path.exists(
                    os.path.join(r, lib, "libcublasLt.so.13")):
                return os.path.join(r, "include"), os.path.join(r, lib)
    return None


class BuildExt(build_ext):
    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        cflags, ldflags, omp = [], [], []
        if msvc:
            cflags += ["/std:c11", "/O2", "/W4", "/fp:precise"] + (["/WX"] if _env("COMFY_SDNQ_WERROR") else [])
            omp = [] if _env("COMFY_SDNQ_NO_OPENMP") else ["/openmp", "/DSDNQ_WITH_OPENMP"]
        else:
            cflags += ["-std=c11", "-O3", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Wextra",
                       "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
            if _env("COMFY_SDNQ_WERROR"):
                cflags.append("-Werror")
            if not _env("COMFY_SDNQ_NO_OPENMP") and _compiles(self.compiler, ["-fopenmp"]):
                omp = ["-fopenmp", "-DSDNQ_WITH_OPENMP"]
            if _env("COMFY_SDNQ_SANITIZE"):
                san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
                cflags += san + ["-O1", "-g"]
                ldflags += san
        for ext in self.extensions:
            use_omp = omp if ext.name == "comfy_sdnq._C" else []
            ext.extra_compile_args = cflags + use_omp + ext.extra_compile_args
            ext.extra_link_args = ldflags + [f for f in use_omp if not f.startswith(("-D", "/D"))] + ext.extra_link_args
            if any(s.endswith(".cu") for s in ext.sources):
                self._build_cuda_objects(ext)
        super().build_extensions()

    def _build_cuda_objects(self, ext):
        """compile ext's .cu sources with nvcc (in parallel, only when out of date); link them in"""
        nvcc, (cub_inc, cub_lib) = ext.nvcc, ext.cublas
        archs = [a for a in os.environ.get("COMFY_SDNQ_CUDA_ARCHS", "").split(";") if a] or CUDA_ARCHS
        flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "--threads", "0", "-DPy_LIMITED_API=0x030A0000",
                 "-Xcompiler", "-fPIC,-Wall,-Wextra,-fno-exceptions,-fno-threadsafe-statics"]
        flags += [f"-I{d}" for d in INCLUDES]
        flags += ["-isystem", cub_inc] + [f"-gencode={a}" for a in archs]
        if _env("COMFY_SDNQ_WERROR"):
            flags += ["-Werror", "all-warnings", "-Xcompiler", "-Werror"]
        cus = [s for s in ext.sources if s.endswith(".cu")]
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        dirs = [os.path.join(ROOT, d) for d in ("csrc", "csrc/cuda", "include/sdnq")]
        deps = [os.path.join(d, f) for d in dirs for f in os.listdir(d)]
        newest = max(os.path.getmtime(p) for p in deps + [__file__])
        outdir = os.path.join(self.build_temp, "cuda")
        os.makedirs(outdir, exist_ok=True)

        def compile_one(src):
            obj = os.path.join(outdir, os.path.basename(src)[:-3] + ".o")
            if not (os.path.exists(obj) and os.path.getmtime(obj) >= newest and not self.force):
                print(f"nvcc {src}", flush=True)
                subprocess.run([nvcc, *flags, "-c", src, "-o", obj], check=True)
            return obj

        with ThreadPoolExecutor(max_workers=max(1, min(len(cus), os.cpu_count() or 1))) as pool:
            objs = list(pool.map(compile_one, cus))
        ext.extra_objects = objs + ext.extra_objects
        ext.depends = ext.depends + objs  # relink when an object changed
        ext.extra_link_args += [f"-L{cub_lib}", "-l:libcublasLt.so.13", "-l:libcudart.so.13", "-lm",
                                "-Wl,-rpath,$ORIGIN/../nvidia/cu13/lib"]


class BuildPy(build_py):
    """Ship include/sdnq/types.def inside the package: the Python view parses it."""

    def run(self):
        super().run()
        dst = os.path.join(self.build_lib, "comfy_sdnq", "types.def")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(ROOT, "include", "sdnq", "types.def"), dst)


def _extensions():
    common = dict(include_dirs=INCLUDES, define_macros=[("Py_LIMITED_API", "0x030A0000")], py_limited_api=True)
    exts = [Extension("comfy_sdnq._C", sources=SOURCES, **common)]
    want = os.environ.get("COMFY_SDNQ_CUDA", "")
    if want == "0" or (want == "" and _env("COMFY_SDNQ_SANITIZE")):
        return exts
    nvcc = _nvcc()
    cublas = _cublas_dirs(nvcc) if nvcc else None
    if nvcc is None or cublas is None:
        if want == "1":
            raise RuntimeError(f"COMFY_SDNQ_CUDA=1 but no {'nvcc' if nvcc is None else 'cublasLt.h/libcublasLt.so.13'}"
                               " was found (set NVCC / install torch's nvidia-cublas wheel)")
        print("comfy_sdnq: nvcc or cuBLASLt not found; building without the CUDA module", flush=True)
        return exts
    cuda = Extension("comfy_sdnq._C_cuda", sources=CUDA_SOURCES, **common)
    cuda.nvcc, cuda.cublas = nvcc, cublas
    return exts + [cuda]


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
