"""BitLinear: a drop-in nn.Linear with ternary weights and int8 per-token activations.

Training mode fake-quantizes in the input dtype with straight-through gradients to the latent
full-precision weight (the weight the optimizer updates); in float32 that is one fused autograd Function
(fused.py) with the same values and gradients. Eval mode quantizes the weight once, caches the
int8 ternary matrix and its scale, and computes `(x_q @ W_q.T) · Δ / s` — the same integer sums the native
kernels compute. The cache is dropped whenever the module returns to training or its weight is loaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fused import BitLinearFn, can_fuse
from .numerics import (
    EPS,
    GRANULARITIES,
    Granularity,
    dequantize_weight,
    fake_quant_activation,
    fake_quant_weight,
    quantize_activation,
    ternarize,
)


class BitLinear(nn.Linear):
    """nn.Linear whose forward uses absmean-ternary weights and absmax-int8 activations."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        granularity: Granularity = "tensor",
        group_size: int = 128,
        quantize_activations: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
        self.granularity = granularity
        self.group_size = group_size
        self.quantize_activations = quantize_activations
        self._cache: tuple[torch.Tensor, torch.Tensor, int] | None = None
        # A loaded or optimizer-updated weight invalidates the cached ternary copy.
        self.register_load_state_dict_post_hook(lambda module, _keys: module.clear_cache())

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> BitLinear:
        """A BitLinear sharing `linear`'s latent weight and bias (no copy)."""
        new = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device="meta",
            **kwargs,
        )
        new.weight = linear.weight
        new.bias = linear.bias
        return new

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, granularity={self.granularity}"
            + (f", group_size={self.group_size}" if self.granularity == "group" else "")
            + ("" if self.quantize_activations else ", activations=fp")
        )

    def clear_cache(self) -> None:
        self._cache = None

    def train(self, mode: bool = True) -> BitLinear:
        self.clear_cache()
        return super().train(mode)

    def ternary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_q int8, Δ float32) of the current latent weight, cached in eval mode."""
        version = self.weight._version
        if self.training or self._cache is None or self._cache[2] != version:
            q, delta = ternarize(self.weight, self.granularity, self.group_size, EPS)
            if self.training:
                return q, delta
            self._cache = (q, delta, version)
        return self._cache[0], self._cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            if can_fuse(x, self.weight):
                return BitLinearFn.apply(
                    x, self.weight, self.bias, self.granularity, self.group_size, self.quantize_activations
                )
            xq = fake_quant_activation(x) if self.quantize_activations else x
            wq = fake_quant_weight(self.weight, self.granularity, self.group_size)
            return F.linear(xq, wq, self.bias)
        return self._forward_eval(x)

    def _forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        q, delta = self.ternary_weight()
        if not self.quantize_activations:
            return F.linear(x, dequantize_weight(q, delta, self.group_size).to(x.dtype), self.bias)
        xq, s = quantize_activation(x)
        if delta.dim() == 0:
            # Integer sums are exact in fp32 while |sum| < 2^24 (127 * in_features, true below 132k).
            acc = xq.float() @ q.float().t()
            y = acc * (delta / s)
        else:
            # Per-channel/group scales sit inside the sum; fold them into the weight first.
            y = (xq.float() @ dequantize_weight(q, delta, self.group_size).t()) / s
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias
