"""The training-mode BitLinear as one autograd Function: the reference numerics with fewer passes.

`fake_quant_weight` / `fake_quant_activation` (numerics.py) are the definition; per forward they make an int8
copy, a float copy and the product of a weight: on a 135M model that is ~0.5 GB of fresh tensors per step,
each written and read again. This Function computes the same values (the same division, rounding and
clamping, applied in place to one buffer) and one linear, and writes the straight-through backward out by
hand, so autograd records one node per layer instead of three. Forward outputs and gradients are bitwise
equal to F.linear(fake_quant_activation(x), fake_quant_weight(w), b) (tests/test_fused.py).

Used for float32 without autocast only; other dtypes (where the reference computes in float32 and casts)
keep the reference path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .numerics import EPS, _grouped, weight_scale


def fake_weight_fast(w: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    """W_q · Δ for a float32 weight, equal to `fake_quant_weight(w)` (forward value), no gradient."""
    delta = weight_scale(w, granularity, group_size, EPS)
    out = torch.div(_grouped(w.detach(), group_size) if granularity == "group" else w.detach(), delta)
    # round(w / Δ) clamped to {-1, 0, 1}, times Δ: the reference's values without its int8 and float copies.
    return out.round_().clamp_(-1, 1).mul_(delta).reshape(w.shape)


def fake_activation_fast(x: torch.Tensor) -> torch.Tensor:
    """x_q / s for float32 x, equal to `fake_quant_activation(x)` (forward value), no gradient."""
    x = x.detach()
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return torch.mul(x, s).round_().clamp_(-128, 127).div_(s)


class BitLinearFn(torch.autograd.Function):
    """y = x_q W_qᵀ + b with straight-through gradients to x and the latent W (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, granularity: str, group_size: int, quantize_activations: bool):  # noqa: D102
        wq = fake_weight_fast(weight, granularity, group_size)
        xq = fake_activation_fast(x) if quantize_activations else x.detach()
        ctx.save_for_backward(xq, wq)
        ctx.has_bias = bias is not None
        return F.linear(xq, wq, bias)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        xq, wq = ctx.saved_tensors
        # The products autograd forms for F.linear's matmul (mm on the flattened batch), so the gradients
        # are bitwise those of the reference path; the STE passes them to x and W unchanged.
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = g2.mm(wq).reshape(*grad.shape[:-1], wq.shape[1])
        if ctx.needs_input_grad[1]:
            grad_w = g2.t().mm(xq.reshape(-1, xq.shape[-1]))  # contiguous, like the weight (no copy)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


def can_fuse(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the fused path reproduces the reference exactly: float32 tensors, autocast off."""
    return (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled(x.device.type)
    )
