"""Summarise a quality run (configs/smollm2-sst2-full.yaml): every row with its seed, accuracy and 95 %
bootstrap interval, the mean over seeds of the main rows, the issue's two targets, and wall times.

    python benchmarks/quality_summary.py runs/smollm2-sst2-full [--json out.json]

Rows come from the run's results.json: FP16-SFT, BitNet-SFT and BitDistill (the recipe's seed), and each
ablation row. An ablation labelled "<row>, seed N" is that main or ablation row trained with another seed;
the means over seeds (main rows, and ablation rows with more than one seed) use the row and those. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

MAIN = {"teacher": "FP16-SFT", "bitnet_sft": "BitNet-SFT", "distill": "BitDistill"}
SEED_ROW = re.compile(r"^(?P<row>.+), seed (?P<seed>\d+)$")
TARGET_GAP_TO_TEACHER = 2.0  # points: BitDistill >= teacher - 2.0
TARGET_OVER_BITNET_SFT = 8.0  # points: BitDistill - BitNet-SFT >= 8


def rows_of(results: dict) -> list[dict]:
    rows = []
    seed = results.get("seed")
    for stage, label in MAIN.items():
        rec = results.get("stages", {}).get(stage) or {}
        rows.append(_row(label, label, seed, rec))
    cpt = results.get("stages", {}).get("continue_pretrain") or {}
    if cpt:
        rows.append(_row("stage 2 (continued pre-training)", "stage 2", seed, cpt))
    ablations = results.get("ablations") or {}
    for label, rec in ablations.items():
        m = SEED_ROW.match(label)  # "<row>, seed N": that main or ablation row with another seed
        seeded = m is not None and (m["row"] in MAIN.values() or m["row"] in ablations)
        group, row_seed = (m["row"], int(m["seed"])) if seeded else (label, seed)
        rows.append(_row(label, group, row_seed, rec))
    return rows


def _row(label: str, group: str, seed, rec: dict) -> dict:
    ev = rec.get("eval") or {}
    return {
        "label": label, "group": group, "seed": seed, "accuracy": ev.get("accuracy"),
        "ci95": ev.get("accuracy_ci95"), "n": ev.get("n"), "steps": rec.get("steps"),
        "train_tokens": rec.get("train_tokens"), "wall_seconds": rec.get("wall_seconds"),
    }  # fmt: skip


def summarise(results: dict) -> dict:
    rows = rows_of(results)
    means = {}
    for group in dict.fromkeys(r["group"] for r in rows):  # main rows first, then seeded ablations
        accs = [r["accuracy"] for r in rows if r["group"] == group and r["accuracy"] is not None]
        if accs and (group in MAIN.values() or len(accs) > 1):
            means[group] = {"mean": statistics.fmean(accs), "seeds": len(accs),
                            "min": min(accs), "max": max(accs)}  # fmt: skip
    t, b, d = (means.get(k, {}).get("mean") for k in MAIN.values())
    targets = {}
    if None not in (t, d):
        targets["bitdistill_minus_teacher_points"] = (d - t) * 100
        # rounded: accuracies are counts / n, and -2.0 must not fail by a float's last bit
        targets["within_2_points_of_teacher"] = round((d - t) * 100, 6) >= -TARGET_GAP_TO_TEACHER
    if None not in (b, d):
        targets["bitdistill_minus_bitnet_sft_points"] = (d - b) * 100
        targets["at_least_8_points_over_bitnet_sft"] = round((d - b) * 100, 6) >= TARGET_OVER_BITNET_SFT
    return {"rows": rows, "means": means, "targets": targets}


def _pct(x) -> str:
    return "—" if x is None else f"{x * 100:.2f}"


def table(summary: dict, teacher: float | None) -> str:
    out = ["| row | seed | accuracy [95 % CI] | Δ vs teacher | steps | wall |", "|---|---:|---|---:|---:|---:|"]
    for r in summary["rows"]:
        acc = _pct(r["accuracy"])
        if r["ci95"]:
            acc += f" [{r['ci95'][0] * 100:.1f}–{r['ci95'][1] * 100:.1f}]"
        gap = "—" if r["accuracy"] is None or teacher is None else f"{(r['accuracy'] - teacher) * 100:+.2f}"
        wall = "—" if r["wall_seconds"] is None else f"{r['wall_seconds'] / 60:.1f} min"
        out.append(f"| {r['label']} | {r['seed']} | {acc} | {gap} | {r['steps'] or '—'} | {wall} |")
    out += ["", "| main row | seeds | mean accuracy | range |", "|---|---:|---:|---|"]
    for group, m in summary["means"].items():
        out.append(f"| {group} | {m['seeds']} | {_pct(m['mean'])} | {_pct(m['min'])}–{_pct(m['max'])} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", type=Path, help="write the summary here (default RUN_DIR/quality_summary.json)")
    args = p.parse_args(argv)
    path = args.run_dir / "results.json"
    if not path.is_file():
        print(f"{path}: no results.json; run `bitdistill run CONFIG` first", file=sys.stderr)
        return 2
    summary = summarise(json.loads(path.read_text()))
    teacher = summary["means"].get("FP16-SFT", {}).get("mean")
    print(table(summary, teacher))
    for key, value in summary["targets"].items():
        print(f"{key}: {value:+.2f}" if isinstance(value, float) else f"{key}: {value}")
    out = args.json or args.run_dir / "quality_summary.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
