"""Model conversion (stage 1), per-family adapters, SubLN, and save/load of converted models."""

from ..config.bitnet import BitNetConfig
from .adapters import ADAPTERS, FamilyAdapter, adapter_for, register_adapter
from .convert import BitNetSettings, is_bitnet, settings_of, to_bitnet
from .hub import DEFAULT_MODEL, load_any, load_pretrained
from .io import load, load_tokenizer, save
from .subln import RMSNorm, SubLNBitLinear

__all__ = [
    "ADAPTERS",
    "DEFAULT_MODEL",
    "BitNetConfig",
    "BitNetSettings",
    "FamilyAdapter",
    "RMSNorm",
    "SubLNBitLinear",
    "adapter_for",
    "is_bitnet",
    "load",
    "load_any",
    "load_pretrained",
    "load_tokenizer",
    "register_adapter",
    "save",
    "settings_of",
    "to_bitnet",
]
