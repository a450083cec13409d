"""BitNetConfig: how a model is converted to BitNet (stage 1), the one spelling of those options.

`to_bitnet(model, BitNetConfig(...))` applies it, a recipe's `bitnet:` section is one (with the authors'
SubLN placement as its default), and a converted model records it, with its family, in config.json.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BitNetConfig:
    # Where RMSNorms go before BitLinears: one of choices.SUBLN_MODES; true/false still mean o_down/none.
    subln: bool | str = "o_down"
    granularity: str = "tensor"  # weight-scale granularity: one of choices.GRANULARITIES
    group_size: int = 128  # input columns per scale when granularity is "group"
    quantize_activations: bool = True  # int8 per-token activations (false: weights-only ternary, ablations)
