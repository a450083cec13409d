"""Every BITDISTILL_* environment variable the Python package reads, read in this one place.

Callers take an `Env` at their start (a command, a training run) and pass values on, so nothing consults
the environment inside a loop. The native runtime keeps its own: BITDISTILL_RUNTIME_LIB (runtime/native.py)
and BITDISTILL_SIMD / BITDISTILL_PROFILE (read by the C code at load).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

THREADS = "BITDISTILL_THREADS"  # thread count for the native runtime (checked by _threads.check_threads)
FAULT = "BITDISTILL_FAULT"  # crash tests: comma-separated training points to SIGKILL at (train/loop.py)
API_KEY = "BITDISTILL_API_KEY"  # `bitdistill serve`: the bearer token /v1 routes require


@dataclass(frozen=True)
class Env:
    threads: str | None = None  # unchecked text; None when unset or blank
    fault_points: frozenset[str] = frozenset()
    api_key: str | None = None


def read_env(environ: Mapping[str, str] | None = None) -> Env:
    """The BITDISTILL_* settings of `environ` (default: this process's environment) as they are now."""
    environ = os.environ if environ is None else environ
    threads = environ.get(THREADS, "").strip()
    faults = environ.get(FAULT, "")
    return Env(
        threads=threads or None,
        fault_points=frozenset(p for p in faults.split(",") if p),
        api_key=environ.get(API_KEY) or None,
    )
