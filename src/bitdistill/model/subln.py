"""SubLN: an RMSNorm applied to a projection's input, right before the projection (BitNet's SubLN).

The norm lives inside the projection module (`...o_proj.sub_norm`) so a converted model keeps every weight at
the path it had (`...o_proj.weight`), with or without SubLN; packing, export and the runtime read the same
names either way.
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant import BitLinear


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · weight, computed in fp32 (weight initialised to 1)."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * y).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class SubLNBitLinear(BitLinear):
    """A BitLinear whose input first passes through its own RMSNorm (`sub_norm`)."""

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(in_features, out_features, **kwargs)
        self.sub_norm = RMSNorm(in_features, eps, device=self.weight.device, dtype=self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.sub_norm(x))

    @classmethod
    def from_linear(cls, linear: nn.Linear, eps: float = 1e-6, **kwargs) -> SubLNBitLinear:
        new = super().from_linear(linear, eps=eps, **kwargs)
        # from_linear builds on the meta device; the norm must live beside the real weight.
        w = linear.weight
        new.sub_norm = RMSNorm(linear.in_features, eps, device=w.device, dtype=w.dtype)
        return new
