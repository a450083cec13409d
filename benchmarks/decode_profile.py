"""Where a decode token's time goes, per phase, and A/B of runtime library builds (decode and prefill) in one run.

    python benchmarks/decode_profile.py PACKED --threads 1,2 --runs 5
    python benchmarks/decode_profile.py PACKED --lib before=/tmp/before.so --lib after=src/.../_bdrt*.so
    python benchmarks/decode_profile.py PACKED --env 4k=BITDISTILL_HUGEPAGES=0 --env 2m=BITDISTILL_HUGEPAGES=1

Each measurement is its own process (the library is chosen by BITDISTILL_RUNTIME_LIB and read once at load):
a --prefill-token random prompt, then --decode greedy tokens with BITDISTILL_PROFILE=1, --runs + 1 times
(the first is a warm-up), with exactly --threads threads on every call (the engine's ThreadPicker, which may
run a call on one thread, is bypassed, so the thread counts compared are the ones named). Libraries and
thread counts alternate run by run, so a change in the machine's load hits all of them alike. Prints decode
tokens/s (median [min-max]) and, per phase, milliseconds per token on thread 0 (rdtsc ticks scaled by the
run's wall time) with every thread's barrier wait, and the same for the fastest prefill of each process (with
every thread's attention too: how evenly the kv heads spread); writes JSON (--out). A library without the profile
counters (older builds) gets the speed only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _verb import RESULTS

from bitdistill.runtime.engine import KV_DTYPES


def _phase_ms(ticks: dict[str, list[int]], ms: float) -> dict[str, list[float]]:
    """Each phase's ticks per thread as a share of thread 0's total, times `ms` (the call's wall time)."""
    total = sum(v[0] for v in ticks.values()) or 1
    return {k: [ms * t / total for t in v] for k, v in ticks.items()}


def worker(packed: str, threads: int, prefill: int, decode: int, runs: int, kv_dtype: str) -> dict:
    import numpy as np

    from bitdistill.runtime.engine import load
    from bitdistill.runtime.native import SIMD_NAMES, lib, prefetch_ahead, profile_ticks, simd_level

    engine = load(packed, threads=threads, kv_dtype=kv_dtype)
    engine._pick.threads = lambda kind: engine.threads  # the named count on every call (see the docstring)
    has_profile = hasattr(lib(), "bd_profile_read")
    prompt = np.random.default_rng(0).integers(0, engine.arch["vocab"], prefill).tolist()
    speeds, prefills, ticks, best_pre = [], [], None, None
    for i in range(runs + 1):
        engine.reset(prefill + decode + 1)
        if has_profile:
            lib().bd_profile_reset()
        t = time.perf_counter()
        logits = engine.forward(prompt)
        prefills.append(prefill / (time.perf_counter() - t))
        if has_profile and i and (best_pre is None or prefills[-1] > best_pre[0]):  # the fastest timed prefill
            best_pre = (prefills[-1], profile_ticks(threads))
        if has_profile:
            lib().bd_profile_reset()
        t = time.perf_counter()
        for _ in range(decode):
            logits = engine.forward([int(np.argmax(logits))])
        speeds.append(decode / (time.perf_counter() - t))
        ticks = profile_ticks(threads) if has_profile else None
    res = {"decode_tok_s": speeds[1:], "prefill_tok_s": prefills[1:], "simd": SIMD_NAMES[simd_level()],
           "prefetch_bytes": prefetch_ahead(), "threads": engine.threads}
    if ticks:  # last run: each phase's share of thread 0's ticks, times that run's ms per token
        res["phase_ms"] = _phase_ms(ticks, 1e3 / speeds[-1])
    if best_pre:  # the fastest prefill's phases, in ms of that whole prefill
        res["prefill_phase_ms"] = _phase_ms(best_pre[1], 1e3 * prefill / best_pre[0])
    return res


def measure(variants: dict[str, dict[str, str]], packed: str, threads: list[int], args) -> dict:
    """variants: name -> environment variables of its worker (a library path, a setting)."""
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for name, extra in variants.items():
            for n in threads:
                env = {k: v for k, v in os.environ.items() if k != "BITDISTILL_RUNTIME_LIB"}
                env |= {"BITDISTILL_PROFILE": "1"} | extra
                cmd = [sys.executable, __file__, packed, "--worker", "--threads", str(n), "--prefill",
                       str(args.prefill), "--decode", str(args.decode), "--runs", str(args.runs), "--kv-dtype", args.kv_dtype]  # fmt: skip
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"decode_profile: variant {name!r} ({extra}) failed on {n} threads:\n{out.stderr[-2000:]}")
                runs.setdefault(f"{name} {n}", []).append(json.loads(out.stdout.splitlines()[-1]))
    return runs


def summarize(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for key, rs in runs.items():
        entry = {"simd": rs[0]["simd"]}
        for kind in ("decode_tok_s", "prefill_tok_s"):
            v = [s for r in rs for s in r.get(kind, [])]
            if v:
                entry[kind] = {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
        for kind in ("phase_ms", "prefill_phase_ms"):
            if kind in rs[0]:
                entry[kind] = {p: [statistics.median(r[kind][p][t] for r in rs) for t in range(len(v))]
                               for p, v in rs[0][kind].items()}  # fmt: skip
        out[key] = entry
    return out


def table(summary: dict) -> str:
    lines = ["| build, threads | decode tok/s | ms/token | prefill tok/s |", "|---|---|---|---|"]
    for key, e in summary.items():
        d, pf = e["decode_tok_s"], e.get("prefill_tok_s")
        pre = f"{pf['median']:.1f} [{pf['min']:.1f}-{pf['max']:.1f}]" if pf else "-"
        lines.append(f"| {key} | {d['median']:.1f} [{d['min']:.1f}-{d['max']:.1f}] | {1e3 / d['median']:.2f} | {pre} |")
    for kind, title, every in (
        ("phase_ms", "ms per token on thread 0 (barrier wait: every thread)", ("barrier wait",)),
        ("prefill_phase_ms", "ms per prefill, the fastest of each process (median of them), on thread 0 "
         "(attention and barrier wait: every thread)", ("attention", "barrier wait")),
    ):  # fmt: skip
        prof = {k: e[kind] for k, e in summary.items() if kind in e}
        if not prof:
            continue
        keys = list(prof)
        lines += ["", title, "", "| phase | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for phase in next(iter(prof.values())):
            cells = []
            for k in keys:
                v = prof[k][phase]
                cells.append(" / ".join(f"{x:.3f}" for x in v) if phase in every else f"{v[0]:.3f}")
            lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("packed")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--prefill", type=int, default=128)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--runs", type=int, default=3, help="timed runs per process (after one warm-up)")
    p.add_argument("--rounds", type=int, default=3, help="processes per build and thread count, alternating")
    p.add_argument("--lib", action="append", default=[], metavar="NAME=PATH",
                   help="a runtime library build to compare (default: the installed one)")  # fmt: skip
    p.add_argument("--env", action="append", default=[], metavar="NAME=VAR=VALUE",
                   help="a variant: the installed library (or --lib NAME's) with VAR=VALUE; repeat NAME for more")  # fmt: skip
    p.add_argument("--kv-dtype", choices=KV_DTYPES, default="fp32", help="the KV cache's element type")
    p.add_argument("--out", default=str(RESULTS / "decode-profile.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.packed, int(args.threads), args.prefill, args.decode, args.runs, args.kv_dtype)))
        return 0
    libs = dict(spec.split("=", 1) for spec in args.lib)
    variants = {name: {"BITDISTILL_RUNTIME_LIB": path} for name, path in libs.items()}
    for spec in args.env:  # a name given twice (or also to --lib) gets all its settings
        name, var, value = spec.split("=", 2)
        variants.setdefault(name, {})[var] = value
    variants = variants or {"installed": {}}
    threads = [int(t) for t in args.threads.split(",")]
    load_start = os.getloadavg()
    summary = summarize(measure(variants, args.packed, threads, args))
    res = {"packed": args.packed, "prefill": args.prefill, "decode": args.decode, "kv_dtype": args.kv_dtype,
           "variants": variants,
           "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "results": summary}  # fmt: skip
    print(f"load avg {load_start[0]:.1f} -> {res['loadavg_end'][0]:.1f}; SIMD "
          f"{next(iter(summary.values()))['simd']}\n")  # fmt: skip
    print(table(summary))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
