"""bitdistill: turn a full-precision LLM into a 1.58-bit task model (BitNet Distillation), run it on CPUs.

The public names are imported on first use: the packed-model runtime and the CLI's `generate`/`classify`
run without loading torch.
"""

from ._lazy import lazy_getattr
from .errors import BitDistillError

__version__ = "0.1.0"

_LAZY = {
    "BitLinear": ".quant",
    "BitNetConfig": ".config",
    "BitNetSettings": ".model",
    "FamilyAdapter": ".model",
    "adapter_for": ".model",
    "load": ".model",
    "load_recipe": ".config",
    "parse_recipe": ".config",
    "run_recipe": ".report",
    "load_pretrained": ".model",
    "load_tokenizer": ".model",
    "register_adapter": ".model",
    "save": ".model",
    "to_bitnet": ".model",
}

__all__ = ["BitDistillError", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)
