"""Ternary weight / int8 activation numerics and the BitLinear layer.

Names are imported on first use, so torch-free parts (packing, the native runtime, the CLI's option lists)
load without torch.
"""

from importlib import import_module

from .granularity import GRANULARITIES

_LAZY = {
    "BitLinear": ".bitlinear",
    "EPS": ".numerics",
    "dequantize_weight": ".numerics",
    "fake_quant_activation": ".numerics",
    "fake_quant_weight": ".numerics",
    "quantize_activation": ".numerics",
    "ternarize": ".numerics",
    "weight_scale": ".numerics",
}

__all__ = ["GRANULARITIES", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
