"""Distillation: logits KD and attention-relation KD losses, and q/k/v capture hooks."""

from .capture import QKVCapture, projection_modules
from .losses import (
    attention_relation_loss,
    causal_lm_loss,
    distill_loss,
    logits_kd_loss,
    target_mask,
    target_positions,
    task_ce,
    valid_relation_heads,
)

__all__ = [
    "QKVCapture",
    "attention_relation_loss",
    "causal_lm_loss",
    "distill_loss",
    "logits_kd_loss",
    "projection_modules",
    "target_mask",
    "target_positions",
    "task_ce",
    "valid_relation_heads",
]
