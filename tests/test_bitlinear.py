"""BitLinear against an independent integer computation of its output."""

import pytest
import torch
from torch import nn

from bitdistill.quant import BitLinear


def reference_output(x: torch.Tensor, w: torch.Tensor, bias=None) -> torch.Tensor:
    """int8 activations @ ternary W^T, integer sums in int64, then scaled: written out from the formulas."""
    delta = w.abs().mean().clamp(min=1e-5)
    wq = torch.clamp(torch.round(w / delta), -1, 1).to(torch.int64)
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    xq = torch.clamp(torch.round(x * s), -128, 127).to(torch.int64)
    acc = xq @ wq.t()  # exact integer sums
    y = acc.double() * delta.double() / s.double()
    return (y if bias is None else y + bias.double()).float()


@pytest.mark.parametrize("bias", [False, True])
def test_eval_output_equals_integer_reference(bias):
    torch.manual_seed(0)
    layer = BitLinear(48, 20, bias=bias).eval()
    x = torch.randn(3, 5, 48) * 3
    y = layer(x)
    ref = reference_output(x, layer.weight.detach(), layer.bias.detach() if bias else None)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_train_output_matches_eval_and_grads_reach_latent_weight():
    torch.manual_seed(1)
    layer = BitLinear(32, 16)
    x = torch.randn(4, 32, requires_grad=True)
    y = layer(x)
    assert torch.allclose(y, reference_output(x.detach(), layer.weight.detach()), rtol=1e-4, atol=1e-5)
    y.pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_eval_cache_is_refreshed_after_weight_update():
    torch.manual_seed(2)
    layer = BitLinear(16, 8).eval()
    x = torch.randn(2, 16)
    before = layer(x)
    q_before = layer.ternary_weight()[0].clone()
    with torch.no_grad():
        layer.weight.mul_(-1)  # in-place, as an optimizer step would
    assert torch.equal(layer.ternary_weight()[0], -q_before)
    assert torch.allclose(layer(x), -before, atol=1e-6)


def test_from_linear_shares_the_weight():
    lin = nn.Linear(8, 4, bias=True)
    bl = BitLinear.from_linear(lin)
    assert bl.weight is lin.weight and bl.bias is lin.bias


def test_per_channel_eval_output_equals_reference():
    torch.manual_seed(3)
    layer = BitLinear(24, 6, granularity="channel").eval()
    x = torch.randn(5, 24)
    w = layer.weight.detach()
    delta = w.abs().mean(dim=1, keepdim=True)
    wq = torch.clamp(torch.round(w / delta), -1, 1)
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True)
    xq = torch.clamp(torch.round(x * s), -128, 127)
    ref = (xq.double() @ (wq * delta).double().t()) / s.double()
    assert torch.allclose(layer(x), ref.float(), rtol=1e-5, atol=1e-6)


def test_weights_only_mode_keeps_activations_in_float():
    torch.manual_seed(4)
    layer = BitLinear(16, 8, quantize_activations=False).eval()
    x = torch.randn(3, 16)
    w = layer.weight.detach()
    delta = w.abs().mean()
    ref = x @ (torch.clamp(torch.round(w / delta), -1, 1) * delta).t()
    assert torch.allclose(layer(x), ref, atol=1e-6)
