"""Build comfy_sdnq._C: one abi3 extension of C11 sources, no libtorch link.

    pip install .                      # or: python setup.py build_ext --inplace

Environment:
    COMFY_SDNQ_WERROR=1     treat compiler warnings as errors (CI)
    COMFY_SDNQ_NO_OPENMP=1  build the serial fallback
    COMFY_SDNQ_SANITIZE=1   build with ASan + UBSan (tests)
"""
import os
import shutil
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["csrc/types.c", "csrc/pack.c", "csrc/values.c", "csrc/dequant.c", "csrc/quant.c", "csrc/linalg.c",
           "csrc/module.c"]


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


class BuildExt(build_ext):
    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        cflags, ldflags = [], []
        if msvc:
            cflags += ["/std:c11", "/O2", "/W4", "/fp:precise"]
            if _env("COMFY_SDNQ_WERROR"):
                cflags.append("/WX")
            if not _env("COMFY_SDNQ_NO_OPENMP"):
                cflags += ["/openmp", "/DSDNQ_WITH_OPENMP"]
        else:
            cflags += ["-std=c11", "-O3", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Wextra",
                       "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
            if _env("COMFY_SDNQ_WERROR"):
                cflags.append("-Werror")
            if not _env("COMFY_SDNQ_NO_OPENMP") and _compiles(self.compiler, ["-fopenmp"]):
                cflags += ["-fopenmp", "-DSDNQ_WITH_OPENMP"]
                ldflags.append("-fopenmp")
            if _env("COMFY_SDNQ_SANITIZE"):
                san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
                cflags += san + ["-O1", "-g"]
                ldflags += san
        for ext in self.extensions:
            ext.extra_compile_args = cflags + ext.extra_compile_args
            ext.extra_link_args = ldflags + ext.extra_link_args
        super().build_extensions()


class BuildPy(build_py):
    """Ship include/sdnq/types.def inside the package: the Python view parses it."""

    def run(self):
        super().run()
        dst = os.path.join(self.build_lib, "comfy_sdnq", "types.def")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(ROOT, "include", "sdnq", "types.def"), dst)


ext = Extension(
    "comfy_sdnq._C",
    sources=SOURCES,
    include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "csrc")],
    define_macros=[("Py_LIMITED_API", "0x030A0000")],
    py_limited_api=True,
)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
