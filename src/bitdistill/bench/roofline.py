"""The rooflines of the runtime: read bandwidth for decode, int8 multiply-adds for prefill, both measured.

A decode step streams every weight it uses once (ternary linears, norms, the LM head), reads one embedding
row, and reads every layer's cached keys and values up to its position (by the time a layer comes round
again, tens of MB of weights have streamed through the caches, so that comes from DRAM too); at batch 1 it
cannot run faster than bandwidth / bytes_per_token. Prefill is compute bound instead: `int8_peak` measures
the int8 multiply-add rate of the GEMM's instruction pair on this machine, against which prefill's linear
layer multiply-adds per second are put. `bitdistill bench --roofline` measures both in the same run as the
engines and reports each engine's fraction of them.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from ..runtime.native import lib, ptr

BUFFER_MIB = 512  # far beyond any last-level cache, so the reads come from DRAM


def read_bandwidth(threads: int, mib: int = BUFFER_MIB, reps: int = 5) -> float:
    """Median-of-`reps` read bandwidth in bytes/s with `threads` threads over a `mib` MiB buffer. The median,
    not the best: on a shared VM one pass in a quiet instant read 60 GB/s where the others read 30-35, and a
    roofline from that burst understated every engine's fraction of what the machine sustains."""
    buf = np.ones(mib * 2**20 // 8, np.uint64)  # written once, so every page is resident before timing
    times = []
    for i in range(reps + 1):  # the first pass warms the threads and TLB
        t = time.perf_counter()
        lib().bd_read_xor(ptr(buf), buf.size, threads)
        if i:
            times.append(time.perf_counter() - t)
    return buf.nbytes / statistics.median(times)


def int8_peak(threads: int, seconds: float = 0.2, reps: int = 3) -> float:
    """Best-of-`reps` int8 multiply-adds/s of `threads` threads running the prefill GEMM's inner step without
    loads at the kernels' SIMD level (AVX2: independent vpmaddubsw + vpaddw pairs; AVX-512 VNNI: zmm vpdpbusd):
    the compute roof prefill is measured against. 0 below the AVX2 level (BITDISTILL_SIMD=scalar or a CPU
    without AVX2)."""
    import ctypes

    sink = ctypes.c_int32()
    iters = 1 << 16
    while True:  # calibrate to ~`seconds` per call
        t = time.perf_counter()
        macs = lib().bd_int8_peak_macs(iters, threads, ctypes.byref(sink))
        if macs == 0.0:
            return 0.0
        if time.perf_counter() - t > seconds / 4 or iters >= 1 << 30:
            break
        iters *= 4
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        macs = lib().bd_int8_peak_macs(iters, threads, ctypes.byref(sink))
        best = max(best, macs / (time.perf_counter() - t))
    return best


def decode_bytes_per_token(packed_dir: str | Path, kv_dtype: str = "fp32", position: float = 0.0) -> dict[str, float]:
    """Bytes one decode step reads at `position` (the number of tokens already cached), as
    {"weights", "kv", "total"}: every tensor of the packed model except the input embedding, of which it reads
    one row (when the head is tied to the embedding, the embedding is read whole as the head); and each layer's
    cached keys and values, position + 1 of them (at most its sliding window), kv_dtype fp32 or fp16."""
    from ..runtime.packed import load_packed

    pm = load_packed(packed_dir)
    weights = 0
    for name, arr in pm.tensors.items():
        if name.startswith("embed") and not pm.arch["tied"]:
            weights += arr.nbytes // max(arr.shape[0], 1)  # one row (or one row's scale)
        elif not name.startswith("rope."):
            weights += arr.nbytes
    a = pm.arch
    per_key = 2 * a["n_kv"] * a["head_dim"] * (4 if kv_dtype == "fp32" else 2)  # K and V of one position
    keys = sum(min(position + 1, w) if w > 0 else position + 1 for w in a["layer_window"])
    kv = per_key * keys
    return {"weights": float(weights), "kv": float(kv), "total": float(weights + kv)}
