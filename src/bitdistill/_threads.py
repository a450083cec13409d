"""Thread counts given by users (--threads, BITDISTILL_THREADS), checked before they reach OpenMP.

OpenMP crashes (SIGSEGV while creating thread stacks) on counts like 70000, and 0 or a negative count
means "all cores" in some APIs and an error in others; both are refused here with one line instead.
"""

from __future__ import annotations

import os

from .env import THREADS as ENV
from .env import read_env
from .errors import BitDistillError


def max_threads() -> int:
    """The largest count accepted: 4 threads per core (beyond that they only contend for the cores)."""
    return 4 * (os.cpu_count() or 1)


def check_threads(value: object, source: str = "--threads") -> int:
    """`value` as a thread count from 1 to `max_threads()`, or a one-line error naming `source`."""
    hi = max_threads()
    try:
        n = int(str(value).strip())
    except ValueError:
        n = None
    if n is None:
        raise BitDistillError(f"{source}={value!r}: not a whole number; give a thread count from 1 to {hi}")
    if n < 1:
        raise BitDistillError(
            f"{source}={n}: the thread count must be at least 1; to use all cores leave {source} unset"
        )
    if n > hi:
        raise BitDistillError(
            f"{source}={n}: more than {hi} threads (4 per core on this {hi // 4}-core machine) only contend "
            f"for the cores; give at most {hi}"
        )
    return n


def env_threads() -> int | None:
    """The count in BITDISTILL_THREADS, checked, or None when it is unset or empty."""
    value = read_env().threads
    return check_threads(value, ENV) if value else None
