"""The quantizers against their formulas, written out here independently of quant/numerics.py."""

import pytest
import torch

from bitdistill.quant import (
    dequantize_weight,
    fake_quant_activation,
    fake_quant_weight,
    quantize_activation,
    ternarize,
    weight_scale,
)


def test_per_tensor_absmean_matches_formula():
    torch.manual_seed(0)
    w = torch.randn(7, 13)
    q, delta = ternarize(w)
    expected_delta = w.abs().sum() / w.numel()
    assert torch.allclose(delta, expected_delta)
    for i in range(7):
        for j in range(13):
            r = float(w[i, j]) / float(expected_delta)
            expected = 0 if abs(r) < 0.5 else (1 if r > 0 else -1)  # round-half-even only matters at 0.5
            assert int(q[i, j]) == expected, (i, j, r)
    assert q.dtype == torch.int8


def test_ternary_values_and_known_example():
    w = torch.tensor([[0.9, -0.1, 0.3, -2.0]])  # mean|w| = 0.825
    q, delta = ternarize(w)
    assert delta.item() == pytest.approx(0.825)
    # ratios 1.09, -0.12, 0.36, -2.42 -> 1, 0, 0, -1
    assert q.tolist() == [[1, 0, 0, -1]]
    assert torch.allclose(dequantize_weight(q, delta), torch.tensor([[0.825, 0.0, 0.0, -0.825]]))


def test_zero_weight_is_eps_guarded():
    q, delta = ternarize(torch.zeros(3, 4))
    assert torch.all(q == 0) and delta.item() == pytest.approx(1e-5)


def test_per_channel_and_per_group_scales():
    torch.manual_seed(1)
    w = torch.randn(5, 8)
    ch = weight_scale(w, "channel")
    assert ch.shape == (5, 1)
    assert torch.allclose(ch[:, 0], torch.stack([row.abs().mean() for row in w]))
    grp = weight_scale(w, "group", group_size=4)
    assert grp.shape == (5, 2, 1)
    for i in range(5):
        for g in range(2):
            assert torch.isclose(grp[i, g, 0], w[i, 4 * g : 4 * g + 4].abs().mean())
    q, delta = ternarize(w, "group", group_size=4)
    naive = torch.empty_like(w)
    for i in range(5):
        for j in range(8):
            naive[i, j] = torch.clamp(torch.round(w[i, j] / grp[i, j // 4, 0]), -1, 1)
    assert torch.equal(q.float(), naive)
    assert torch.allclose(dequantize_weight(q, delta, 4), naive * grp.repeat_interleave(4, dim=1)[..., 0])
    with pytest.raises(ValueError, match="divide"):
        weight_scale(w, "group", group_size=3)


def test_activation_absmax_per_token_matches_formula():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 16) * 4
    q, s = quantize_activation(x)
    for b in range(2):
        for t in range(3):
            scale = 127.0 / float(x[b, t].abs().max())
            assert s[b, t, 0].item() == pytest.approx(scale, rel=1e-6)
            expected = torch.clamp(torch.round(x[b, t] * scale), -128, 127)
            assert torch.equal(q[b, t].float(), expected)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127


def test_zero_token_is_eps_guarded():
    q, s = quantize_activation(torch.zeros(1, 4))
    assert torch.all(q == 0) and torch.isfinite(s).all()


def test_ste_gradients_are_identity():
    torch.manual_seed(3)
    x = torch.randn(4, 8, requires_grad=True)
    g = torch.randn(4, 8)
    fake_quant_activation(x).backward(g)
    assert torch.equal(x.grad, g)  # absmax never clips, so the whole range is "inside the clip range"
    w = torch.randn(6, 8, requires_grad=True)
    gw = torch.randn(6, 8)
    fake_quant_weight(w).backward(gw)
    assert torch.equal(w.grad, gw)


def test_fake_quant_values_and_dtype():
    torch.manual_seed(4)
    w = torch.randn(6, 8, dtype=torch.bfloat16)
    y = fake_quant_weight(w)
    q, delta = ternarize(w)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, (q.float() * delta).to(torch.bfloat16))
    x = torch.randn(3, 8)
    xq, s = quantize_activation(x)
    assert torch.equal(fake_quant_activation(x), xq.float() / s)
