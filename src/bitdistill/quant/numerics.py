"""The ternary and int8 quantization numerics: the one source of truth.

Everything else (BitLinear, packing, the native kernels, GGUF export) is tested against these functions.

Weights (absmean, BitNet b1.58):   Δ = mean|W| (over the tensor, a row, or a group of a row),
                                   W_q = clamp(round(W / Δ), -1, 1) ∈ {-1, 0, +1},   W ≈ W_q · Δ.
Activations (absmax, per token):   s = 127 / max|x| (over the last dim),
                                   x_q = clamp(round(x · s), -128, 127),            x ≈ x_q / s.
Both scales are guarded by `eps` so an all-zero tensor or token quantizes to zeros instead of NaN.
"""

from __future__ import annotations

import torch

from ..config.choices import GRANULARITIES, Granularity

EPS = 1e-5


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """View a [out, in] weight as [out, in // group_size, group_size]."""
    out_features, in_features = w.shape
    if group_size <= 0 or in_features % group_size:
        raise ValueError(
            f"group_size={group_size} must be positive and divide in_features={in_features}; "
            "pick a divisor or use granularity='channel'"
        )
    return w.reshape(out_features, in_features // group_size, group_size)


def weight_scale(
    w: torch.Tensor, granularity: Granularity = "tensor", group_size: int = 128, eps: float = EPS
) -> torch.Tensor:
    """Absmean scale Δ of a 2-D weight, shaped to broadcast against `w` (after grouping for 'group').

    tensor -> shape [] ; channel -> [out, 1] ; group -> [out, in // group_size, 1].
    """
    a = w.detach().abs().float()
    if granularity == "tensor":
        delta = a.mean()
    elif granularity == "channel":
        delta = a.mean(dim=1, keepdim=True)
    elif granularity == "group":
        delta = _grouped(a, group_size).mean(dim=2, keepdim=True)
    else:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
    return delta.clamp(min=eps)


def ternarize(
    w: torch.Tensor, granularity: Granularity = "tensor", group_size: int = 128, eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (W_q as int8 in {-1,0,1} with w's shape, Δ as float32 from `weight_scale`)."""
    delta = weight_scale(w, granularity, group_size, eps)
    x = w.detach().float()
    if granularity == "group":
        q = (_grouped(x, group_size) / delta).round().clamp(-1, 1).reshape(w.shape)
    else:
        q = (x / delta).round().clamp(-1, 1)
    return q.to(torch.int8), delta


def dequantize_weight(q: torch.Tensor, delta: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """W_q · Δ as float32, for any granularity (Δ's shape says which)."""
    qf = q.float()
    if delta.dim() == 3:
        return (_grouped(qf, group_size) * delta).reshape(q.shape)
    return qf * delta


def quantize_activation(x: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8: return (x_q as int8, s = 127 / max|x| as float32 with a trailing 1 dim)."""
    xf = x.detach().float()
    s = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=eps)
    q = (xf * s).round().clamp(-128, 127)
    return q.to(torch.int8), s


class _STE(torch.autograd.Function):
    """Forward returns the quantized value; backward passes the gradient through unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return xq

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad, None


def fake_quant_weight(
    w: torch.Tensor, granularity: Granularity = "tensor", group_size: int = 128, eps: float = EPS
) -> torch.Tensor:
    """W_q · Δ in w's dtype, with a straight-through gradient to the latent full-precision w."""
    q, delta = ternarize(w, granularity, group_size, eps)
    return _STE.apply(w, dequantize_weight(q, delta, group_size).to(w.dtype))


def fake_quant_activation(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """x_q / s in x's dtype, with a straight-through gradient (identity inside the clip range)."""
    q, s = quantize_activation(x, eps)
    return _STE.apply(x, (q.float() / s).to(x.dtype))
