"""Distillation (the paper's stage 3): L = CE + λ·τ²·KL(teacher ‖ student) + γ·L_AD on the task.

The teacher (full precision, frozen) and the BitNet student see the same batch; logits KD acts on every
non-pad token (or the target tokens: `distill.kd_positions`), attention-relation KD on the Q/K/V of one
layer per model (chosen separately, so a larger teacher works). Each term can be switched off in the recipe
for the paper's ablations.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import torch

from ...config.recipe import Recipe
from ...distill.capture import QKVCapture, layer_relation_heads
from ...distill.layer_choice import CRITERION, choose_layer
from ...distill.losses import distill_loss
from ...errors import BitDistillError
from ..markers import finished_model
from ..models import convert, load_model_dir_or_spec
from ..task_data import criterion_batches, load_task_data
from .sft import train_task_model

AUTO_LAYER_EXAMPLES = 64  # training examples the `student_layer: auto` criterion reads (one forward each)


def _same_tokenizer(teacher_tok, student_tok, where: str) -> None:
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise BitDistillError(
            f"{where}: the teacher's tokenizer differs from the student's ({len(teacher_tok)} vs "
            f"{len(student_tok)} tokens); distillation needs a teacher of the same tokenizer family"
        )


def load_student(recipe: Recipe):
    spec = recipe.distill
    if spec.student == "teacher":
        # Beyond the paper: stage 1 applied to the fine-tuned FP teacher, a start that already knows the task.
        model, tok = load_model_dir_or_spec(finished_model(recipe, "teacher"))
        return convert(model, recipe), tok
    if spec.student != "auto":
        return load_model_dir_or_spec(spec.student)
    if recipe.continue_pretrain.enabled:
        return load_model_dir_or_spec(finished_model(recipe, "continue_pretrain"))
    # Ablation "no continued pre-training": distill straight into the stage-1 conversion.
    model, tok = load_model_dir_or_spec(recipe.model)
    return convert(model, recipe), tok


def load_teacher(recipe: Recipe):
    spec = recipe.distill
    where = spec.teacher if spec.teacher != "auto" else finished_model(recipe, "teacher")
    teacher, tok = load_model_dir_or_spec(where)
    teacher.eval().requires_grad_(False).to(getattr(torch, spec.teacher_dtype))
    return teacher, tok


def _forward_capturing(model, capture: QKVCapture | None, ids: torch.Tensor, mask: torch.Tensor):
    """(logits, the captured layer's (Q, K, V) or None); no hook or captured tensor is left behind."""
    if capture is None:
        return model(input_ids=ids, attention_mask=mask).logits, None
    with capture:
        try:
            return model(input_ids=ids, attention_mask=mask).logits, capture.qkv
        finally:
            capture.clear()


def make_distill_loss(recipe: Recipe, student, teacher, kind: str):
    spec = recipe.distill
    lam, gam = spec.weights(kind)
    lam = lam if spec.logits else 0.0
    gam = gam if spec.attention else 0.0
    heads = spec.relation_heads or layer_relation_heads(
        student, teacher, {spec.student_layer: spec.teacher_layer}
    )
    s_cap = QKVCapture(student, spec.student_layer, spec.qkv_source) if gam else None
    t_cap = QKVCapture(teacher, spec.teacher_layer, spec.qkv_source) if gam else None

    def loss_fn(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        teacher_logits = t_qkv = None
        if lam or gam:
            with torch.no_grad():
                teacher_logits, t_qkv = _forward_capturing(teacher, t_cap, ids, mask)
        logits, s_qkv = _forward_capturing(model, s_cap, ids, mask)
        parts = distill_loss(
            logits, batch["labels"], teacher_logits if lam else None, t_qkv, s_qkv, mask,
            temperature=spec.temperature, kd_weight=lam, ad_weight=gam, num_relation_heads=heads,
            ce_weight=1.0 if spec.ce else 0.0, kd_positions=spec.kd_positions, relation=spec.relation,
        )  # fmt: skip
        return parts["loss"], {k: float(v.detach()) for k, v in parts.items() if k != "loss"}

    return loss_fn, {"lambda": lam, "gamma": gam, "temperature": spec.temperature, "relation_heads": heads,
                     "student_layer": spec.student_layer, "teacher_layer": spec.teacher_layer,
                     "ce": spec.ce, "kd_positions": spec.kd_positions, "relation": spec.relation,
                     "qkv_source": spec.qkv_source}  # fmt: skip


def resolve_auto_layer(recipe: Recipe, student, teacher, tokenizer) -> tuple[Recipe, dict[str, Any]]:
    """`distill.student_layer: auto`: the recipe with the criterion's layers filled in, and what it saw."""
    if recipe.distill.student_layer != "auto" or not recipe.distill.attention:
        return recipe, {}
    batches = criterion_batches(recipe, tokenizer, AUTO_LAYER_EXAMPLES, recipe.task.eval_batch_size)
    s_layer, t_layer, scores = choose_layer(teacher, student, batches, recipe.distill.relation_heads)
    chosen = copy.deepcopy(recipe)
    chosen.distill.student_layer, chosen.distill.teacher_layer = s_layer, t_layer
    return chosen, {"criterion": CRITERION, "scores": scores, "examples": AUTO_LAYER_EXAMPLES}


def run_distill(recipe: Recipe) -> dict[str, Any]:
    student, tok = load_student(recipe)
    teacher, t_tok = load_teacher(recipe)
    _same_tokenizer(t_tok, tok, f"{recipe.source}: distill")
    recipe, auto = resolve_auto_layer(recipe, student, teacher, tok)
    data = load_task_data(recipe)
    loss_fn, settings = make_distill_loss(recipe, student, teacher, data.task.kind)
    if auto:
        settings["layer_choice"] = auto
    place_teacher(recipe, teacher)
    return train_task_model(recipe, "distill", student, tok, data, loss_fn, {"distill": settings})


def place_teacher(recipe: Recipe, teacher) -> None:
    """Put the teacher where the student's batches go (train_task_model moves the student): whole on every
    process, or sharded over them (`distill.teacher_sharding: sharded`, with more than one process; its
    forward, run by every rank on every micro-step, gathers one layer at a time)."""
    from ...train.distributed import rank_and_world
    from ...train.loop import make_accelerator
    from ...train.sharding import fsdp_plan, shard

    device = make_accelerator(recipe.train_config("distill").precision).device
    teacher.to(device)
    rank, world = rank_and_world()
    if recipe.distill.teacher_sharding == "sharded" and world > 1:
        shard(teacher, device, fsdp_plan())
        if rank == 0:
            print(f"[distill] the teacher is sharded over {world} processes", file=sys.stderr)
