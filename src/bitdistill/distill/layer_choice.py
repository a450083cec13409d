"""Choosing the single layer for attention-relation distillation, without training at any layer.

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

from collections.abc import Iterable

import torch

from ..errors import BitDistillError
from ..model.adapters import adapter_for
from .capture import QKVCapture, layer_relation_heads
from .losses import attention_relation_loss

CRITERION = "relation_divergence_at_init"


def num_layers(model) -> int:
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
