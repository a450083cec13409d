"""bitdistill: turn a full-precision LLM into a 1.58-bit task model (BitNet Distillation), run it on CPUs.

The public names are imported on first use: the packed-model runtime and the CLI's `generate`/`classify`
run without loading torch.
"""

from importlib import import_module

from .errors import BitDistillError

__version__ = "0.1.0"

_LAZY = {
    "BitLinear": ".quant",
    "BitNetSettings": ".model",
    "adapter_for": ".model",
    "load": ".model",
    "load_pretrained": ".model",
    "load_tokenizer": ".model",
    "register_adapter": ".model",
    "save": ".model",
    "to_bitnet": ".model",
}

__all__ = ["BitDistillError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
