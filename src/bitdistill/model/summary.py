"""What a model holds: layer counts, the ternary value shares, and sizes (used by `bitdistill inspect`)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from ..quant import BitLinear
from .convert import is_bitnet, settings_of
from .subln import SubLNBitLinear

BITS_PER_TRIT_PACKED = {"2bit": 2.0, "1.58bit": 8 / 5}  # 4 trits per byte, 5 trits per byte (3^5 = 243)
SUBLN_WHERE = {"o_down": "before o_proj and down_proj", "all": "before every BitLinear", "none": "none"}


@torch.no_grad()
def summarize(model: nn.Module, directory: str | os.PathLike | None = None) -> dict:
    """A JSON-friendly description of a (converted or full-precision) model."""
    bitlinears = [m for m in model.modules() if isinstance(m, BitLinear)]
    counts = torch.zeros(3, dtype=torch.long)
    linear_params = 0
    for layer in bitlinears:
        q, _ = layer.ternary_weight()
        counts += torch.bincount((q.flatten().long() + 1), minlength=3)
        linear_params += q.numel()
    total_params = sum(p.numel() for p in _unique_parameters(model))
    config = model.config
    info = {
        "architecture": (getattr(config, "architectures", None) or [type(model).__name__])[0],
        "model_type": config.model_type,
        "bitnet": is_bitnet(model),
        "settings": getattr(config, "bitdistill", None),
        "num_layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "num_bitlinear": len(bitlinears),
        "num_subln": sum(isinstance(m, SubLNBitLinear) for m in model.modules()),
        # the recorded mode (old boolean settings read as o_down / none); None for an unconverted model
        "subln_mode": settings_of(model).subln if is_bitnet(model) else None,
        "parameters": total_params,
        "bitlinear_parameters": linear_params,
    }
    if linear_params:
        shares = (counts.double() / linear_params).tolist()
        info["ternary_share"] = {"-1": shares[0], "0": shares[1], "+1": shares[2]}
        info["bitlinear_bytes"] = {
            "fp16": linear_params * 2,
            **{k: math.ceil(linear_params * bits / 8) for k, bits in BITS_PER_TRIT_PACKED.items()},
        }
    if directory is not None:
        info["directory"] = str(directory)
        info["disk_bytes"] = sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())
    return info


def _unique_parameters(model: nn.Module):
    seen: set[int] = set()
    for p in model.parameters():  # tied embeddings count once
        if id(p) not in seen:
            seen.add(id(p))
            yield p


def format_summary(info: dict) -> str:
    """The human-readable form of `summarize`'s output."""
    lines = [
        f"architecture     {info['architecture']} ({info['model_type']}), {info['num_layers']} blocks, "
        f"hidden {info['hidden_size']}",
        f"parameters       {info['parameters'] / 1e6:.1f}M"
        + (
            f" ({info['bitlinear_parameters'] / 1e6:.1f}M in BitLinear)"
            if info["bitlinear_parameters"]
            else ""
        ),
        f"BitLinear layers {info['num_bitlinear']}",
        f"SubLN norms      {info['num_subln']}"
        + (f" ({SUBLN_WHERE[info['subln_mode']]})" if info["subln_mode"] else ""),
    ]
    if info["settings"]:
        s = info["settings"]
        lines.append(
            f"conversion       family={s['family']} subln={info['subln_mode']} granularity={s['granularity']}"
            + (f" group_size={s['group_size']}" if s["granularity"] == "group" else "")
            + f" int8_activations={s['quantize_activations']}"
        )
    if "ternary_share" in info:
        sh = info["ternary_share"]
        lines.append(f"ternary shares   -1: {sh['-1']:.2%}   0: {sh['0']:.2%}   +1: {sh['+1']:.2%}")
        b = info["bitlinear_bytes"]
        lines.append(
            f"linear weights   fp16 {_mb(b['fp16'])}, packed 2-bit {_mb(b['2bit'])}, "
            f"1.58-bit {_mb(b['1.58bit'])}"
        )
    if "disk_bytes" in info:
        lines.append(f"on disk          {_mb(info['disk_bytes'])} ({info['directory']})")
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
