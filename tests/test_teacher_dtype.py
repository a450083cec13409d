"""distill.teacher_dtype: bfloat16 keeps the frozen teacher in bf16 (half its memory on every process)."""

from __future__ import annotations

import pytest
import torch

from bitdistill.config import parse_recipe
from bitdistill.errors import BitDistillError
from bitdistill.pipeline.fingerprint import stage_fingerprint
from bitdistill.pipeline.memory import stage_estimate
from bitdistill.pipeline.modelinfo import model_shape
from bitdistill.pipeline.stages.distill import load_student, load_teacher, make_distill_loss
from tiny_pipeline import build_model_dir


def recipe_for(tmp_path, dtype: str):
    model = build_model_dir(tmp_path / "m") if not (tmp_path / "m").exists() else tmp_path / "m"
    return parse_recipe({
        "model": str(model), "output_dir": str(tmp_path / "run"),
        "continue_pretrain": {"enabled": False},
        "distill": {"teacher": str(model), "student": str(model), "teacher_dtype": dtype, "relation_heads": 4,
                    "lambda_logits": 1.0, "gamma_attention": 10.0},
    }, "test")  # fmt: skip


def test_bf16_teacher_gives_the_loss_of_its_rounded_weights(tmp_path):
    recipe = recipe_for(tmp_path, "bfloat16")
    teacher, tok = load_teacher(recipe)
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    student, _ = load_student(recipe)
    ids = torch.tensor([[2, 5, 6, 7, 8, 3], [2, 9, 10, 11, 12, 3]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    loss, parts = make_distill_loss(recipe, student, teacher, "classification")[0](student, batch)
    # Reference: a float32 teacher holding the same (bf16-rounded) weights, computing in float32.
    rounded, _ = load_teacher(recipe_for(tmp_path, "float32"))
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ref, ref_parts = make_distill_loss(recipe, student, rounded, "classification")[0](student, batch)
    assert torch.isfinite(loss)
    # bf16 arithmetic (8 mantissa bits) in the teacher's forward: ~1e-2 relative on the KD terms at most.
    loss, ref = float(loss.detach()), float(ref.detach())
    assert abs(loss - ref) <= 2e-2 * abs(ref), (parts, ref_parts)
    assert parts["ce"] == ref_parts["ce"]  # the student's own term does not see the teacher


def test_bf16_teacher_halves_the_planned_teacher_memory_and_enters_the_fingerprint(tmp_path):
    fp32, bf16 = recipe_for(tmp_path, "float32"), recipe_for(tmp_path, "bfloat16")
    shape = model_shape(fp32.model, "test")
    a = stage_estimate(fp32, "distill", shape, shape)
    b = stage_estimate(bf16, "distill", shape, shape)
    assert a.teacher == shape.parameters() * 4 and b.teacher == shape.parameters() * 2
    assert (a.weights, a.grads, a.optimizer, a.activations) == (
        b.weights,
        b.grads,
        b.optimizer,
        b.activations,
    )
    # float32 (the default) leaves the fingerprint as it was before the key existed; bfloat16 changes it.
    assert "distill.teacher_dtype" not in stage_fingerprint(fp32, "distill")
    assert stage_fingerprint(bf16, "distill")["distill.teacher_dtype"] == "bfloat16"


def test_other_teacher_dtypes_are_refused_naming_the_field(tmp_path):
    with pytest.raises(
        BitDistillError, match=r"distill.teacher_dtype: 'float16' is not one of float32, bfloat16"
    ):
        recipe_for(tmp_path, "float16")
