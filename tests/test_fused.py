"""The fused training BitLinear (quant/fused.py) against the naive formulas: values and gradients bitwise."""

import pytest
import torch
import torch.nn.functional as F

from bitdistill.quant import BitLinear
from bitdistill.quant.fused import BitLinearFn, fake_activation_fast, fake_weight_fast


def naive_weight(w: torch.Tensor, granularity: str = "tensor", group_size: int = 4) -> torch.Tensor:
    """Δ = mean|W| (tensor, row or group), W_q = clamp(round(W / Δ), -1, 1), returned as W_q · Δ."""
    if granularity == "tensor":
        delta = w.abs().mean().clamp(min=1e-5)
        return torch.clamp(torch.round(w / delta), -1, 1).to(torch.int8).float() * delta
    g = w.reshape(w.shape[0], -1, group_size if granularity == "group" else w.shape[1])
    delta = g.abs().mean(dim=-1, keepdim=True).clamp(min=1e-5)
    return (torch.clamp(torch.round(g / delta), -1, 1).to(torch.int8).float() * delta).reshape(w.shape)


def naive_activation(x: torch.Tensor) -> torch.Tensor:
    """s = 127 / max|x| per token, x_q = clamp(round(x · s), -128, 127), returned as x_q / s."""
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return torch.clamp(torch.round(x * s), -128, 127).to(torch.int8).float() / s


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, xq):
        return xq

    @staticmethod
    def backward(ctx, g):
        return g, None


def naive_bitlinear(x, w, b, granularity="tensor", group_size=4, quantize_activations=True):
    """F.linear on the fake-quantized tensors with identity (straight-through) gradients."""
    xq = _STE.apply(x, naive_activation(x.detach())) if quantize_activations else x
    wq = _STE.apply(w, naive_weight(w.detach(), granularity, group_size))
    return F.linear(xq, wq, b)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_fast_fake_quant_equals_formula(granularity):
    torch.manual_seed(0)
    w = torch.randn(24, 16) * 0.02
    w[0, :4] = 0.0  # an all-zero group: eps-guarded
    assert torch.equal(fake_weight_fast(w, granularity, 4), naive_weight(w, granularity, 4))
    x = torch.randn(3, 7, 16) * 5
    x[1, 2] = 0.0  # an all-zero token
    assert torch.equal(fake_activation_fast(x), naive_activation(x))


def test_ties_round_half_to_even_like_the_formula():
    # |w| / Δ exactly 0.5 and 1.5: torch.round rounds half to even (0 and 2 -> clamped 1) in both paths.
    w = torch.tensor([[0.5, -0.5, 1.5, -1.5, 1.0, -1.0, 0.0, 0.0]])  # mean |w| = 0.75
    w = w * (1.0 / 0.75)  # Δ = 1 after scaling up to float rounding
    assert torch.equal(fake_weight_fast(w, "tensor", 4), naive_weight(w))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("granularity,acts", [("tensor", True), ("channel", True), ("group", False)])
def test_fused_forward_and_gradients_are_bitwise_the_reference(bias, granularity, acts):
    torch.manual_seed(1)
    w = (torch.randn(72, 96) * 0.05).requires_grad_()  # large enough for blocked matmul kernels
    b = torch.randn(72).requires_grad_() if bias else None
    x = (torch.randn(3, 37, 96) * 3).requires_grad_()
    g = torch.randn(3, 37, 72)
    y_ref = naive_bitlinear(x, w, b, granularity, 4, acts)
    ref = torch.autograd.grad(y_ref, [x, w] + ([b] if bias else []), g)
    y = BitLinearFn.apply(x, w, b, granularity, 4, acts)
    got = torch.autograd.grad(y, [x, w] + ([b] if bias else []), g)
    assert torch.equal(y, y_ref)
    for a, r in zip(got, ref, strict=True):
        assert torch.equal(a, r)


def test_bitlinear_training_uses_the_fused_path_and_matches_reference_in_bf16_too():
    torch.manual_seed(2)
    layer = BitLinear(16, 8, bias=True)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()
    gw = layer.weight.grad.clone()
    wref = layer.weight.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    naive_bitlinear(xr, wref, layer.bias.detach()).sum().backward()
    assert torch.equal(gw, wref.grad) and torch.equal(x.grad, xr.grad)
    # bf16 keeps the reference path (computes in float32 and casts): still runs and trains.
    layer16 = BitLinear(16, 8).to(torch.bfloat16)
    y = layer16(torch.randn(4, 16, dtype=torch.bfloat16))
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and layer16.weight.grad is not None
