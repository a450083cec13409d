"""Loading the models a stage starts from, and converting them to BitNet with the recipe's settings."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..config.recipe import Recipe
from ..errors import BitDistillError
from ..model.convert import to_bitnet
from ..model.hub import load_any


def convert(model: nn.Module, recipe: Recipe) -> nn.Module:
    return to_bitnet(model, recipe.bitnet)


def load_model_dir_or_spec(spec: str | Path):
    """(model, tokenizer) from a bitdistill/HF directory or any load_pretrained spec, in train mode."""
    model, tok = load_any(spec)
    if tok is None:
        raise BitDistillError(f"{spec}: no tokenizer found beside the model; save it with a tokenizer")
    return model.train(), tok
