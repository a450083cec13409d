"""The loop's AdamW (fused on CPU) against the AdamW update written out from its formula."""

import torch
from torch import nn

from bitdistill.train.loop import TrainConfig, make_optimizer


def naive_adamw(p, grads, lr, betas, wd, eps=1e-8):
    """Decoupled weight decay, bias-corrected moments (Loshchilov & Hutter), in float64."""
    p = p.double().clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    return p


def test_loop_optimizer_is_fused_adamw_and_matches_the_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.LayerNorm(6))
    start = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1, betas=[0.9, 0.99])
    opt = make_optimizer(model, cfg)
    assert opt.defaults["fused"] is True  # CPU float32 parameters have a fused kernel
    grads = [[torch.randn_like(p) for p in model.parameters()] for _ in range(3)]
    for step in grads:
        for p, g in zip(model.parameters(), step, strict=True):
            p.grad = g.clone()
        opt.step()
    for i, (p, p0) in enumerate(zip(model.parameters(), start, strict=True)):
        wd = 0.1 if p.dim() >= 2 else 0.0  # matrices only, as _param_groups decides
        ref = naive_adamw(p0, [s[i] for s in grads], 1e-2, (0.9, 0.99), wd)
        assert torch.allclose(p.double(), ref, rtol=0, atol=1e-6)
