"""Save and load converted (BitNet) models as self-describing directories.

A directory holds config.json (the Hugging Face config plus a "bitdistill" key with the conversion settings),
model.safetensors (latent full-precision weights, SubLN weights included) and, when given, the tokenizer.
`load` rebuilds the architecture from the config, converts it with the recorded settings and loads the weights
strictly, so outputs are bit-identical to the saved model's. Files are written under temporary names and
renamed, so an interrupted save never leaves a half-written model that looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from .._fs import atomic_dir
from ..errors import BitDistillError
from .convert import FORMAT_VERSION, BitNetSettings, is_bitnet, settings_of, to_bitnet
from .hub import INVALID_MODEL_ERRORS, invalid_model

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def write_weights(
    weights: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None
) -> None:
    """A model's weights as one safetensors file: from the module (save_model de-duplicates tied tensors),
    or from a full state dict gathered off a sharded model (train/sharding.py drops the tied names alike)."""
    if isinstance(weights, nn.Module):
        save_model(weights, str(path), metadata=metadata)
    else:
        save_file(dict(weights), str(path), metadata=metadata)


def save(
    model: nn.Module,
    out_dir: str | os.PathLike,
    tokenizer=None,
    weights: nn.Module | Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model` (converted or full precision) and optionally its tokenizer to `out_dir` atomically.

    `weights`: what to write instead of `model`'s own weights: the full state dict gathered off a sharded
    model (train.sharding.weights_for_saving); `model` then supplies only the config. The directory is assembled beside its destination and renamed into
    place; an existing directory is replaced only once the new one is complete.
    """
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        config = model.config
        if getattr(config, "quantization_config", None) is not None:
            # A GGUF load leaves a quantization_config; the weights we write are plain floats.
            del config.quantization_config
        config.save_pretrained(tmp)
        write_weights(model if weights is None else weights, tmp / WEIGHTS_NAME,
                      metadata={"format": "pt", "bitdistill": "1"})  # fmt: skip
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


def read_config(model_dir: str | os.PathLike) -> dict:
    """The parsed config.json of a model directory, with clear errors for missing or corrupt files."""
    path = Path(model_dir) / CONFIG_NAME
    if not Path(model_dir).is_dir():
        raise BitDistillError(
            f"{model_dir}: not a directory; pass a directory written by `bitdistill convert`"
        )
    if not path.is_file():
        raise BitDistillError(f"{path}: missing; {model_dir} is not a model directory")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BitDistillError(f"{path}: not valid JSON ({err}); re-create the directory") from None


def is_packed_dir(path: str | os.PathLike) -> bool:
    """True for a directory the runtime's packer wrote (its config.json carries a "packed" key).

    A config.json that is not valid JSON raises (naming the file) rather than passing for "not packed".
    """
    if not (Path(path) / CONFIG_NAME).is_file():
        return False
    return "packed" in read_config(path)


def load(
    model_dir: str | os.PathLike, dtype: torch.dtype | None = None, device: str | None = None
) -> nn.Module:
    """Load a directory written by `save` (BitNet or full precision) in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    model_dir = Path(model_dir)
    raw = read_config(model_dir)
    settings = raw.get("bitdistill")
    if settings is not None and settings.get("format_version", 0) > FORMAT_VERSION:
        raise BitDistillError(
            f"{model_dir / CONFIG_NAME}: written by a newer bitdistill (format "
            f"{settings['format_version']} > {FORMAT_VERSION}); upgrade bitdistill"
        )
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise BitDistillError(
            f"{weights}: missing; the directory is incomplete, re-run the step that wrote it"
        )
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, *INVALID_MODEL_ERRORS) as err:
        raise invalid_model(model_dir / CONFIG_NAME, err) from None
    if dtype is None:
        dtype = getattr(config, "dtype", None) or torch.float32
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    # Skip random initialisation: every parameter is overwritten by the load below, and buffers that are
    # not stored (rotary frequencies) are still computed by the constructors.
    try:
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except INVALID_MODEL_ERRORS as err:  # values the config parser let through (a negative size)
        raise invalid_model(model_dir / CONFIG_NAME, err) from None
    if settings is not None:
        config.bitdistill = None
        to_bitnet(model, BitNetSettings.from_dict(settings))
    # no_init_weights also skips tying; tie before loading so the one stored copy fills both names.
    model.tie_weights()
    if device is not None:
        model.to(device)
    try:
        missing, unexpected = map(sorted, load_model(model, str(weights), strict=False))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise BitDistillError(
            f"{weights}: unreadable or mismatched ({err}); re-create the directory"
        ) from None
    if missing or unexpected:
        raise BitDistillError(
            f"{weights} does not match {model_dir / CONFIG_NAME}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; "
            "the weights and config come from different models"
        )
    return model.eval()


def load_tokenizer(model_dir: str | os.PathLike):
    """The tokenizer saved beside a model, or a clear error when there is none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise BitDistillError(
            f"{model_dir}: no tokenizer saved here ({err}); pass tokenizer= to bitdistill.save"
        ) from None


__all__ = ["save", "load", "load_tokenizer", "read_config", "is_bitnet", "settings_of"]
