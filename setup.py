"""Build the native runtime (bitdistill/runtime/_bdrt*.so) from C sources; everything else is in pyproject.

The library is loaded with ctypes (no Python C API), so it is an ordinary shared object that happens to be
built by setuptools' build_ext. AVX2/FMA code paths are selected at run time (per-function target
attributes + __builtin_cpu_supports), so one build runs on any x86-64 CPU; OpenMP is used when the compiler
supports -fopenmp and the library falls back to a single thread otherwise.
"""

from __future__ import annotations

import os
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = "src/bitdistill/runtime/csrc"


def _compiler_accepts(compiler, flags: list[str]) -> bool:
    """Compile and link a tiny OpenMP program with `flags` to see whether the toolchain supports them."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        except Exception:  # noqa: BLE001 - any failure means "not supported"
            return False
    return True


class BuildNative(build_ext):
    def build_extensions(self) -> None:
        ctype = self.compiler.compiler_type
        for ext in self.extensions:
            if ctype == "msvc":
                ext.extra_compile_args = ["/O2", "/openmp"]
                continue
            # No -ffast-math: activation rounding must stay round-half-even to match torch exactly.
            ext.extra_compile_args = ["-O3", "-fno-math-errno", "-std=c11"]
            if os.environ.get("BITDISTILL_NO_OPENMP") != "1" and _compiler_accepts(
                self.compiler, ["-fopenmp"]
            ):
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args = ["-fopenmp"]
        super().build_extensions()

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # a ctypes library, not a Python module: there is no PyInit_ symbol to export


setup(
    ext_modules=[
        Extension(
            "bitdistill.runtime._bdrt",
            sources=[f"{CSRC}/kernels.c", f"{CSRC}/engine.c"],
            depends=[f"{CSRC}/bd.h"],
            include_dirs=[CSRC],
        )
    ],
    cmdclass={"build_ext": BuildNative},
)
