"""bitdistill: turn a full-precision LLM into a 1.58-bit task model (BitNet Distillation), run it on CPUs."""

from .errors import BitDistillError
from .model import (
    BitNetSettings,
    adapter_for,
    load,
    load_pretrained,
    load_tokenizer,
    register_adapter,
    save,
    to_bitnet,
)
from .quant import BitLinear

__version__ = "0.1.0"

__all__ = [
    "BitDistillError",
    "BitLinear",
    "BitNetSettings",
    "adapter_for",
    "load",
    "load_pretrained",
    "load_tokenizer",
    "register_adapter",
    "save",
    "to_bitnet",
]
