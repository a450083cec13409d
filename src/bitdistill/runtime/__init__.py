"""Packed-model CPU runtime: native int8 x ternary kernels and a decode engine (numpy + ctypes, no torch).

    from bitdistill.runtime import load, load_tokenizer
    engine = load("packed-dir")              # validate + bind in one call
    ids, stats = engine.generate(prompt_ids, max_new_tokens=64)

`pack_model` (needs torch) writes a packed directory from a converted model; see docs/runtime.md.
"""

from .engine import Engine, GenerationStats, load, load_tokenizer
from .pack_writer import pack_model
from .packed import PackedModel, load_packed
from .sampling import SamplingParams

__all__ = [
    "Engine",
    "GenerationStats",
    "PackedModel",
    "SamplingParams",
    "load",
    "load_packed",
    "load_tokenizer",
    "pack_model",
]
