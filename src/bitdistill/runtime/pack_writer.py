"""Write a converted (BitNet) model as a packed directory (the format is in packed.py, which reads it).

Needs torch (the model is a torch module); torch is imported inside the functions so that importing the
runtime package never loads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._fs import atomic_dir
from ..errors import BitDistillError
from ..quant.bit_layout import BLOCK, pack_2bit, pack_base3, quantize_rows_int8
from .dense_dtypes import DENSE_DTYPES, dense_scale_name, quantize_rows_q4
from .packed import (
    ACTS,
    BITS,
    CONFIG_NAME,
    PACKED_FORMAT_VERSION,
    SUBLN_LINEARS,
    WEIGHTS_NAME,
    _crc32,
    _linear_dims,
)


def pack_model(
    model,
    out_dir: str | os.PathLike,
    bits: str = "2",
    head_dtype: str = "int8",
    embed_dtype: str | None = None,
    tokenizer=None,
) -> Path:
    """Write a converted (BitNet) model as a packed directory; returns its path. Atomic: temp dir + rename."""
    from ..model.adapters import adapter_for

    bits, embed_dtype = str(bits), embed_dtype or head_dtype
    settings = _check_packable(model, bits, head_dtype, embed_dtype)
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    rope = _rope_tables(model, adapter.family)
    arch = _arch(model, adapter, blocks, rope, settings, bits, head_dtype, embed_dtype)
    tensors: dict[str, np.ndarray] = {f"rope.{name}.inv_freq": table for name, (table, _) in rope.items()}
    norm_w = _norm_reader(adapter.family == "gemma3")
    linear_bytes = 0
    for i, block in enumerate(blocks):
        _layer_schedule(arch, model.config, adapter, block, i, len(blocks))
        linear_bytes += _pack_linears(tensors, arch, adapter, block, i, settings)
        _block_norms(tensors, adapter, block, f"layers.{i}", norm_w)
    tensors["norm"] = norm_w(model.get_submodule("model.norm"))
    _dense_tensors(tensors, arch, model, head_dtype, embed_dtype)
    arch["linear_bytes_on_disk"] = linear_bytes
    arch["linear_params"] = sum(n * k for n, k in _linear_dims(arch).values()) * len(blocks)
    return _write_dir(model, out_dir, arch, tensors, tokenizer)


def _check_packable(model, bits: str, head_dtype: str, embed_dtype: str):
    """The model's BitNet settings, once every condition the runtime needs is checked."""
    from ..model.convert import is_bitnet, settings_of

    if bits not in BITS:
        raise BitDistillError(f"--bits {bits!r}: choose 2 or 1.58")
    for name, d in (("head dtype", head_dtype), ("embedding dtype", embed_dtype)):
        if d not in DENSE_DTYPES:
            raise BitDistillError(f"{name} {d!r}: choose one of {', '.join(DENSE_DTYPES)}")
    if not is_bitnet(model):
        raise BitDistillError(
            "the model is not converted to BitNet (config.bitdistill is missing); pack a directory written "
            "by bitdistill convert/train, or pass --convert to ternarize a full-precision model as is"
        )
    settings = settings_of(model)
    if not settings.quantize_activations:
        raise BitDistillError("the runtime needs int8 activations; this model was converted with them off")
    if settings.granularity == "group" and settings.group_size % BLOCK:
        raise BitDistillError(
            f"group_size={settings.group_size}: the native kernels need a multiple of {BLOCK}; re-convert with "
            "granularity=tensor/channel or group_size a multiple of 128"
        )
    return settings


def _arch(model, adapter, blocks, rope, settings, bits: str, head_dtype: str, embed_dtype: str) -> dict:
    """The architecture record the engine is built from (per-layer lists filled by _layer_schedule)."""
    import torch

    from ..model.decoder_arch import DecoderArch

    a, family = DecoderArch.of(model.config), adapter.family
    gemma = family == "gemma3"
    if a.act not in ACTS:
        raise BitDistillError(f"activation {a.act!r} is not supported by the runtime ({', '.join(ACTS)})")
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    embed_scale = getattr(emb, "embed_scale", torch.tensor(1.0)).to(emb.weight.dtype).float() if gemma else 1.0
    return {
        "family": family,
        "n_layers": len(blocks),
        "hidden": a.hidden,
        "n_heads": a.n_heads,
        "n_kv": a.n_kv,
        "head_dim": a.head_dim,
        "inter": a.inter,
        "vocab": emb.weight.shape[0],
        "act": ACTS[a.act],
        "eps": a.eps,
        "attn_scale": float(adapter.attention(blocks[0]).scaling),
        "embed_scale": float(embed_scale),
        "final_softcap": a.final_softcap,
        "attn_softcap": a.attn_softcap,
        "tied": bool(head.weight.data_ptr() == emb.weight.data_ptr()),
        "head_dtype": head_dtype,
        "embed_dtype": embed_dtype,
        "bits": bits,
        "granularity": settings.granularity,
        "group_size": settings.group_size,
        "subln": settings.subln,
        "sandwich_norms": gemma,
        "qk_norm": adapter.has_qk_norm,
        "rope_scale": {k: s for k, (_, s) in rope.items()},
        "layer_rope": [],
        "layer_window": [],
        "bias": {},
        "bos_token_id": a.bos_token_id,
        "eos_token_id": a.eos_token_id,
        "max_position_embeddings": a.max_positions,
    }


def _layer_schedule(arch: dict, cfg, adapter, block, i: int, n_layers: int) -> None:
    """Layer i's RoPE table (Gemma 3 alternates local/global) and attention window."""
    gemma = adapter.family == "gemma3"
    layer_type = (getattr(cfg, "layer_types", None) or ["full_attention"] * n_layers)[i]
    arch["layer_rope"].append(layer_type if gemma else "default")
    attn = adapter.attention(block)
    window = cfg.sliding_window if adapter.family == "mistral" else getattr(attn, "sliding_window", None)
    arch["layer_window"].append(int(window or 0))


def _pack_linears(tensors: dict, arch: dict, adapter, block, i: int, settings) -> int:
    """Layer i's seven ternary linears (codes, scales, biases, SubLN weights) into `tensors`; their bytes."""
    from ..quant.numerics import ternarize

    attn, mlp = adapter.attention(block), adapter.feed_forward(block)
    mods = {
        "q": getattr(attn, adapter.q), "k": getattr(attn, adapter.k), "v": getattr(attn, adapter.v),
        "o": getattr(attn, adapter.o), "gate": getattr(mlp, adapter.gate), "up": getattr(mlp, adapter.up),
        "down": getattr(mlp, adapter.down),
    }  # fmt: skip
    dims, nbytes = _linear_dims(arch), 0
    for lname, mod in mods.items():
        if tuple(mod.weight.shape) != dims[lname]:
            raise BitDistillError(
                f"layer {i} {lname}: weight shape {tuple(mod.weight.shape)} != {dims[lname]} implied by "
                "the config; this architecture variant is not supported by the runtime"
            )
        q, delta = ternarize(mod.weight, settings.granularity, settings.group_size)
        packed = pack_2bit(q.numpy()) if arch["bits"] == "2" else pack_base3(q.numpy())
        nbytes += packed.nbytes
        p = f"layers.{i}.{lname}"
        tensors[f"{p}.packed"] = packed
        d = delta.float().numpy()
        g = settings.granularity
        shape = (1,) if g == "tensor" else (-1,) if g == "channel" else (d.shape[0], -1)
        tensors[f"{p}.scale"] = d.reshape(shape).copy()
        if mod.bias is not None:
            tensors[f"{p}.bias"] = mod.bias.detach().float().numpy().copy()
            arch["bias"][lname] = True
        _sub_norm(tensors, arch, mod, p, i, lname, settings.subln)
    return nbytes


def _sub_norm(tensors: dict, arch: dict, mod, p: str, i: int, lname: str, subln: str) -> None:
    sub = getattr(mod, "sub_norm", None)
    if (sub is not None) != (lname in SUBLN_LINEARS[subln]):
        raise BitDistillError(
            f"layer {i} {lname}: {'has' if sub is not None else 'lacks'} a SubLN norm, which contradicts "
            f"the recorded subln={subln!r}; re-convert the model with bitdistill convert"
        )
    if sub is not None:
        if abs(sub.eps - arch["eps"]) > 1e-12:
            raise BitDistillError(f"layer {i} {lname}: SubLN eps {sub.eps} differs from rms_norm_eps")
        tensors[f"{p}.sub_norm"] = sub.weight.detach().float().numpy().copy()


def _norm_reader(gemma: bool):
    """An RMSNorm's weight as the engine multiplies by it (Gemma stores w and multiplies by 1 + w)."""
    if gemma:
        return lambda m: (1.0 + m.weight.detach().float()).numpy().copy()
    return lambda m: m.weight.detach().float().numpy().copy()


def _block_norms(tensors: dict, adapter, block, p: str, norm_w) -> None:
    tensors[f"{p}.attn_norm"] = norm_w(block.input_layernorm)
    if adapter.family == "gemma3":
        tensors[f"{p}.post_attn_norm"] = norm_w(block.post_attention_layernorm)
        tensors[f"{p}.ffn_norm"] = norm_w(block.pre_feedforward_layernorm)
        tensors[f"{p}.post_ffn_norm"] = norm_w(block.post_feedforward_layernorm)
    else:
        tensors[f"{p}.ffn_norm"] = norm_w(block.post_attention_layernorm)
    if adapter.has_qk_norm:
        attn = adapter.attention(block)
        tensors[f"{p}.q_norm"] = norm_w(attn.q_norm)
        tensors[f"{p}.k_norm"] = norm_w(attn.k_norm)


def _dense_tensors(tensors: dict, arch: dict, model, head_dtype: str, embed_dtype: str) -> None:
    """The embedding, and the LM head unless it is the same tensor stored in the same dtype."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tensors["embed"], escale = _dense_to_numpy(emb.weight, embed_dtype)
    if escale is not None:
        tensors[dense_scale_name("embed", embed_dtype)] = escale
    if not arch["tied"] or head_dtype != embed_dtype:
        arch["tied"] = False
        tensors["head"], hscale = _dense_to_numpy(head.weight, head_dtype)
        if hscale is not None:
            tensors[dense_scale_name("head", head_dtype)] = hscale


def _dense_to_numpy(w, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    import torch

    w = w.detach().float().cpu()
    if dtype == "fp32":
        return w.numpy().copy(), None
    if dtype == "fp16":
        return w.half().numpy().copy(), None
    if dtype == "bf16":
        return w.bfloat16().view(torch.int16).numpy().view(np.uint16).copy(), None
    if dtype == "q4":
        return quantize_rows_q4(w.numpy())
    return quantize_rows_int8(w.numpy())


def _rope_tables(model, family: str) -> dict[str, tuple[np.ndarray, float]]:
    rot = model.get_submodule("model.rotary_emb")
    tables = {}
    if family == "gemma3":
        for lt in rot.layer_types:
            tables[lt] = (getattr(rot, f"{lt}_inv_freq"), float(getattr(rot, f"{lt}_attention_scaling")))
    else:
        tables["default"] = (rot.inv_freq, float(rot.attention_scaling))
    return {k: (v.detach().float().cpu().numpy().copy(), s) for k, (v, s) in tables.items()}


def _write_dir(model, out_dir, arch: dict, tensors: dict[str, np.ndarray], tokenizer) -> Path:
    from safetensors.numpy import save_file

    out = Path(out_dir)
    with atomic_dir(out) as tmp:  # a killed pack leaves nothing a re-run does not clean or restore
        tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "bitdistill-packed"})
        config = json.loads(model.config.to_json_string())
        config["packed"] = {
            "format_version": PACKED_FORMAT_VERSION,
            "arch": arch,
            "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in tensors.items()},
            "weights_crc32": _crc32(tmp / WEIGHTS_NAME),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return out
