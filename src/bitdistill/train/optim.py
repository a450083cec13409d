"""AdamW and the learning-rate schedule every stage trains with."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config.train import TrainConfig


def _lr_lambda(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(1.0, progress)
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decay matrices only: norms (incl. SubLN) and biases are not weights to shrink.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


FUSED_DEVICES = ("cpu", "cuda")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `_param_groups`, fused where torch has a fused kernel for the parameters' device.

    The default for-loop AdamW runs ~8 elementwise kernels per parameter, each a full pass over the tensor:
    0.6-0.8 s per step for SmolLM2-135M's parameters on one CPU thread, 0.13 s fused (docs/pipeline.md,
    performance notes). Same update formula; rounding may differ in the last bit.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(
        p.device.type in FUSED_DEVICES and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
        for p in params
    )
    return torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay,
        fused=fused or None,
    )
