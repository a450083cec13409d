"""Stage 1 (refine): swap every decoder-block linear for a BitLinear and insert SubLN.

Embeddings, the LM head and the model's own norms stay full precision. The settings are recorded on the
model (`model.config.bitdistill`) so `save`/`load` can rebuild the same structure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..config.bitnet import BitNetConfig
from ..config.choices import GRANULARITIES, subln_mode
from ..errors import BitDistillError
from ..quant import BitLinear
from .adapters import adapter_for
from .subln import SubLNBitLinear

FORMAT_VERSION = 1


@dataclass(frozen=True)
class BitNetSettings(BitNetConfig):
    """How a model was converted (its BitNetConfig, SubLN mode normalised, and the model family); stored in
    config.json under "bitdistill". Files written before the SubLN modes existed hold a bool there."""

    family: str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BitNetSettings:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "subln" in known:
            known["subln"] = subln_mode(known["subln"], "config.json bitdistill.subln")
        return cls(**known)


def _norm_eps(config) -> float:
    for name in ("rms_norm_eps", "layer_norm_eps", "norm_eps"):
        eps = getattr(config, name, None)
        if eps is not None:
            return float(eps)
    return 1e-6


def to_bitnet(model: nn.Module, config: BitNetConfig | None = None, **options: Any) -> nn.Module:
    """Convert a Hugging Face causal LM in place (and return it) into its BitNet form.

    The conversion is `config`, or a BitNetConfig built from `options` (subln=, granularity=, group_size=,
    quantize_activations=). Every q/k/v/o and gate/up/down linear of every decoder block becomes a
    `BitLinear` sharing the original weight. `subln` (see SUBLN_MODES; True/False mean "o_down"/"none")
    decides which of them get an RMSNorm (weight 1, the model's own eps) on their input: o_proj and
    down_proj, every one, or none.
    """
    if config is not None and options:
        raise TypeError("to_bitnet: pass a BitNetConfig or keyword options, not both")
    config = config if config is not None else BitNetConfig(**options)
    subln, granularity, group_size = subln_mode(config.subln), config.granularity, config.group_size
    quantize_activations = config.quantize_activations
    if granularity not in GRANULARITIES:
        raise BitDistillError(f"granularity {granularity!r} is not one of {GRANULARITIES}")
    if is_bitnet(model):
        raise BitDistillError("model is already converted to BitNet (config.bitdistill is set)")
    adapter = adapter_for(model)
    eps = _norm_eps(model.config)
    quant = dict(granularity=granularity, group_size=group_size, quantize_activations=quantize_activations)
    subln_paths = set(adapter.subln_paths(subln))
    for i, block in enumerate(adapter.blocks(model)):
        for path in adapter.linear_paths():
            parent_path, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_path)
            linear = getattr(parent, name)
            if type(linear) is not nn.Linear:
                raise BitDistillError(
                    f"block {i}: {path} is a {type(linear).__name__}, expected nn.Linear; convert the "
                    "full-precision model (not an already quantized one)"
                )
            if granularity == "group" and linear.in_features % group_size:
                raise BitDistillError(
                    f"block {i}: {path} has in_features={linear.in_features}, not a multiple of "
                    f"group_size={group_size}; choose a group size that divides every layer's input width"
                )
            if path in subln_paths:
                new = SubLNBitLinear.from_linear(linear, eps=eps, **quant)
            else:
                new = BitLinear.from_linear(linear, **quant)
            setattr(parent, name, new)
    settings = BitNetSettings(subln=subln, family=adapter.family, **quant)
    model.config.bitdistill = settings.to_dict()
    return model


def is_bitnet(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "bitdistill", None) is not None


def settings_of(model: nn.Module) -> BitNetSettings:
    return BitNetSettings.from_dict(model.config.bitdistill)
