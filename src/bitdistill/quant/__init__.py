"""Ternary weight / int8 activation numerics and the BitLinear layer."""

from .bitlinear import BitLinear
from .numerics import (
    EPS,
    GRANULARITIES,
    dequantize_weight,
    fake_quant_activation,
    fake_quant_weight,
    quantize_activation,
    ternarize,
    weight_scale,
)

__all__ = [
    "BitLinear",
    "EPS",
    "GRANULARITIES",
    "dequantize_weight",
    "fake_quant_activation",
    "fake_quant_weight",
    "quantize_activation",
    "ternarize",
    "weight_scale",
]
