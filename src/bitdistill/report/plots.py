"""Report figures (matplotlib, Agg backend, PNG): training curves, weight histograms, layer sweep.

- Training curves of every stage from its jsonl log (`<stage>/train/log.jsonl`, written by the training
  loop): the loss and its parts (ce, kd, ad, lm) per optimizer step, and evaluation metrics when logged.
- The paper's Figure 2: histograms of one decoder block's projection weights before and after continued
  pre-training, against the ternary thresholds. Weights are shown as W/Δ (Δ = absmean scale from
  `quant.numerics.weight_scale`, per tensor/row/group as the model was converted), so the rounding
  thresholds ±Δ/2 sit at ±0.5 for every granularity.
- The paper's Figure 3b: the task metric per distillation layer of a layer sweep.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure  # no pyplot: no process-wide backend is chosen; PNGs render via Agg

from .._fs import atomic_write_bytes
from ..errors import BitDistillError
from .run_dir import read_log, resolve_model_dir, stage_log_path

SKIP_KEYS = {"step", "loss", "lr", "tokens", "tokens_per_s"}
NEAR = 0.1  # |(|W/Δ| − 0.5)| < NEAR counts as "near a ternary threshold"


def _save(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


# -- training curves -------------------------------------------------------------------------------------


def plot_training_curves(logs: dict[str, list[dict[str, Any]]], out: str | os.PathLike) -> Path:
    """One panel per stage: loss (thick) and loss parts (thin) per step; eval metrics on a right axis."""
    logs = {k: v for k, v in logs.items() if any("loss" in r for r in v)}
    if not logs:
        raise BitDistillError("no training log with a loss to plot")
    fig = Figure(figsize=(4.2 * len(logs), 3.4))
    axes = fig.subplots(1, len(logs), squeeze=False)
    for ax, (stage, recs) in zip(axes[0], logs.items(), strict=True):
        train = [r for r in recs if "loss" in r]
        steps = [r["step"] for r in train]
        ax.plot(steps, [r["loss"] for r in train], lw=2, label="loss")
        parts = sorted({k for r in train for k in r if k not in SKIP_KEYS and isinstance(r[k], int | float)})
        for k in parts:
            pts = [(r["step"], r[k]) for r in train if k in r]
            ax.plot([s for s, _ in pts], [v for _, v in pts], lw=1, alpha=0.8, label=k)
        values = [r[k] for r in train for k in ("loss", *parts) if k in r and r[k] > 0]
        if values and max(values) / min(values) > 30:
            ax.set_yscale("log")  # parts on very different scales (e.g. ad vs ce)
        evals = [r for r in recs if any(k.startswith("eval_") for k in r)]
        metric_keys = sorted({k for r in evals for k in r if k.startswith("eval_") and k != "eval_n"})
        if metric_keys:
            ax2 = ax.twinx()
            for k in metric_keys:
                pts = [(r["step"], r[k]) for r in evals if isinstance(r.get(k), int | float)]
                ax2.plot(
                    [s for s, _ in pts], [v for _, v in pts], "o--", ms=4, color="black", alpha=0.6, label=k
                )
            ax2.set_ylabel(", ".join(metric_keys))
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


# -- weight histograms (Figure 2) ------------------------------------------------------------------------


def block_weights(spec: str | os.PathLike, layer: int) -> dict[str, torch.Tensor]:
    """The linear weights of decoder block `layer` ({"q_proj": W, ...}) of a model directory or spec.

    Directories with safetensors are read tensor by tensor (no model is built); other specs (a .gguf, the
    embedded default) are loaded with `load_pretrained`.
    """
    from ..model.adapters import adapter_for

    p = Path(str(spec))
    files = sorted(p.glob("*.safetensors")) if p.is_dir() and (p / "config.json").is_file() else []
    if files:
        from safetensors import safe_open

        model_type = json.loads((p / "config.json").read_text()).get("model_type", "")
        adapter = adapter_for(model_type)
        wanted = {
            f"{adapter.layers}.{layer}.{path}.weight": path.rsplit(".", 1)[-1]
            for path in adapter.linear_paths()
        }
        out: dict[str, torch.Tensor] = {}
        for f in files:
            with safe_open(str(f), "pt") as st:
                for name in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                    if name in wanted:
                        out[wanted[name]] = st.get_tensor(name).float()
        if len(out) != len(wanted):
            raise BitDistillError(f"{p}: block {layer} lacks {sorted(set(wanted.values()) - set(out))}")
        return {short: out[short] for short in wanted.values()}  # q, k, v, o, gate, up, down order
    from ..model.hub import load_pretrained

    model, _ = load_pretrained(spec, tokenizer=False)
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    if not 0 <= layer < len(blocks):
        raise BitDistillError(f"{spec}: layer {layer} is out of range (0..{len(blocks) - 1})")
    return {path.rsplit(".", 1)[-1]: blocks[layer].get_submodule(path).weight.detach().float()
            for path in adapter.linear_paths()}  # fmt: skip


def normalized(w: torch.Tensor, granularity: str = "tensor", group_size: int = 128) -> torch.Tensor:
    """W / Δ with the absmean scale of the model's granularity (flattened)."""
    from ..quant.numerics import weight_scale

    delta = weight_scale(w, granularity, group_size)  # type: ignore[arg-type]
    if granularity == "group":
        return (w.reshape(w.shape[0], -1, group_size) / delta).flatten()
    return (w / delta).flatten()


def weight_stats(x: torch.Tensor) -> dict[str, float]:
    """Shares of the ternary values (round-clamp of W/Δ) and of weights within NEAR of a threshold."""
    q = x.round().clamp(-1, 1)
    n = x.numel()
    return {
        "-1": float((q == -1).sum()) / n,
        "0": float((q == 0).sum()) / n,
        "+1": float((q == 1).sum()) / n,
        "near_threshold": float(((x.abs() - 0.5).abs() < NEAR).sum()) / n,
    }


def plot_weight_histograms(
    before: dict[str, torch.Tensor],
    after: dict[str, torch.Tensor],
    out: str | os.PathLike,
    granularity: str = "tensor",
    group_size: int = 128,
    title: str = "",
) -> dict[str, dict[str, dict[str, float]]]:
    """Two rows (before, after) of W/Δ histograms per projection with the ±0.5 thresholds; returns stats."""
    names = [n for n in before if n in after]
    if not names:
        raise BitDistillError("no common weights to compare before and after continued pre-training")
    fig = Figure(figsize=(2.6 * len(names), 4.6))
    axes = fig.subplots(2, len(names), squeeze=False)
    stats: dict[str, dict[str, dict[str, float]]] = {}
    for col, name in enumerate(names):
        stats[name] = {}
        for row, (phase, weights) in enumerate((("before", before), ("after", after))):
            x = normalized(weights[name], granularity, group_size)
            stats[name][phase] = weight_stats(x)
            ax = axes[row][col]
            ax.hist(x.numpy(), bins=121, range=(-3, 3), color="C0" if row == 0 else "C1")
            for t in (-0.5, 0.5):
                ax.axvline(t, color="red", lw=0.8, ls="--")
            s = stats[name][phase]
            ax.set_title(
                f"{name} ({phase})\n0: {s['0']:.0%}  near ±Δ/2: {s['near_threshold']:.0%}", fontsize=8
            )
            ax.tick_params(labelsize=7)
            ax.set_yticks([])
            if row == 1:
                ax.set_xlabel("W / Δ  (thresholds ±Δ/2 at ±0.5)", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, out)
    return stats


# -- layer sweep (Figure 3b) -----------------------------------------------------------------------------


def plot_layer_sweep(sweep: dict[str, Any], out: str | os.PathLike) -> Path:
    """Metric per student distillation layer; the best layer and the criterion's pick are marked."""
    entries = [e for e in sweep.get("layers", []) if e.get("metric") is not None]
    scored = [e for e in sweep.get("layers", []) if e.get("criterion") is not None]
    if not entries and not scored:
        raise BitDistillError("the layer sweep holds no measured layer")
    fig = Figure(figsize=(max(4.0, 0.45 * len(sweep.get("layers", [])) + 2), 3.4))
    ax = fig.subplots()
    best = sweep.get("best_layer")
    pick = (sweep.get("criterion") or {}).get("pick")
    if entries:
        xs = [e["student_layer"] for e in entries]
        ys = [e["metric"] * 100 for e in entries]
        colors = ["C2" if x == best else "C0" for x in xs]
        ax.bar(xs, ys, color=colors)
        lo = min(ys)
        ax.set_ylim(max(0.0, lo - 5), min(100.0, max(ys) + 2))
        ax.set_ylabel(f"{sweep.get('metric_name', 'accuracy')} (%)")
    if scored:
        ax2 = ax.twinx()
        ax2.plot([e["student_layer"] for e in scored], [e["criterion"] for e in scored], "k.-", alpha=0.7)
        ax2.set_ylabel(f"criterion: {(sweep.get('criterion') or {}).get('name', '')}", fontsize=8)
        if pick is not None:
            ax2.axvline(pick, color="red", ls="--", lw=1, label=f"criterion pick ({pick})")
            ax2.legend(fontsize=7, loc="lower left")
    ax.set_xlabel("student layer for attention distillation")
    ax.set_title(
        f"{sweep.get('task', '')} per distillation layer" + (f" (best {best})" if best is not None else "")
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


# -- everything a run's report shows ---------------------------------------------------------------------


def _histogram_for_run(run_dir: Path, results: dict[str, Any], layer: int | None):
    """(png name, note) for Figure 2 of a run, or (None, why not)."""
    rec = results["stages"].get("continue_pretrain")
    if not rec:
        return None, "No continued pre-training in this run, so no before/after weight histogram."
    after_dir = resolve_model_dir(run_dir, "continue_pretrain", rec.get("model_dir"))
    if after_dir is None:
        return None, "The continued pre-training model directory is gone; no weight histogram."
    config = json.loads((after_dir / "config.json").read_text())
    settings = config.get("bitdistill") or {}
    n_layers = int(config.get("num_hidden_layers", 1))
    layer = n_layers // 2 if layer is None else layer % n_layers
    try:
        after = block_weights(after_dir, layer)
        before = block_weights(results["model"], layer)
    except (BitDistillError, OSError, KeyError) as err:
        return None, f"Weight histogram skipped: {err}"
    name = "weight_histogram.png"
    stats = plot_weight_histograms(
        before, after, run_dir / name, settings.get("granularity", "tensor"), int(settings.get("group_size", 128)),
        title=f"block {layer}: W/Δ before (base model) and after continued pre-training",
    )  # fmt: skip
    lines = [f"Block {layer}. Shares of ternary zeros and of weights within ±{NEAR}·Δ of a threshold ±Δ/2:", "",
             "| Projection | 0 before | 0 after | near ±Δ/2 before | near ±Δ/2 after |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for proj, s in stats.items():
        b, a = s["before"], s["after"]
        lines.append(
            f"| {proj} | {b['0']:.1%} | {a['0']:.1%} | {b['near_threshold']:.1%} | {a['near_threshold']:.1%} |"
        )
    return name, "\n".join(lines)


def write_run_plots(
    run_dir: str | os.PathLike,
    results: dict[str, Any],
    sweep: dict[str, Any] | None = None,
    histogram_layer: int | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Write every figure the run's data allow; return ({figure: file name in run_dir}, {figure: note})."""
    run_dir = Path(run_dir)
    made: dict[str, str] = {}
    notes: dict[str, str] = {}
    logs = {}
    for stage, rec in results["stages"].items():
        path = stage_log_path(run_dir, stage, rec)
        if path is not None:
            logs[stage] = read_log(path)
    if any(logs.values()):
        plot_training_curves(logs, run_dir / "training_curves.png")
        made["training_curves"] = "training_curves.png"
    name, note = _histogram_for_run(run_dir, results, histogram_layer)
    if name:
        made["weight_histogram"] = name
    notes["weight_histogram"] = note
    if sweep and sweep.get("layers"):
        plot_layer_sweep(sweep, run_dir / "layer_sweep.png")
        made["layer_sweep"] = "layer_sweep.png"
    return made, notes
