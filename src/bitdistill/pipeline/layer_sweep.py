"""The layer sweep: a short distillation at each candidate layer, evaluated, against the criterion.

**Sweep** (`sweep_layers`): for each candidate student layer, a short distillation through the pipeline's
own distill stage (same recipe, only `distill.student_layer` / `teacher_layer`, the stage directory and
optionally the step count changed), evaluated on the dev split; the best layer wins. Each layer's run is an
ordinary stage directory under `<run>/layer_sweep/layer_<l>/`, so an interrupted sweep resumes and a
finished layer is never trained twice. The paper's Figure 3b is this measurement.
The criterion itself (distill/layer_choice.py) is measured here on the recipe's own teacher and student.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._fs import atomic_write_text
from ..distill.capture import layer_relation_heads
from ..distill.layer_choice import (
    CRITERION,
    map_layer,
    num_layers,
    parse_layers,
    pick_layer,
    relation_divergences,
)
from ..errors import BitDistillError
from ..model.hub import load_pretrained
from ..model.io import read_config
from .markers import SWEEP_FILE, finished_model
from .models import load_model_dir_or_spec
from .run import evaluate_stage, run_stage
from .stages.distill import load_student, load_teacher
from .task_data import criterion_batches, load_task_data

SWEEP_DIR = "layer_sweep"


def criterion_scores(
    recipe, examples: int = 64, batch_size: int = 16, with_base: bool = True
) -> dict[str, Any]:
    """The criterion for a recipe whose teacher (and continued pre-training, if enabled) have finished.

    Returns {"name", "scores": {layer: D_l}, "task_shift": {layer: S_l} | None, "pick", "teacher_layers",
    "examples"}. The student is the one the distill stage would start from.
    """
    teacher, _ = load_teacher(recipe)
    student, tok = load_student(recipe)
    batches = criterion_batches(recipe, tok, examples, batch_size)
    ns, nt = num_layers(student), num_layers(teacher)
    mapping = {i: map_layer(i, ns, nt) for i in range(ns)}
    heads = recipe.distill.relation_heads or layer_relation_heads(student, teacher, mapping)
    scores = relation_divergences(teacher, student, batches, heads, mapping)
    del student
    shift = None
    if with_base:
        base, _ = load_model_dir_or_spec(recipe.model)
        shift = relation_divergences(teacher, base, batches, heads, mapping)
        del base
    return {
        "name": CRITERION,
        "scores": scores,
        "task_shift": shift,
        "pick": pick_layer(scores),
        "task_shift_pick": pick_layer(shift) if shift else None,
        "teacher_layers": mapping,
        "examples": sum(int(b["input_ids"].shape[0]) for b in batches),
        "relation_heads": heads,
    }


def _layer_recipe(recipe, layer: int, teacher_layer: int, steps: int | None):
    r = copy.deepcopy(recipe)
    r.distill.student_layer = layer
    r.distill.teacher_layer = teacher_layer
    r.distill.attention = True
    r.stage_dirs = {**r.stage_dirs, "distill": str(recipe.out / SWEEP_DIR / f"layer_{layer}")}
    if steps is not None:
        r.distill.train = {**r.distill.train, "steps": steps}
    return r


def _metric_of(metrics: dict[str, Any]) -> tuple[str, float | None, bool]:
    """(name, value, greater is better) of the sweep's metric."""
    if "accuracy" in metrics:
        return "accuracy", metrics["accuracy"], True
    return "eval_loss", metrics.get("eval_loss"), False


def sweep_layers(
    recipe,
    layers: str | Sequence[int] = "all",
    steps: int | None = None,
    criterion: bool = True,
    criterion_examples: int = 64,
    with_base: bool = True,
    run_sweep: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a layer sweep and/or the criterion; write and return `<run>/layer_sweep.json`."""
    if not recipe.distill.enabled:
        raise BitDistillError(f"{recipe.source}: distill.enabled is false; the sweep distils at each layer")
    out = recipe.out
    # The prerequisites of every distillation: a task teacher and (when enabled) the continued pre-training.
    for stage in ("teacher", "continue_pretrain"):
        if getattr(recipe, stage).enabled and (
            stage == "continue_pretrain" or recipe.distill.teacher == "auto"
        ):
            run_stage(recipe, stage)
    if recipe.distill.student != "auto":
        student_src = recipe.distill.student
    elif recipe.continue_pretrain.enabled:
        student_src = finished_model(recipe, "continue_pretrain")
    else:
        student_src = recipe.model  # the "no continued pre-training" ablation converts the base model
    ns = _config_layers(student_src)
    teacher_dir = (
        recipe.distill.teacher if recipe.distill.teacher != "auto" else finished_model(recipe, "teacher")
    )
    nt = _config_layers(teacher_dir)
    chosen = parse_layers(layers, ns) if isinstance(layers, str) else sorted({int(x) % ns for x in layers})
    result: dict[str, Any] = {
        "recipe": recipe.name, "task": recipe.task.name, "student_layers": ns, "teacher_layers_total": nt,
        "steps": steps if steps is not None else recipe.train_config("distill").steps, "layers": [],
    }  # fmt: skip
    crit = None
    if criterion:
        t0 = time.perf_counter()
        crit = criterion_scores(recipe, criterion_examples, with_base=with_base)
        crit["seconds"] = time.perf_counter() - t0
    entries = {}
    for layer in chosen:
        entries[layer] = {"student_layer": layer, "teacher_layer": map_layer(layer, ns, nt), "metric": None}
    if run_sweep:
        data = load_task_data(recipe, need_train=False)
        for layer in chosen:
            r = _layer_recipe(recipe, layer, entries[layer]["teacher_layer"], steps)
            record = run_stage(r, "distill")
            name, value, greater = _metric_of(evaluate_stage(r, "distill", data))
            entries[layer].update(metric=value, metric_name=name, model_dir=record.get("model_dir"),
                                  wall_seconds=record.get("wall_seconds"))  # fmt: skip
            result["metric_name"], result["greater_is_better"] = name, greater
    if crit is not None:
        for layer, e in entries.items():
            e["criterion"] = crit["scores"].get(layer)
            if crit["task_shift"]:
                e["task_shift"] = crit["task_shift"].get(layer)
    result["layers"] = [entries[layer] for layer in chosen]
    measured = {layer: e["metric"] for layer, e in entries.items() if e["metric"] is not None}
    if measured:
        greater = result.get("greater_is_better", True)
        best = max(measured, key=lambda i: (measured[i] if greater else -measured[i], i))
        result["best_layer"] = best
        result["best_metric"] = measured[best]
    if crit is not None:
        result["criterion"] = _compare(crit, measured, result.get("greater_is_better", True))
    atomic_write_text(out / SWEEP_FILE, json.dumps(result, indent=1, default=str) + "\n")
    return result


def _compare(crit: dict[str, Any], measured: dict[int, float], greater: bool) -> dict[str, Any]:
    """The criterion's picks against the sweep: points below the best measured layer, within 0.5 points."""
    out = {k: v for k, v in crit.items()}
    out["scores"] = {str(k): v for k, v in crit["scores"].items()}
    if crit.get("task_shift"):
        out["task_shift"] = {str(k): v for k, v in crit["task_shift"].items()}
    out["teacher_layers"] = {str(k): v for k, v in crit["teacher_layers"].items()}
    if measured:
        best = max(measured.values()) if greater else min(measured.values())
        for key, pick in (("", crit["pick"]), ("task_shift_", crit.get("task_shift_pick"))):
            if pick is None or pick not in measured:
                continue
            below = (best - measured[pick]) * (100 if greater else 1) * (1 if greater else -1)
            out[f"{key}points_below_best"] = below
            out[f"{key}within_0_5"] = below <= 0.5
    return out


def _config_layers(model_spec) -> int:
    """Decoder layer count of a model directory (from config.json) or any loadable spec."""
    p = Path(str(model_spec))
    if (p / "config.json").is_file():
        return int(read_config(p)["num_hidden_layers"])
    model, _ = load_pretrained(model_spec, tokenizer=False)
    return num_layers(model)
