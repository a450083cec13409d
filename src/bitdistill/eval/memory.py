"""Parameter memory of a model from its config alone: FP16 vs ternary packed at 2 bits and at 1.58 bits.

The architecture is instantiated on PyTorch's meta device (no weights, no memory, no file reads beyond
config.json) and converted with `to_bitnet`, so the counts are exactly those of the converted model, SubLN
weights and tied embeddings included, for every supported family. With L the weights of the linears that
become BitLinear and N all parameters:

    linear FP16      = 2·L bytes
    linear ternary   = ceil(L·b / 8) + 4·S bytes,  b = 2 (4 trits per byte) or 8/5 (5 trits per byte, "1.58
                       bits"), S = number of fp32 weight scales (1 per matrix, per row, or per group)
    model FP16       = 2·N bytes
    model ternary    = linear ternary + 2·(N − L) bytes (embeddings, norms, LM head and biases stay FP16)

This is the memory of the parameters as the paper reports it (packing padding of the runtime's kernel layout
and activations are not included).
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..errors import BitDistillError
from ..model.summary import BITS_PER_TRIT_PACKED


def _num_scales(weight_shape: tuple[int, int], granularity: str, group_size: int) -> int:
    out_features, in_features = weight_shape
    if granularity == "channel":
        return out_features
    if granularity == "group":
        return out_features * (in_features // group_size)
    return 1


@lru_cache(maxsize=16)
def _counts(config_text: str) -> dict[str, Any]:
    import json

    from transformers import AutoConfig, AutoModelForCausalLM

    from ..model.convert import subln_mode, to_bitnet
    from ..quant import BitLinear

    raw = json.loads(config_text)
    settings = raw.pop("bitdistill", None) or {}
    raw.pop("packed", None)
    model_type = raw.get("model_type")
    if not model_type:
        raise BitDistillError("config.json has no model_type; it is not a Hugging Face model config")
    config = AutoConfig.for_model(**raw)
    granularity = settings.get("granularity", "tensor")
    group_size = int(settings.get("group_size", 128))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        # Convert even full-precision models: the conversion's linears are the ones a ternary model packs.
        to_bitnet(model, subln=subln_mode(settings.get("subln", False)), granularity="tensor")
    linears = [m for m in model.modules() if isinstance(m, BitLinear)]
    linear_params = sum(m.weight.numel() for m in linears)
    scales = sum(_num_scales(tuple(m.weight.shape), granularity, group_size) for m in linears)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    return {
        "bitnet": bool(settings),
        "granularity": granularity if settings else None,
        "linear_params": linear_params,
        "total_params": total,
        "num_linears": len(linears),
        "num_scales": scales,
    }


def parameter_memory(counts: dict[str, Any]) -> dict[str, int]:
    """Bytes per storage format (see the module docstring) from `model_counts` output."""
    linear, total, scales = counts["linear_params"], counts["total_params"], counts["num_scales"]
    out = {"linear_fp16": 2 * linear, "model_fp16": 2 * total}
    for name, bits in BITS_PER_TRIT_PACKED.items():
        packed = math.ceil(linear * bits / 8) + 4 * scales
        out[f"linear_{name}"] = packed
        out[f"model_{name}"] = packed + 2 * (total - linear)
    return out


def model_counts(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Parameter counts of the model whose config.json is in `model_dir` (cached per config)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise BitDistillError(f"{path}: missing; cannot size the model without its config")
    return _counts(path.read_text())


def model_memory(model_dir: str | os.PathLike) -> dict[str, Any]:
    """{"counts": model_counts, "bytes": parameter_memory} of a model directory."""
    counts = model_counts(model_dir)
    return {"counts": counts, "bytes": parameter_memory(counts)}


def format_bytes(n: float | None) -> str:
    """Human-readable binary size: B, KiB, MiB, GiB."""
    if n is None:
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{int(n)} B"
