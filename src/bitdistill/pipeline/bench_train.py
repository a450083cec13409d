"""`bitdistill bench-train`: seconds per optimizer step of FP fine-tuning, BitNet-SFT and distillation.

Every row runs in its own subprocess (_bench_worker.py, so peak RSS is that row's own) through the real
training loop and stage code: the task batches `task_batches` builds (SST-2, length-grouped, batch 16),
`ce_loss` for the FP and BitNet-SFT steps, `make_distill_loss` (CE + logits KD + attention-relation KD at
the last layer, frozen FP teacher) for distillation. A step is what the loop times: batch, forward,
backward, clipping, AdamW step, zero_grad. The first `warmup` steps are dropped; the table gives the median
[min-max] of the rest, tokens/s (non-pad tokens over the measured steps) and the peak RSS while training.
`baseline` names another checkout's `src` directory (e.g. a git worktree of an older commit): its rows run
the same driver on the same batches with that code, so speedups are measured in one run.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = Path(__file__).with_name("_bench_worker.py")
VARIANTS = ("fp", "bitnet", "distill", "distill-targets")
LABELS = {
    "fp": "FP fine-tuning (CE)",
    "bitnet": "BitNet-SFT (CE)",
    "distill": "distill, KD on all tokens",
    "distill-targets": "distill, KD on targets",
}


def simd_info() -> dict:
    """What the CPU computes natively: torch's dispatch level and the relevant /proc/cpuinfo flags."""
    import torch

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    model = ""
    try:
        model = next(
            (l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
             if l.startswith("model name")), "")  # fmt: skip
    except OSError:
        pass
    return {
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "flags": [f for f in wanted if f in flags],
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
    }


def synthetic_sst2(path: Path, n: int = 2000, seed: int = 0) -> Path:
    """A train.tsv whose sentence lengths follow SST-2's (phrases of 1-50 words, median ~7): used only when
    no SST-2 directory is given, so the benchmark runs on a fresh clone."""
    rng = random.Random(seed)
    words = ("the film is a good bad movie with great acting and dull plot but its story never quite "
             "works as funny moving charming tedious ").split()  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    rows = ["sentence\tlabel"]
    for _ in range(n):
        k = max(1, min(50, int(rng.lognormvariate(2.0, 0.8))))
        rows.append(" ".join(rng.choice(words) for _ in range(k)) + f"\t{rng.randint(0, 1)}")
    (path / "train.tsv").write_text("\n".join(rows) + "\n")
    return path


def _run_worker(spec: dict, src: str | None, timeout: float) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run(
        [sys.executable, "-P", str(WORKER), json.dumps(spec)],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"bench-train worker {spec['variant']} ({src or 'this checkout'}) failed:\n{tail}")
    return json.loads(lines[-1])


def _summary(raw: dict, warmup: int) -> dict:
    secs, toks = raw["seconds"][warmup:], raw["tokens"][warmup:]
    cpu = raw.get("cpu_seconds", [])[warmup:] or secs
    return {
        "median_s": statistics.median(secs),
        "min_s": min(secs),
        "max_s": max(secs),
        "tokens_per_s": sum(toks) / sum(secs),
        "cpu_median_s": statistics.median(cpu),
        "cpu_min_s": min(cpu),
        "cpu_max_s": max(cpu),
        "cpu_total_s": sum(cpu),
        "cpu_tokens_per_s": sum(toks) / sum(cpu),
        "steps": len(secs),
        "peak_rss_mib": raw["peak_rss_mib"],
    }


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def run_bench_train(
    model: str = "smollm2-135m",
    data: str | None = None,
    batch_size: int = 16,
    steps: int = 6,
    warmup: int = 2,
    threads: int | None = None,
    subln: str = "all",
    variants: tuple[str, ...] = VARIANTS,
    baseline: str | None = None,
    baseline_variants: tuple[str, ...] = ("fp", "bitnet", "distill-targets"),
    precision: str = "fp32",
    timeout: float = 3600,
    log=print,
) -> dict:
    """Run every row (this checkout's `variants`, then the baseline's) and return the results dict."""
    import torch

    threads = threads or torch.get_num_threads()
    tmp = None
    if data is None or not Path(data).exists():
        tmp = tempfile.TemporaryDirectory()
        data_path, source = str(synthetic_sst2(Path(tmp.name))), "synthetic (SST-2 length distribution)"
    else:
        data_path, source = str(Path(data).resolve()), str(Path(data).resolve())
    base = dict(model=model, data=data_path, max_length=128, subln=subln, threads=threads,
                warmup=warmup, steps=steps, batch_size=batch_size, precision=precision, seed=0)  # fmt: skip
    # Baseline rows first: under a shifting machine load, the old and new distillation rows stay close.
    jobs = [(v, baseline) for v in (baseline_variants if baseline else ())] + [(v, None) for v in variants]
    rows = []
    try:
        for variant, src in jobs:
            spec = dict(base, variant=variant.split("-")[0])
            if variant == "distill-targets":
                spec["kd_positions"] = "targets"
            load_before = load_average()
            t0 = time.time()
            try:
                raw = _run_worker(spec, src, timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                log(f"  {variant} ({src or 'this checkout'}): {err}")  # one failed row keeps the others
                continue
            row = {"row": variant, "code": "baseline" if src else "this", "src": raw["code"],
                   **_summary(raw, warmup), "load_before": load_before, "load_after": load_average(),
                   "raw": raw}  # fmt: skip
            rows.append(row)
            log(f"  {row['code']:8s} {LABELS[variant]:28s} {row['median_s']:7.2f} s/step "
                f"(load {load_before[:1]} -> {row['load_after'][:1]}, {time.time() - t0:.0f} s)")  # fmt: skip
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {
        "model": model, "data": source, "batch_size": batch_size, "steps": steps, "warmup": warmup,
        "threads": threads, "precision": precision, "subln": subln, "baseline": baseline,
        "simd": simd_info(), "rows": rows, "ratios": ratios(rows),
        "ratios_wall_median": ratios(rows, "median_s"),
        "command": " ".join(["bitdistill", "bench-train", *sys.argv[2:]]) if sys.argv[1:2] == ["bench-train"]
        else " ".join(sys.argv),
    }  # fmt: skip


def ratios(rows: list[dict], key: str = "cpu_total_s") -> dict:
    """The issue's three ratios: BitNet-SFT/FP, distill/FP and old distill/new distill.

    Default `key`: CPU seconds summed over the measured steps. Every row trains on the same batches, so
    the sums compare like with like (batch widths vary from step to step, which makes a median of a few
    steps pick different batches in different rows), and CPU time barely moves with the machine's load.
    """

    def _median(row: str, code: str) -> float | None:
        return next((r.get(key) for r in rows if r["row"] == row and r["code"] == code), None)

    out = {}
    fp = _median("fp", "this")
    for row in ("bitnet", "distill", "distill-targets"):
        m = _median(row, "this")
        if fp and m:
            out[f"{row}/fp"] = m / fp
    old = _median("distill-targets", "baseline")
    for row in ("distill-targets", "distill"):
        m = _median(row, "this")
        if old and m:
            out[f"baseline distill-targets/{row}"] = old / m
    old_fp, old_bit = _median("fp", "baseline"), _median("bitnet", "baseline")
    if old_fp and old_bit:
        out["baseline bitnet/fp"] = old_bit / old_fp
    if old_fp and old:
        out["baseline distill-targets/fp"] = old / old_fp
    return out


def format_table(res: dict) -> str:
    simd = res["simd"]
    lines = [
        f"bench-train: {res['model']}, batch {res['batch_size']}, {res['steps']} steps after {res['warmup']} "
        f"warm-up, {res['threads']} threads, {res['precision']}, subln {res['subln']}",
        f"CPU: {simd['cpu']} ({simd['cores']} cores), torch {simd['torch']} dispatch {simd['torch_capability']}, "
        f"flags {' '.join(simd['flags'])}",
        f"data: {res['data']}",
        "",
        "| code | step | CPU s/step median [min-max] | CPU tokens/s | wall s/step median [min-max] | "
        "wall tokens/s | peak RSS MiB | load 1-min before/after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['code']} | {LABELS[r['row']]} | {r['cpu_median_s']:.2f} [{r['cpu_min_s']:.2f}-"
            f"{r['cpu_max_s']:.2f}] | {r['cpu_tokens_per_s']:.0f} | {r['median_s']:.2f} [{r['min_s']:.2f}-"
            f"{r['max_s']:.2f}] | {r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | "
            f"{(r['load_before'] or ['?'])[0]} / {(r['load_after'] or ['?'])[0]} |"
        )
    lines += ["", "ratios (CPU seconds summed over the same batches):"]
    lines += [f"  {k}: {v:.2f}x" for k, v in res["ratios"].items()]
    lines += ["ratios (wall-time medians):"]
    lines += [f"  {k}: {v:.2f}x" for k, v in res.get("ratios_wall_median", {}).items()]
    return "\n".join(lines)


def write_json(res: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")
