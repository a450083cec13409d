"""Run a recipe: teacher -> bitnet_sft -> continue_pretrain -> distill -> eval, as the YAML declares.

A stage whose `stage.json` exists is skipped (its record is reused); a stage that was interrupted resumes
from its last checkpoint. The run ends with `results.json` in the output directory: per stage the dev
metrics, wall time, training tokens and tokens/s.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from typing import Any

import torch

from ..data.tasks import get_task
from ..recipe.schema import STAGES, Recipe
from ..stages.common import read_stage, stage_dir, write_stage
from ..train.checkpoint import atomic_write_text
from .ablations import variants

EVAL_FILE = "eval.json"


def _log(msg: str) -> None:
    print(f"[bitdistill] {msg}", file=sys.stderr, flush=True)


def run_stage(recipe: Recipe, stage: str, force: bool = False) -> dict[str, Any]:
    """Run one stage unless it already finished; return its stage.json record."""
    from ..stages import RUNNERS

    out = stage_dir(recipe, stage)
    done = read_stage(out)
    if done is not None and not force:
        _log(f"{stage}: done already ({out / 'stage.json'}), skipping")
        return {**done, "skipped": True}
    _log(f"{stage}: starting -> {out}")
    t0 = time.perf_counter()
    RUNNERS[stage](recipe)
    record = read_stage(out) or {}
    _log(f"{stage}: finished in {time.perf_counter() - t0:.1f}s")
    return record


def evaluate_stage(recipe: Recipe, stage: str, data=None) -> dict[str, Any]:
    """Dev metrics of a finished stage's model, cached in <stage>/eval.json (keyed by the eval settings)."""
    from ..stages.sft import evaluate_dir

    out = stage_dir(recipe, stage)
    record = read_stage(out)
    if record is None:
        return {}
    key = {
        "split": recipe.task.eval_split,
        "limit": recipe.task.eval_limit,
        "max_length": recipe.task.max_length,
    }
    if get_task(recipe.task.name, **recipe.task.options).kind != "classification":  # generation settings
        key.update(generate_limit=recipe.task.generate_limit, max_new_tokens=recipe.task.max_new_tokens,
                   num_beams=recipe.task.num_beams)  # fmt: skip
    cache = out / EVAL_FILE
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["metrics"]
    _log(f"eval: {stage} ({record['model_dir']}) on {recipe.task.name} {recipe.task.eval_split}")
    t0 = time.perf_counter()
    metrics = evaluate_dir(recipe, record["model_dir"], data)
    metrics["eval_seconds"] = time.perf_counter() - t0
    atomic_write_text(cache, json.dumps({"key": key, "metrics": metrics}, indent=1) + "\n")
    return metrics


def run_recipe(recipe: Recipe, only: list[str] | None = None) -> dict[str, Any]:
    """Execute the recipe's enabled stages in order, then evaluation; write and return results.json."""
    out = recipe.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "recipe": recipe.name,
        "source": recipe.source,
        "model": recipe.model,
        "task": recipe.task.name,
        "seed": recipe.seed,
        "host": {"python": platform.python_version(), "torch": torch.__version__,
                 "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads()},
        "stages": {},
    }  # fmt: skip
    t_all = time.perf_counter()
    # Built before anything trains, so a bad ablation override fails fast.
    ablations = variants(recipe) if not only or "ablations" in only else {}
    for stage in STAGES:
        if not getattr(recipe, stage).enabled or (only and stage not in only):
            continue
        record = run_stage(recipe, stage)
        train = record.get("train", {})
        results["stages"][stage] = {
            "model_dir": record.get("model_dir"),
            "wall_seconds": record.get("wall_seconds"),
            "steps": train.get("steps"),
            "train_tokens": train.get("tokens"),
            "tokens_per_second": train.get("tokens_per_second"),
            "first_loss": train.get("first_loss"),
            "last_loss": train.get("last_loss"),
            "reused": record.get("reused", False),
            **({"distill": record["distill"]} if "distill" in record else {}),
        }
    if ablations:
        results["ablations"] = run_ablations(ablations)
    if recipe.eval.enabled and (not only or "eval" in only):
        from ..stages.common import load_task_data

        data = None
        for stage in recipe.eval.stages:
            if stage in results["stages"] or read_stage(stage_dir(recipe, stage)) is not None:
                if data is None:
                    data = load_task_data(recipe, need_train=False)
                metrics = evaluate_stage(recipe, stage, data)
                results["stages"].setdefault(stage, {})["eval"] = metrics
    results["wall_seconds_this_invocation"] = time.perf_counter() - t_all
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    _log(f"results: {out / 'results.json'}")
    _print_summary(results)
    if recipe.eval.enabled and any(r.get("eval") for r in results["stages"].values()):
        from ..errors import BitDistillError
        from ..eval.report import write_report

        try:
            write_report(out)
            _log(f"report: {out / 'report.md'}")
        except BitDistillError as err:
            _log(f"report: skipped ({err})")
    return results


def run_ablations(ablations: dict[str, Recipe]) -> dict[str, Any]:
    """Run each ablation variant (its distill stage and that stage's evaluation); label -> its record."""
    rows: dict[str, Any] = {}
    for label, variant in ablations.items():
        _log(f"ablation {label!r}: -> {variant.out}")
        sub = run_recipe(variant)
        rows[label] = {"stage": "distill", **sub["stages"].get("distill", {})}
    return rows


def _print_summary(results: dict[str, Any]) -> None:
    rows = []
    for stage, r in [*results["stages"].items(), *(results.get("ablations") or {}).items()]:
        ev = r.get("eval", {})
        metric = next((f"{k}={v:.4f}" for k, v in ev.items() if k in ("accuracy", "eval_loss")), "-")
        wall = r.get("wall_seconds")
        tps = r.get("tokens_per_second")
        rows.append(
            f"  {stage:<26} {metric:<18} wall={wall or 0:8.1f}s  tok/s={tps or 0:8.1f}  "
            f"loss {r.get('first_loss') or float('nan'):.4f} -> {r.get('last_loss') or float('nan'):.4f}"
        )
    print("\n".join([f"recipe {results['recipe']} ({results['task']}):", *rows]))


__all__ = ["run_recipe", "run_stage", "evaluate_stage", "write_stage"]
