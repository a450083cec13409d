"""Choosing the single layer for attention-relation distillation: a sweep, and a criterion that needs none.

**Sweep** (`sweep_layers`): for each candidate student layer, a short distillation through the pipeline's
own distill stage (same recipe, only `distill.student_layer` / `teacher_layer`, the stage directory and
optionally the step count changed), evaluated on the dev split; the best layer wins. Each layer's run is an
ordinary stage directory under `<run>/layer_sweep/layer_<l>/`, so an interrupted sweep resumes and a
finished layer is never trained twice. The paper's Figure 3b is this measurement.

**Criterion** (`criterion_scores`, the paper's open question 1): the relation divergence at initialisation,
    D_l = L_AD(teacher layer t(l) ‖ student layer l)   on a few training batches, before any distillation,
i.e. the very attention-relation loss (MiniLM-v2 Q/K/V relations, A_r heads, padding masked) the distill
stage would minimise at that layer, measured on the student it starts from (the continued-pre-training
output). The pick is argmax_l D_l. Why: the AD term can only teach what the student does not already
match. Where D_l ≈ 0 the loss has neither value nor gradient, and it transfers nothing; the layer with the
largest mismatch is where the teacher's task-tuned relations and the ternary student's disagree most, so the
signal γ·L_AD carries there is largest. Quantization error compounds through depth, which is why D_l tends to
grow towards late layers (the paper's empirical finding) — but the criterion is measured per model and task
and can prefer a non-final layer. Its cost is one forward pass of teacher and student per batch for *all*
layers at once (hooks on every block), against a full distillation per layer for the sweep.
A second score is recorded beside it when the base model is given: the *task shift* S_l = L_AD(teacher ‖
base model), which isolates where task fine-tuning moved the teacher's relations (without quantization
error). Both are written to layer_sweep.json so a sweep measures either against the truth.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import BitDistillError
from ._io import atomic_write_text

SWEEP_FILE = "layer_sweep.json"
SWEEP_DIR = "layer_sweep"
CRITERION = "relation_divergence_at_init"


def num_layers(model) -> int:
    from ..model.adapters import adapter_for

    return len(adapter_for(model).blocks(model))


def map_layer(layer: int, n_student: int, n_teacher: int) -> int:
    """The teacher layer at the same relative depth as student `layer` (identity for equal depths)."""
    layer %= n_student
    if n_student == n_teacher or n_student == 1:
        return min(layer, n_teacher - 1)
    return round(layer * (n_teacher - 1) / (n_student - 1))


def parse_layers(spec: str, n: int) -> list[int]:
    """'all', '0,4,-1', or 'start:stop[:step]' (Python slice over 0..n-1) -> sorted absolute indices."""
    spec = spec.strip()
    if spec == "all":
        return list(range(n))
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if ":" in part:
                out.update(range(n)[slice(*(int(x) if x else None for x in part.split(":")))])
                continue
            i = int(part)
        except ValueError:
            raise BitDistillError(
                f"layers {spec!r}: {part!r} is not an integer, a slice a:b[:c] or 'all'"
            ) from None
        if not -n <= i < n:
            raise BitDistillError(f"layers {spec!r}: layer {i} is out of range for {n} decoder layers")
        out.add(i % n)
    if not out:
        raise BitDistillError(f"layers {spec!r}: selects no layer of 0..{n - 1}")
    return sorted(out)


@torch.inference_mode()
def relation_divergences(
    teacher,
    student,
    batches: Iterable[dict[str, torch.Tensor]],
    relation_heads: int | None = None,
    teacher_layer_of: dict[int, int] | None = None,
) -> dict[int, float]:
    """Mean over `batches` of L_AD(teacher layer t(l) ‖ student layer l) for every student layer l.

    `teacher_layer_of` maps student -> teacher layer (default `map_layer`). All layers are captured in one
    forward pass per model and batch. `relation_heads` None = the distill stage's default A_r over them.
    """
    from ..distill.capture import QKVCapture, layer_relation_heads
    from ..distill.losses import attention_relation_loss

    ns, nt = num_layers(student), num_layers(teacher)
    mapping = teacher_layer_of or {i: map_layer(i, ns, nt) for i in range(ns)}
    s_caps = {i: QKVCapture(student, i) for i in mapping}
    t_caps = {j: QKVCapture(teacher, j) for j in set(mapping.values())}
    if relation_heads is None:
        relation_heads = layer_relation_heads(student, teacher, mapping)
    totals = dict.fromkeys(mapping, 0.0)
    count = 0
    s_dev = next(student.parameters()).device
    t_dev = next(teacher.parameters()).device
    was = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    try:
        for batch in batches:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            t_qkv = _capture_all(teacher, t_caps, ids.to(t_dev), mask.to(t_dev))
            s_qkv = _capture_all(student, s_caps, ids.to(s_dev), mask.to(s_dev))
            for i, j in mapping.items():
                t = tuple(x.to(s_dev) for x in t_qkv[j])
                totals[i] += float(attention_relation_loss(t, s_qkv[i], mask.to(s_dev), relation_heads))
            count += 1
    finally:
        teacher.train(was[0])
        student.train(was[1])
    if count == 0:
        raise BitDistillError("layer criterion: no batches to measure the relation divergence on")
    return {i: v / count for i, v in totals.items()}


def _capture_all(model, caps: dict, ids, mask) -> dict[int, tuple[torch.Tensor, ...]]:
    for c in caps.values():
        c.attach()
    try:
        model(input_ids=ids, attention_mask=mask)
        return {i: c.qkv for i, c in caps.items()}
    finally:
        for c in caps.values():
            c.remove()
            c.clear()


def pick_layer(scores: dict[int, float]) -> int:
    """argmax of the criterion (the deeper layer on a tie, as the paper prefers late layers)."""
    return max(scores, key=lambda i: (scores[i], i))


def choose_layer(
    teacher, student, batches: Iterable[dict[str, torch.Tensor]], relation_heads: int | None = None
) -> tuple[int, int, dict[int, float]]:
    """(student layer, teacher layer, scores) picked by the criterion, for models already in memory.

    This is the hook for `distill.student_layer: auto`: the distill stage calls it with its teacher, its
    student and a few task batches before training, and distils at the returned layers.
    """
    ns, nt = num_layers(student), num_layers(teacher)
    mapping = {i: map_layer(i, ns, nt) for i in range(ns)}
    scores = relation_divergences(teacher, student, batches, relation_heads, mapping)
    pick = pick_layer(scores)
    return pick, mapping[pick], scores


# -- with a recipe ---------------------------------------------------------------------------------------


def criterion_batches(recipe, tokenizer, examples: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    from ..data.encode import TaskDataset, collate, pad_token_id
    from ..stages.common import load_task_data

    data = load_task_data(recipe)
    ds = TaskDataset(tokenizer, data.train[:examples], recipe.task.max_length)
    pad = pad_token_id(tokenizer)
    return [
        collate([ds[j] for j in range(i, min(i + batch_size, len(ds)))], pad)
        for i in range(0, len(ds), batch_size)
    ]


def criterion_scores(
    recipe, examples: int = 64, batch_size: int = 16, with_base: bool = True
) -> dict[str, Any]:
    """The criterion for a recipe whose teacher (and continued pre-training, if enabled) have finished.

    Returns {"name", "scores": {layer: D_l}, "task_shift": {layer: S_l} | None, "pick", "teacher_layers",
    "examples"}. The student is the one the distill stage would start from.
    """
    from ..distill.capture import layer_relation_heads
    from ..stages.common import load_model_dir_or_spec
    from ..stages.distill import load_student, load_teacher

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
    from ..recipe.run import evaluate_stage, run_stage
    from ..stages.common import finished_model, load_task_data

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
        from ..model.io import read_config

        return int(read_config(p)["num_hidden_layers"])
    from ..model.hub import load_pretrained

    model, _ = load_pretrained(model_spec, tokenizer=False)
    return num_layers(model)
