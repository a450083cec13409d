"""Ternary weight / int8 activation numerics and the BitLinear layer.

Names are imported on first use, so torch-free parts (bit layouts, the native runtime, the CLI's option lists)
load without torch.
"""

from .._lazy import lazy_getattr
from ..config.choices import GRANULARITIES

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

__getattr__ = lazy_getattr(__name__, _LAZY)
