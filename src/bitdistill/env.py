"""Every environment variable the package reads, read in this one place.

Callers take an `Env` at their start (a command, a training run, the native library's first load) and pass
values on, so nothing consults the environment inside a loop, and the C runtime never calls getenv: it
gets BITDISTILL_SIMD, BITDISTILL_PROFILE, BITDISTILL_HUGEPAGES and BITDISTILL_PREFETCH through setters when
runtime/native.py loads it (and runs with the defaults, best SIMD level and no profiling, when used on its
own). `set_openmp_defaults` is the
one place that writes to the environment, and only a default the user has not set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import BitDistillError

THREADS = "BITDISTILL_THREADS"  # thread count for the native runtime (checked by _threads.check_threads)
FAULT = "BITDISTILL_FAULT"  # crash tests: comma-separated training points to SIGKILL at (train/loop.py)
API_KEY = "BITDISTILL_API_KEY"  # `bitdistill serve`: the bearer token /v1 routes require
SIMD = "BITDISTILL_SIMD"  # cap on the native kernels' SIMD level: scalar, avx2 or avx512-vnni
PROFILE = "BITDISTILL_PROFILE"  # 1: the native runtime times each phase of a forward step (rdtsc)
OMP_WAIT_POLICY = "OMP_WAIT_POLICY"  # written, never read: set_openmp_defaults' default for libgomp
_DEFAULTED: set[str] = set()  # the variables set_openmp_defaults set in this process (the user had not)
RUNTIME_LIB = "BITDISTILL_RUNTIME_LIB"  # path of a native runtime library to load instead of the built one
HUGE_PAGES = "BITDISTILL_HUGEPAGES"  # 0: no MADV_HUGEPAGE advice for the runtime's weights and buffers
PREFETCH = "BITDISTILL_PREFETCH"  # bytes the decode GEMVs prefetch ahead of their weight stream (CPU default)
PREFETCH_MAX = 1 << 16

# the SIMD levels of runtime/native.py (0 scalar, 1 AVX2/FMA, 2 AVX-512 VNNI) by the names users write
SIMD_LEVELS = {"scalar": 0, "0": 0, "avx2": 1, "1": 1, "avx512-vnni": 2, "vnni": 2, "2": 2}


@dataclass(frozen=True)
class Env:
    threads: str | None = None  # unchecked text; None when unset or blank
    fault_points: frozenset[str] = frozenset()
    api_key: str | None = None
    simd: int | None = None  # SIMD level cap; None: the CPU's best
    profile: bool = False
    runtime_lib: str | None = None
    huge_pages: bool = True
    prefetch: int | None = None  # bytes; None: the CPU's default (runtime/csrc/kernels.c, PREFETCH_AHEAD)


def read_env(environ: Mapping[str, str] | None = None) -> Env:
    """The BITDISTILL_* settings of `environ` (default: this process's environment) as they are now."""
    environ = os.environ if environ is None else environ
    threads = environ.get(THREADS, "").strip()
    faults = environ.get(FAULT, "")
    return Env(
        threads=threads or None,
        fault_points=frozenset(p for p in faults.split(",") if p),
        api_key=environ.get(API_KEY) or None,
        simd=_simd_level(environ.get(SIMD, "")),
        profile=environ.get(PROFILE, "").strip() not in ("", "0"),
        runtime_lib=environ.get(RUNTIME_LIB, "").strip() or None,
        huge_pages=environ.get(HUGE_PAGES, "").strip() != "0",
        prefetch=_prefetch_bytes(environ.get(PREFETCH, "")),
    )


def _prefetch_bytes(text: str) -> int | None:
    if not text.strip():
        return None
    try:
        n = int(text.strip())
    except ValueError:
        n = -1
    if not 0 <= n <= PREFETCH_MAX:
        raise BitDistillError(
            f"{PREFETCH}={text!r}: give the bytes to prefetch ahead, 0 to {PREFETCH_MAX} (e.g. 1024 or 8192), or "
            "unset it for the CPU's default"
        )
    return n


def _simd_level(text: str) -> int | None:
    name = text.strip().lower()
    if not name:
        return None
    if name not in SIMD_LEVELS:
        raise BitDistillError(
            f"{SIMD}={text!r}: unknown SIMD level; give scalar, avx2 or avx512-vnni, or unset it for the CPU's best"
        )
    return SIMD_LEVELS[name]


def set_openmp_defaults() -> None:
    """Make idle OpenMP threads sleep instead of spin (OMP_WAIT_POLICY=PASSIVE) unless the user chose.

    libgomp reads the variable once, when it initialises (when torch or the native runtime first loads it),
    so this must run before either: the CLI calls it before any command imports torch, runtime/native.py
    before it loads the library. Why passive: with libgomp's default (spin ~300k iterations at every barrier)
    one other busy process on a 2-core machine made fp32 training steps 3.2x slower at twice the CPU time
    (passive: 1.5x; idle, the two were within this VM's noise; docs/pipeline.md, "Threads"), and between
    decode steps a spinning idle worker steals the core the Python thread needs. The runtime's own barriers
    inside a step spin briefly and then sleep (engine.c), so passive costs them nothing.
    """
    if OMP_WAIT_POLICY not in os.environ:
        os.environ[OMP_WAIT_POLICY] = "PASSIVE"
        _DEFAULTED.add(OMP_WAIT_POLICY)


def user_environ() -> dict[str, str]:
    """This process's environment without what set_openmp_defaults added: for other projects' programs
    (llama.cpp), which must run as their own users run them. llama.cpp's OpenMP threads meet at a barrier
    per operation; under our PASSIVE default each of those sleeps, and llama-bench's 2-thread decode of
    SmolLM2 fell from 115 to 26 tok/s (docs/runtime.md)."""
    return {k: v for k, v in os.environ.items() if k not in _DEFAULTED}
