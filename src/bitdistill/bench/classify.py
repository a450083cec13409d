"""`bitdistill bench --classify`: label-word classification throughput (sentences/s) on a task's dev split.

Engines, each in its own subprocess on the same model and sentences (see bench.py for the model specs):
  runtime-2        the packed 2-bit model, prompts batched padding-free (iter_label_word_scores);
  torch-fp32       the full-precision model in PyTorch fp32 eager, batched by the trainer's scorer
                   (right-padded, length-sorted batches): the speed baseline;
  torch-bitnet     the ternary BitNet model the runtime packs, in PyTorch fp32 eager: its predictions are
                   the reference the runtime's must equal.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .._spread import format_spread, spread
from .engines import _run_worker, prepare, write_json

ENGINES = ("runtime-2", "torch-fp32", "torch-bitnet")
REFERENCE = "torch-bitnet"


def run_classify_bench(
    spec: str,
    data: Path,
    threads: int = 2,
    runs: int = 1,
    limit: int | None = None,
    work: Path | None = None,
    head_dtype: str = "int8",
    batch_tokens: int = 512,
    batch_size: int = 32,
    task: str = "sst2",
    log=print,
    out: Path | None = None,
) -> dict:
    """Run every engine; return the results dict (also what the JSON holds)."""
    work = Path(work or Path("runs") / "bench" / spec.replace("/", "_"))
    work.mkdir(parents=True, exist_ok=True)
    packed = prepare(spec, work, head_dtype)["2"]
    common = ["--threads", str(threads), "--runs", "1", "--task", task, "--data", str(data)]
    if limit:
        common += ["--limit", str(limit)]
    res: dict = {
        "workload": "classify", "model": spec, "task": task, "data": str(data), "threads": threads,
        "runs": runs, "head_dtype": head_dtype, "batch_tokens": batch_tokens, "torch_batch_size": batch_size,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "engines": {},
    }  # fmt: skip
    workers = {
        "runtime-2": ["classify-runtime", str(packed), "--batch-tokens", str(batch_tokens)],
        "torch-fp32": ["classify-torch", spec, "--batch-size", str(batch_size)],
        REFERENCE: ["classify-torch", spec, "--batch-size", str(batch_size), "--bitnet"],
    }
    # the timed engines alternate run by run (each run a fresh process), so a change in the machine's load
    # hits both; the reference runs once at the end, for its predictions
    order = [e for _ in range(runs) for e in ENGINES if e != REFERENCE] + [REFERENCE]
    for eng in order:
        log(f"running {eng} ...")
        t0, load_before = time.time(), os.getloadavg()
        r = _run_worker([*workers[eng], *common], timeout=4 * 3600)
        r["loadavg"] = [load_before, os.getloadavg()]
        r["wall_s"] = time.time() - t0
        res["labels"] = r.pop("labels")
        if eng in res["engines"]:
            prev = res["engines"][eng]
            if prev["preds"] != r["preds"]:
                raise RuntimeError(f"{eng} predicted differently from one run to the next")
            prev["sentences_s"] += r["sentences_s"]
            prev["loadavg"] += r["loadavg"]
            prev["peak_rss_mib"] = max(prev["peak_rss_mib"], r["peak_rss_mib"])
        else:
            res["engines"][eng] = r
        if out is not None:
            write_json(res, out)
        log(f"  {r['sentences_s'][-1]:.2f} sentences/s, peak RSS {r['peak_rss_mib']:.0f} MiB")
    labels = res["labels"]
    for r in res["engines"].values():
        r["sentences_s"] = spread(r["sentences_s"])
        scored = [(p, y) for p, y in zip(r["preds"], labels, strict=True) if y is not None]
        r["accuracy"] = sum(p == y for p, y in scored) / len(scored) if scored else None
    res["machine"]["loadavg_end"] = os.getloadavg()
    base = res["engines"]["torch-fp32"]["sentences_s"]["median"]
    ref = res["engines"][REFERENCE]["preds"]
    for r in res["engines"].values():
        r["speedup_vs_torch_fp32"] = r["sentences_s"]["median"] / base
        r["identical_to_reference"] = sum(a == b for a, b in zip(r["preds"], ref, strict=True)) / len(ref)
    if out is not None:
        write_json(res, out)
    return res


def format_classify_table(res: dict) -> str:
    simd = res["engines"]["runtime-2"].get("simd", "?")
    n = len(res["labels"])
    lines = [
        f"model {res['model']}, task {res['task']} dev ({n} sentences), {res['threads']} threads, median of "
        f"{res['runs']} alternating runs [min-max] (the reference: 1), runtime SIMD {simd}, runtime batches of {res['batch_tokens']} tokens, "
        f"torch batches of {res['torch_batch_size']}; load avg {res['machine']['loadavg_start'][0]:.1f} -> "
        f"{res['machine']['loadavg_end'][0]:.1f}",
        "",
        f"| engine | sentences/s | vs torch-fp32 | predictions identical to {REFERENCE} | accuracy | "
        "peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res["engines"].items():
        s = r["sentences_s"]
        label = f"{name} ({res['head_dtype']} head)" if name.startswith("runtime") else name
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        lines.append(
            f"| {label} | {format_spread(s, 2)} | {r['speedup_vs_torch_fp32']:.1f}x | "
            f"{100 * r['identical_to_reference']:.1f} % | {acc} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)
