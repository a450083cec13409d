"""The paper's comparison table for a run: FP16-SFT, BitNet-SFT, BitDistill (+ ablation rows).

`write_report(run_dir)` reads `<run>/results.json` (written by `bitdistill run`), and writes
`<run>/report.md` (the tables and the plots) and `<run>/report.json` (results.json's content plus a
"report" key with every row's metrics, gap to FP16-SFT and parameter memory). Rows come from the run's
stages (teacher -> FP16-SFT, bitnet_sft -> BitNet-SFT, distill -> BitDistill, any other evaluated stage by
its name), from an "ablations" mapping in results.json ({label: stage record}), and from other runs given
as `extra_runs` (their distill stage by default; the label is derived from what the run left out).

Metrics are fractions in results.json; tables show percentage points, and gaps are points
(row − FP16-SFT) × 100.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._fs import atomic_write_text
from ..errors import BitDistillError
from ..eval.memory import format_bytes, model_memory
from .plots import write_run_plots
from .run_dir import read_results, read_sweep, resolve_model_dir

STAGE_LABELS = {"teacher": "FP16-SFT", "bitnet_sft": "BitNet-SFT", "distill": "BitDistill"}
PERCENT_METRICS = ("accuracy", "macro_f1", "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu")
METRIC_ORDER = (*PERCENT_METRICS, "eval_loss")
METRIC_NAMES = {"accuracy": "Accuracy", "macro_f1": "Macro-F1", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
                "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum", "bleu": "BLEU", "eval_loss": "Eval loss"}  # fmt: skip
LOWER_IS_BETTER = ("eval_loss",)
MEMORY_COLUMNS = ("linear_fp16", "linear_2bit", "linear_1.58bit", "model_fp16", "model_2bit", "model_1.58bit")
MEMORY_NAMES = {"linear_fp16": "Linear FP16", "linear_2bit": "Linear 2-bit", "linear_1.58bit": "Linear 1.58-bit",
                "model_fp16": "Model FP16", "model_2bit": "Model 2-bit", "model_1.58bit": "Model 1.58-bit"}  # fmt: skip
REPORT_MD = "report.md"
REPORT_JSON = "report.json"


def describe_variant(results: dict[str, Any], stage: str = "distill") -> str:
    """A row label for another run's distill stage, from what it left out (the paper's ablations)."""
    rec = results.get("stages", {}).get(stage, {})
    settings = rec.get("distill") or {}
    parts = []
    if "continue_pretrain" not in results.get("stages", {}):
        parts.append("w/o continued pre-training")
    lam, gam = settings.get("lambda"), settings.get("gamma")
    if lam == 0 and gam == 0:
        parts.append("w/o distillation")
    elif lam == 0:
        parts.append("AD only")
    elif gam == 0:
        parts.append("LD only")
    if settings.get("ce") is False:
        parts.append("w/o CE")
    if stage != "distill":
        return STAGE_LABELS.get(stage, stage)
    return "BitDistill" + (f" ({', '.join(parts)})" if parts else " (variant)")


def _row(label: str, stage: str, record: dict[str, Any], run_dir: Path, source: str) -> dict[str, Any]:
    metrics = {k: v for k, v in (record.get("eval") or {}).items() if k in METRIC_ORDER}
    model_dir = resolve_model_dir(run_dir, stage, record.get("model_dir"))
    memory = model_memory(model_dir) if model_dir is not None else None
    return {
        "label": label,
        "stage": stage,
        "source": source,
        "model_dir": str(model_dir) if model_dir is not None else record.get("model_dir"),
        "metrics": metrics,
        "accuracy_ci95": (record.get("eval") or {}).get("accuracy_ci95"),
        "n": (record.get("eval") or {}).get("n"),
        "ternary": stage != "teacher" if memory is None else memory["counts"]["bitnet"],
        "params": memory["counts"] if memory else None,
        "memory_bytes": memory["bytes"] if memory else None,
    }


def collect_rows(
    run_dir: Path, results: dict[str, Any], extra_runs: list[tuple[str | None, Path, str]] | None = None
) -> list[dict[str, Any]]:
    """The table's rows in order: FP16-SFT, BitNet-SFT, BitDistill, other stages, ablations, extra runs."""
    rows = []
    stages = results["stages"]
    ordered = [s for s in STAGE_LABELS if s in stages] + [s for s in stages if s not in STAGE_LABELS]
    for stage in ordered:
        if stages[stage].get("eval"):
            rows.append(_row(STAGE_LABELS.get(stage, stage), stage, stages[stage], run_dir, str(run_dir)))
    for label, record in (results.get("ablations") or {}).items():
        rows.append(_row(label, record.get("stage", "distill"), record, run_dir, str(run_dir)))
    for label, other_dir, stage in extra_runs or []:
        other = read_results(other_dir)
        record = other["stages"].get(stage)
        if not record or not record.get("eval"):
            raise BitDistillError(
                f"{other_dir / 'results.json'}: stage {stage!r} has no evaluation; run it with eval enabled"
            )
        rows.append(_row(label or describe_variant(other, stage), stage, record, other_dir, str(other_dir)))
    return rows


def primary_metric(rows: list[dict[str, Any]]) -> str | None:
    present = {k for r in rows for k in r["metrics"]}
    return next((m for m in METRIC_ORDER if m in present), None)


def add_gaps(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Each row's gap to the FP16-SFT row per metric (points for percent metrics, raw for losses)."""
    ref = next((r for r in rows if r["stage"] == "teacher" and r["label"] == "FP16-SFT"), None)
    for r in rows:
        r["gap"] = {}
        if ref is None:
            continue
        for k, v in r["metrics"].items():
            if k in ref["metrics"]:
                d = v - ref["metrics"][k]
                r["gap"][k] = d * 100 if k in PERCENT_METRICS else d
    return ref


def gap_closed(rows: list[dict[str, Any]], metric: str | None) -> float | None:
    """(BitDistill − BitNet-SFT) / (FP16-SFT − BitNet-SFT): the share of the quantization gap recovered."""
    by = {r["label"]: r["metrics"].get(metric) for r in rows} if metric else {}
    t, b, d = by.get("FP16-SFT"), by.get("BitNet-SFT"), by.get("BitDistill")
    if None in (t, b, d) or t == b:
        return None
    return (d - b) / (t - b)


def _fmt_metric(name: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 100:.2f}" if name in PERCENT_METRICS else f"{value:.4f}"


def _fmt_gap(name: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:+.2f}" if name in PERCENT_METRICS else f"{value:+.4f}"


def _memory_cell(row: dict[str, Any], column: str) -> str:
    mem = row["memory_bytes"]
    if mem is None:
        return "—"
    if not row["ternary"] and not column.endswith("fp16"):
        return "—"  # a full-precision model is not stored ternary
    return format_bytes(mem[column])


def _metric_cell(row: dict[str, Any], name: str) -> str:
    """The metric, with its 95 % bootstrap interval where the evaluation recorded one (accuracy)."""
    cell = _fmt_metric(name, row["metrics"].get(name))
    ci = row.get("accuracy_ci95") if name == "accuracy" else None
    return f"{cell} [{ci[0] * 100:.1f}–{ci[1] * 100:.1f}]" if ci and cell != "—" else cell


def comparison_table(rows: list[dict[str, Any]]) -> str:
    metrics = [m for m in METRIC_ORDER if any(m in r["metrics"] for r in rows)]
    primary = metrics[0] if metrics else None
    head = ["Method", *(METRIC_NAMES[m] for m in metrics)]
    if primary:
        head.append(f"Δ {METRIC_NAMES[primary]} vs FP16-SFT")
    head += [MEMORY_NAMES[c] for c in MEMORY_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [r["label"], *(_metric_cell(r, m) for m in metrics)]
        if primary:
            cells.append(_fmt_gap(primary, r["gap"].get(primary)))
        cells += [_memory_cell(r, c) for c in MEMORY_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_table(results: dict[str, Any]) -> str:
    head = "| Stage | Steps | Train tokens | Wall time | Tokens/s | Loss first → last |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for stage, r in results["stages"].items():
        if r.get("reused"):
            lines.append(f"| {stage} | reused ({r.get('model_dir')}) | | | | |")
            continue

        def num(v: Any, fmt: str) -> str:
            return "—" if v is None else format(v, fmt)

        loss = f"{num(r.get('first_loss'), '.4f')} → {num(r.get('last_loss'), '.4f')}"
        wall = r.get("wall_seconds")
        lines.append(
            f"| {stage} | {num(r.get('steps'), 'd')} | {num(r.get('train_tokens'), ',d')} | "
            f"{'—' if wall is None else f'{wall / 60:.1f} min'} | {num(r.get('tokens_per_second'), '.0f')} | {loss} |"
        )
    return "\n".join(lines)


def _distill_line(results: dict[str, Any]) -> str | None:
    s = (results["stages"].get("distill") or {}).get("distill")
    if not s:
        return None
    return (
        f"Distillation: λ = {s.get('lambda')}, γ = {s.get('gamma')}, τ = {s.get('temperature')}, "
        f"relation heads A_r = {s.get('relation_heads')}, student layer {s.get('student_layer')}, "
        f"teacher layer {s.get('teacher_layer')}, CE {'on' if s.get('ce', True) else 'off'}."
    )


def _sweep_section(run_dir: Path, sweep: dict[str, Any], plot: str | None) -> list[str]:
    metric = sweep.get("metric_name", "accuracy")
    shift = any(e.get("task_shift") is not None for e in sweep.get("layers", []))
    lines = ["## Distillation layer", ""]
    lines.append(f"| Student layer | Teacher layer | {METRIC_NAMES.get(metric, metric)} | Relation divergence at init |"
                 + (" Task shift |" if shift else ""))  # fmt: skip
    lines.append("|---:|---:|---:|---:|" + ("---:|" if shift else ""))

    def num(v: float | None) -> str:
        return "—" if v is None else f"{v:.4g}"

    for e in sweep.get("layers", []):
        lines.append(
            f"| {e['student_layer']} | {e.get('teacher_layer', '—')} | {_fmt_metric(metric, e.get('metric'))} | "
            f"{num(e.get('criterion'))} |" + (f" {num(e.get('task_shift'))} |" if shift else "")
        )
    best, pick = sweep.get("best_layer"), (sweep.get("criterion") or {}).get("pick")
    if best is not None:
        lines += ["", f"Best layer by sweep: **{best}**."]
    if pick is not None:
        lines.append(
            f"Criterion `{sweep['criterion'].get('name')}` picks layer **{pick}**"
            + (
                f": {sweep['criterion']['points_below_best']:.2f} points below the sweep's best "
                f"({'within' if sweep['criterion']['within_0_5'] else 'not within'} 0.5 points)."
                if sweep["criterion"].get("points_below_best") is not None
                else " (no sweep measurement for it)."
            )
        )
    crit = sweep.get("criterion") or {}
    if crit.get("task_shift_pick") is not None:
        below = crit.get("task_shift_points_below_best")
        lines.append(
            f"The task-shift score (teacher vs base model relations) picks layer **{crit['task_shift_pick']}**"
            + (f": {below:.2f} points below the sweep's best." if below is not None else ".")
        )
    if plot:
        lines += ["", f"![accuracy per distillation layer]({plot})"]
    return lines + [""]


def build_report(
    run_dir: str | os.PathLike,
    extra_runs: list[tuple[str | None, Path, str]] | None = None,
    plots: bool = True,
    histogram_layer: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """(report.md text, report.json content) for a run directory; plots are written into it."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    rows = collect_rows(run_dir, results, extra_runs)
    if not rows:
        raise BitDistillError(
            f"{run_dir / 'results.json'}: no stage has an evaluation; run `bitdistill run CONFIG --only eval`"
        )
    add_gaps(rows)
    metric = primary_metric(rows)
    closed = gap_closed(rows, metric)
    sweep = read_sweep(run_dir)
    made: dict[str, str] = {}
    plot_notes: dict[str, str] = {}
    if plots:
        made, plot_notes = write_run_plots(run_dir, results, sweep, histogram_layer)

    md = [f"# {results.get('recipe', run_dir.name)}: {results.get('task', '?')}", ""]
    md.append(
        f"Model `{results.get('model')}`, seed {results.get('seed')}, recipe `{results.get('source')}`."
    )
    n = next((r["n"] for r in rows if r["n"]), None)
    if n:
        md.append(f"Evaluated on {n} examples.")
    md += ["", "## Comparison", "", comparison_table(rows), ""]
    if metric:
        md.append(
            "Metrics in percent (accuracy with its 95 % percentile-bootstrap interval over the evaluated "
            "examples, 2000 resamples); Δ is the difference to FP16-SFT in points. Memory is the parameters' "
            "storage: FP16 columns at 16 bits per parameter; 2-bit / 1.58-bit columns with the ternary "
            "linear weights packed 4 or 5 per byte (+ fp32 scales) and everything else (embeddings, norms, "
            "LM head) in FP16."
        )
    if closed is not None:
        md += ["", f"BitDistill recovers **{closed * 100:.1f} %** of the {METRIC_NAMES[metric]} gap between "
               "BitNet-SFT and FP16-SFT."]  # fmt: skip
    line = _distill_line(results)
    if line:
        md += ["", line]
    md += ["", "## Training", "", training_table(results), ""]
    if "training_curves" in made:
        md += [f"![training curves]({made['training_curves']})", ""]
    if "weight_histogram" in made:
        md += ["## Weights before and after continued pre-training", ""]
        md += [
            plot_notes.get("weight_histogram", ""),
            "",
            f"![weight histograms]({made['weight_histogram']})",
            "",
        ]
    elif "weight_histogram" in plot_notes:
        md += ["## Weights before and after continued pre-training", "", plot_notes["weight_histogram"], ""]
    if sweep:
        md += _sweep_section(run_dir, sweep, made.get("layer_sweep"))
    report = {**results, "report": {"primary_metric": metric, "rows": rows, "gap_closed": closed,
                                    "plots": made, "layer_sweep": sweep}}  # fmt: skip
    return "\n".join(md).rstrip() + "\n", report


def write_report(
    run_dir: str | os.PathLike,
    extra_runs: list[tuple[str | None, Path, str]] | None = None,
    plots: bool = True,
    histogram_layer: int | None = None,
) -> dict[str, Any]:
    """Write report.md and report.json into `run_dir`; return the report.json content."""
    run_dir = Path(run_dir)
    text, report = build_report(run_dir, extra_runs, plots, histogram_layer)
    atomic_write_text(run_dir / REPORT_JSON, json.dumps(report, indent=1) + "\n")
    atomic_write_text(run_dir / REPORT_MD, text)
    return report
