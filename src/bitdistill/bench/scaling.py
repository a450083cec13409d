"""`bitdistill bench --scaling`: does a second thread help, on an idle machine and with a core taken?

One process loads the packed model twice (1 thread and N threads) and alternates between them run by run,
so both see the same machine noise. Each run is a `prefill`-token prompt then `decode` greedy tokens. The
same is repeated while a busy-loop process (this session's own, at normal priority) holds one core: that is
the case where a thread that waits for a descheduled partner at every barrier would make N threads slower
than one (see engine.c: the work dispenser and the futex barrier).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .._spread import format_spread, spread


@contextmanager
def busy_cores(n: int):
    """`n` processes spinning in a Python loop for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)  # let them get scheduled
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _one_run(engine, prompt: list[int], decode: int) -> tuple[float, float]:
    engine.reset(len(prompt) + decode + 1)
    t = time.perf_counter()
    logits = engine.forward(prompt)
    t_pre = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(decode):
        logits = engine.forward([int(np.argmax(logits))])
    return len(prompt) / t_pre, decode / (time.perf_counter() - t)


def run_scaling_bench(packed: Path, threads: int = 2, prefill: int = 128, decode: int = 64, runs: int = 5,
                      log=print) -> dict:  # fmt: skip
    from ..runtime.engine import load
    from ..runtime.native import SIMD_NAMES, simd_level

    counts = sorted({1, threads})
    engines = {n: load(packed, threads=n) for n in counts}
    prompt = np.random.default_rng(0).integers(0, engines[1].arch["vocab"], prefill).tolist()
    res: dict = {
        "packed": str(packed), "threads": counts, "prefill_tokens": prefill, "decode_tokens": decode,
        "runs": runs, "simd": SIMD_NAMES[simd_level()], "cpus": os.cpu_count(), "conditions": {},
    }  # fmt: skip
    for busy in (0, 1):
        log(f"{'one core busy' if busy else 'no busy process'}: {runs} alternating runs of {counts} threads")
        with busy_cores(busy):
            cond = {n: {"prefill": [], "decode": []} for n in counts}
            load_before = os.getloadavg()
            for n in counts:
                _one_run(engines[n], prompt, 4)  # warm-up
            picks_before = {n: dict(engines[n]._pick.used) for n in counts}
            for _ in range(runs):
                for n in counts:
                    p, d = _one_run(engines[n], prompt, decode)
                    cond[n]["prefill"].append(p)
                    cond[n]["decode"].append(d)
        res["conditions"]["busy" if busy else "idle"] = {
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            **{str(n): {k: spread(v) for k, v in c.items()} for n, c in cond.items()},
            # the ThreadPicker's choices in the timed runs
            "threads_used": {str(n): engines[n]._pick.picks(picks_before[n]) for n in counts},
        }  # fmt: skip
    return res


def format_scaling_table(res: dict) -> str:
    counts = res["threads"]
    lines = [
        f"{res['packed']}, prefill {res['prefill_tokens']} / decode {res['decode_tokens']} tokens, median of "
        f"{res['runs']} alternating runs [min-max], SIMD {res['simd']}, {res['cpus']} CPUs",
        "",
        "| condition | threads | decode tok/s | prefill tok/s | decode vs 1 thread | prefill vs 1 thread |",
        "|---|---|---|---|---|---|",
    ]
    for cond, r in res["conditions"].items():
        one = r["1"]
        r = {k: v for k, v in r.items() if k != "threads_used"}
        for n in counts:
            d, p = r[str(n)]["decode"], r[str(n)]["prefill"]
            lines.append(
                f"| {cond} (load {r['loadavg_before'][0]:.1f}) | {n} | {format_spread(d)} | {format_spread(p)} | "
                f"{d['median'] / one['decode']['median']:.2f}x | {p['median'] / one['prefill']['median']:.2f}x |"
            )
    return "\n".join(lines)
