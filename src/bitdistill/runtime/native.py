"""ctypes binding of the native runtime library (built from csrc/ by setup.py; no torch needed).

The Structure classes mirror bd.h field by field. Callers (runtime.model) validate every shape, dtype and
offset in Python before a pointer reaches C; the C side re-checks only the cheap invariants of a call.
"""

from __future__ import annotations

import ctypes as C
import importlib.machinery
import os
from pathlib import Path

import numpy as np

from ..env import read_env, set_openmp_defaults
from ..errors import BitDistillError

F32, F16, BF16, I8, Q4 = 0, 1, 2, 3, 4
SCALE_TENSOR, SCALE_CHANNEL, SCALE_GROUP = 0, 1, 2
ACT_SILU, ACT_GELU_TANH, ACT_GELU = 0, 1, 2

_fp = C.POINTER(C.c_float)
_u8p = C.POINTER(C.c_uint8)


class Linear(C.Structure):
    _fields_ = [
        ("w", _u8p),
        ("n", C.c_int32), ("k", C.c_int32), ("np", C.c_int32), ("kp", C.c_int32),
        ("scale_kind", C.c_int32), ("group_blocks", C.c_int32),
        ("scale", _fp), ("bias", _fp), ("sub_norm", _fp),
    ]  # fmt: skip


class Layer(C.Structure):
    _fields_ = [
        *[(name, Linear) for name in ("q", "k", "v", "o", "gate", "up", "down")],
        ("in_norm", _fp), ("post_attn_norm", _fp), ("pre_ffn_norm", _fp), ("post_ffn_norm", _fp),
        ("q_norm", _fp), ("k_norm", _fp), ("inv_freq", _fp),
        ("rope_scale", C.c_float), ("window", C.c_int32),
    ]  # fmt: skip


class Model(C.Structure):
    _fields_ = [
        *[(n, C.c_int32) for n in ("n_layers", "hidden", "n_heads", "n_kv", "head_dim", "inter")],
        ("vocab", C.c_int32), ("act", C.c_int32),
        *[(n, C.c_float) for n in ("eps", "attn_scale", "embed_scale", "final_softcap", "attn_softcap")],
        ("embed_dtype", C.c_int32), ("head_dtype", C.c_int32),
        ("embed", C.c_void_p), ("embed_rscale", _fp),
        ("head", C.c_void_p), ("head_rscale", _fp),
        ("final_norm", _fp),
        ("layers", C.POINTER(Layer)),
    ]  # fmt: skip


def _find_library(override: str | None) -> Path:
    here = Path(__file__).resolve().parent
    if override:
        return Path(override)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        cand = here / f"_bdrt{suffix}"
        if cand.exists():
            return cand
    raise BitDistillError(
        f"the native runtime library (_bdrt*.so) is not built in {here}. Reinstall from source with a C "
        "compiler available: `pip install -e .` (or `python setup.py build_ext --inplace`)"
    )


_LIB: C.CDLL | None = None
_SIMD_DEFAULT = -1  # the level cap BITDISTILL_SIMD asked for when the library loaded (-1: the CPU's best)


def lib() -> C.CDLL:
    """The loaded library with argument/return types declared and the BITDISTILL_* settings passed in
    (loaded once; the C code reads no environment variables)."""
    global _LIB, _SIMD_DEFAULT
    if _LIB is not None:
        return _LIB
    set_openmp_defaults()  # before libgomp initialises, which loading the library may do
    env = read_env()
    L = C.CDLL(str(_find_library(env.runtime_lib)))
    vp, i32 = C.c_void_p, C.c_int
    L.bd_simd_level.restype = i32
    L.bd_set_simd.argtypes = [i32]
    L.bd_set_profile.argtypes = [i32]
    L.bd_profile_phase_name.restype = C.c_char_p
    L.bd_profile_phase_name.argtypes = [i32]
    L.bd_profile_read.argtypes = [vp, i32]
    L.bd_has_openmp.restype = i32
    L.bd_max_threads.restype = i32
    L.bd_quantize.argtypes = [vp, i32, i32, i32, vp, vp, vp]
    L.bd_ternary_acc.argtypes = [vp, i32, i32, vp, i32, vp, i32]
    L.bd_linear_forward.argtypes = [C.POINTER(Linear), vp, i32, vp, i32, i32]
    L.bd_linear_forward.restype = i32
    L.bd_dense_forward.argtypes = [vp, i32, vp, i32, i32, vp, i32, vp, i32]
    L.bd_dense_forward.restype = i32
    L.bd_state_new.argtypes = [C.POINTER(Model), i32, i32, i32, i32]
    L.bd_state_new.restype = vp
    L.bd_state_free.argtypes = [vp]
    L.bd_state_bytes.argtypes = [C.POINTER(Model), i32, i32]
    L.bd_state_bytes.restype = C.c_size_t
    L.bd_forward.argtypes = [C.POINTER(Model), vp, vp, i32, i32, vp, i32, i32]
    L.bd_forward.restype = i32
    L.bd_forward_seqs.argtypes = [C.POINTER(Model), vp, vp, i32, vp, vp, vp, i32, vp, i32]
    L.bd_forward_seqs.restype = i32
    if hasattr(L, "bd_copy_kv"):  # absent from older builds an A/B may load
        L.bd_copy_kv.argtypes = [C.POINTER(Model), vp, i32, i32, i32]
        L.bd_copy_kv.restype = i32
    L.bd_to_f16.argtypes = [vp, vp, i32]
    L.bd_silu_mul.argtypes = [vp, vp, i32]
    L.bd_read_xor.argtypes = [vp, C.c_size_t, i32]
    L.bd_read_xor.restype = C.c_uint64
    if hasattr(L, "bd_int8_peak_macs"):  # absent from older builds an A/B (BITDISTILL_RUNTIME_LIB) may load
        L.bd_int8_peak_macs.argtypes = [C.c_long, i32, vp]
        L.bd_int8_peak_macs.restype = C.c_double
    L.bd_attend_test.argtypes = [vp, i32, vp, vp, i32, i32, C.c_float, i32, vp, vp]
    L.bd_rmsnorm.argtypes = [vp, vp, i32, C.c_float, vp]
    L.bd_wsum.argtypes = [vp, i32, vp, C.c_size_t, vp, i32, i32, i32, i32]
    L.bd_rmsnorm.restype = C.c_float
    _SIMD_DEFAULT = -1 if env.simd is None else env.simd
    L.bd_set_simd(_SIMD_DEFAULT)
    L.bd_set_profile(int(env.profile))
    if hasattr(L, "bd_set_huge_pages"):  # absent from older builds an A/B may load
        L.bd_set_huge_pages.argtypes = [i32]
        L.bd_set_huge_pages(int(env.huge_pages))
    if hasattr(L, "bd_set_prefetch_ahead"):  # absent from older builds an A/B may load
        L.bd_set_prefetch_ahead.argtypes = [i32]
        L.bd_set_prefetch_ahead(-1 if env.prefetch is None else env.prefetch)
    _LIB = L
    return L


def ptr(a: np.ndarray | None) -> int | None:
    """Address of a C-contiguous array's data (None for None)."""
    if a is None:
        return None
    if not a.flags["C_CONTIGUOUS"]:
        raise ValueError("native kernels need C-contiguous arrays")
    return a.ctypes.data


def fptr(a: np.ndarray | None):
    """A float* for a float32 array (NULL for None)."""
    if a is None:
        return None
    assert a.dtype == np.float32 and a.flags["C_CONTIGUOUS"]
    return a.ctypes.data_as(_fp)


SIMD_SCALAR, SIMD_AVX2, SIMD_VNNI = 0, 1, 2
SIMD_NAMES = {SIMD_SCALAR: "scalar", SIMD_AVX2: "avx2", SIMD_VNNI: "avx512-vnni"}


def set_simd(level: bool | int = True) -> None:
    """Cap the kernels' SIMD level (for tests): True = this process's default (BITDISTILL_SIMD's cap if
    set, else the best the CPU has), False/0 = portable scalar, 1 = AVX2/FMA, 2 = AVX-512 VNNI. A cap above
    what the CPU supports gives the CPU's best."""
    L = lib()
    L.bd_set_simd(_SIMD_DEFAULT if level is True else int(level))


def simd_level() -> int:
    """The kernels in use: 0 portable scalar, 1 AVX2/FMA, 2 AVX2 + AVX-512 VNNI (runtime dispatch)."""
    return lib().bd_simd_level()


def prefetch_ahead() -> int:
    """Bytes the decode GEMVs prefetch ahead of their weight stream (BITDISTILL_PREFETCH, else the CPU's
    default: 8 KiB on AMD Zen 5 and later, 1 KiB elsewhere); 0 where there is no x86 prefetch."""
    L = lib()
    return L.bd_prefetch_ahead() if hasattr(L, "bd_prefetch_ahead") else 0


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset or a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    from .._threads import env_threads

    env = env_threads()
    if env is not None:
        return env
    return max(1, min(lib().bd_max_threads(), usable_cores()))


def profile_ticks(threads: int) -> dict[str, list[int]]:
    """Per-phase rdtsc ticks of each thread since the last `lib().bd_profile_reset()`, as
    {phase name: [ticks of thread 0, 1, ...]} (counted only while profiling is on: BITDISTILL_PROFILE=1 or
    `lib().bd_set_profile(1)`; at most 8 threads)."""
    L, n = lib(), min(threads, 8)
    phases = L.bd_profile_phases()
    out = np.zeros((n, phases), np.uint64)
    L.bd_profile_read(ptr(out), n)
    return {L.bd_profile_phase_name(p).decode(): out[:, p].tolist() for p in range(phases)}
