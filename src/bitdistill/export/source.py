"""Read a converted bitdistill model into plain arrays for export: ternary linears, norms, embeddings.

The ternary weights come from `bitdistill.quant.numerics.ternarize` (through `BitLinear.ternary_weight`),
exactly what the packed format stores and what the eval-mode BitLinear multiplies with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ..errors import BitDistillError
from ..model.adapters import FamilyAdapter, adapter_for
from ..model.convert import BitNetSettings, is_bitnet, settings_of
from ..model.decoder_arch import DecoderArch
from ..model.io import is_packed_dir
from ..quant import BitLinear
from ..runtime.dense_dtypes import DENSE, dequantize_dense
from .gguf_blocks import TernaryMatrix

LINEARS = ("q", "k", "v", "o", "gate", "up", "down")
# llama.cpp's `bitnet` graph has two sub-norms per block: attn_sub_norm before attn_output and ffn_sub_norm
# before ffn_down. A norm on any other linear's input has no GGUF tensor, and it cannot be folded into that
# linear's ternary weight either: the int8 activation quantization sits between the norm and the matmul.
SUB_NORM_ROLES = {"o": "attn_sub", "down": "ffn_sub"}


@dataclass
class DecoderBlock:
    """One decoder block: ternary linears by role (q, k, v, o, gate, up, down) and fp32 vectors."""

    linears: dict[str, TernaryMatrix]
    biases: dict[str, np.ndarray] = field(default_factory=dict)
    norms: dict[str, np.ndarray] = field(default_factory=dict)  # attn, ffn, q, k, attn_sub, ffn_sub


@dataclass
class ExportSource:
    """Everything the GGUF writer needs, independent of torch."""

    config: object  # the Hugging Face PretrainedConfig
    settings: BitNetSettings
    adapter: FamilyAdapter
    embed: np.ndarray
    head: np.ndarray | None  # None when tied to `embed`
    final_norm: np.ndarray
    blocks: list[DecoderBlock]
    tokenizer_dir: Path | None

    @property
    def arch(self) -> DecoderArch:
        """The config's dimensions and constants, with the defaults the packed format applies too."""
        return DecoderArch.of(self.config)


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def _linear(block: nn.Module, path: str, i: int) -> BitLinear:
    module = block.get_submodule(path)
    if not isinstance(module, BitLinear):
        raise BitDistillError(
            f"block {i}: {path} is a {type(module).__name__}, not a BitLinear; the directory does not hold a "
            "converted model — run `bitdistill convert` first"
        )
    return module


def refuse_allnorm(subln: str, name: str) -> None:
    """GGUF cannot express subln="all" (see SUB_NORM_ROLES): a one-line error naming the model and the fix."""
    if subln == "all":
        raise BitDistillError(
            f"{name}: converted with subln=all (an RMSNorm before every BitLinear), which GGUF cannot express "
            "(llama.cpp's bitnet graph has only attn_sub_norm/ffn_sub_norm, and a norm cannot be folded into "
            "ternary weights); re-convert with `bitdistill convert MODEL --subln o_down`, or run this model "
            "with `bitdistill pack` and the native runtime"
        )


def from_model(model: nn.Module, tokenizer_dir: Path | None = None, name: str | None = None) -> ExportSource:
    """Collect the ternary weights and float tensors of a converted (BitNet) model (`name` for errors)."""
    if not is_bitnet(model):
        raise BitDistillError(
            "export needs a BitNet model (config.json has no 'bitdistill' settings): convert it first with "
            "`bitdistill convert MODEL --out DIR` (add --no-subln for stock llama.cpp)"
        )
    settings = settings_of(model)
    refuse_allnorm(settings.subln, name or str(tokenizer_dir or "the model"))
    adapter = adapter_for(model)
    blocks = []
    for i, block in enumerate(adapter.blocks(model)):
        paths = dict(zip(LINEARS, adapter.linear_paths(), strict=True))
        linears, biases, norms = {}, {}, {}
        for role, path in paths.items():
            lin = _linear(block, path, i)
            linears[role] = TernaryMatrix.from_ternarize(*lin.ternary_weight())
            if lin.bias is not None:
                biases[role] = _np(lin.bias)
            sub = getattr(lin, "sub_norm", None)
            if sub is not None:
                norms[SUB_NORM_ROLES[role]] = _np(sub.weight)
        norms["attn"] = _np(block.input_layernorm.weight)
        norms["ffn"] = _np(block.post_attention_layernorm.weight)
        attn = adapter.attention(block)
        if adapter.has_qk_norm:
            norms["q"] = _np(attn.q_norm.weight)
            norms["k"] = _np(attn.k_norm.weight)
        blocks.append(DecoderBlock(linears, biases, norms))
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head is embed or head.data_ptr() == embed.data_ptr()
    return ExportSource(
        config=model.config,
        settings=settings,
        adapter=adapter,
        embed=_np(embed),
        head=None if tied else _np(head),
        final_norm=_np(model.model.norm.weight),
        blocks=blocks,
        tokenizer_dir=tokenizer_dir,
    )


def _dense(pm, name: str, dtype: str) -> np.ndarray:
    """A packed embedding / head back to float32 (every dense dtype the packer writes, q4 included)."""
    return dequantize_dense(pm.tensors, name, dtype, pm.arch["hidden"])


def from_packed(packed_dir: str | Path) -> ExportSource:
    """Read a `bitdistill pack` directory: the trits come from its 2-bit/base-3 codes, Δ from its scales."""
    from transformers import AutoConfig

    from ..runtime.packed import load_packed, unpack_weight

    pm = load_packed(packed_dir)  # validates CRC, shapes and codes
    arch = pm.arch
    refuse_allnorm(arch["subln"], str(packed_dir))
    config = AutoConfig.from_pretrained(packed_dir)
    settings = BitNetSettings.from_dict(pm.config.get("bitdistill") or {})
    adapter = adapter_for(config.model_type)
    blocks = []
    for i in range(arch["n_layers"]):
        linears, biases, norms = {}, {}, {}
        for role in LINEARS:
            p = f"layers.{i}.{role}"
            scale = pm.tensors[f"{p}.scale"].astype(np.float32)
            if arch["granularity"] in ("tensor", "channel"):  # [1] / [out] -> [1, 1] / [out, 1]
                scale = scale.reshape(-1, 1)
            linears[role] = TernaryMatrix(unpack_weight(pm, i, role), np.ascontiguousarray(scale))
            if f"{p}.bias" in pm.tensors:
                biases[role] = pm.tensors[f"{p}.bias"]
            if f"{p}.sub_norm" in pm.tensors:
                norms[SUB_NORM_ROLES[role]] = pm.tensors[f"{p}.sub_norm"]
        for key in ("attn", "ffn", "q", "k"):
            name = f"layers.{i}.{key}_norm"
            if name in pm.tensors:
                norms[key] = pm.tensors[name]
        blocks.append(DecoderBlock(linears, biases, norms))
    embed = _dense(pm, "embed", arch["embed_dtype"])
    head = None if arch["tied"] else _dense(pm, "head", arch["head_dtype"])
    if head is not None and getattr(config, "tie_word_embeddings", False):
        # pack stores a tied matrix twice when the head and embedding dtypes differ: keep the finer copy.
        if DENSE[arch["head_dtype"]].rank > DENSE[arch["embed_dtype"]].rank:
            embed = head
        head = None
    return ExportSource(
        config=config,
        settings=settings,
        adapter=adapter,
        embed=embed,
        head=head,
        final_norm=pm.tensors["norm"],
        blocks=blocks,
        tokenizer_dir=Path(packed_dir),
    )


def from_directory(model_dir: str | Path) -> ExportSource:
    """A bitdistill model directory (convert / training output, via bitdistill.load) or a packed directory."""
    if is_packed_dir(model_dir):
        return from_packed(model_dir)
    from ..model.io import load

    try:  # refuse an allnorm model before loading its weights (from_model checks again once loaded)
        recorded = json.loads((Path(model_dir) / "config.json").read_text()).get("bitdistill") or {}
        refuse_allnorm(recorded.get("subln"), str(model_dir))
    except (OSError, ValueError, AttributeError):
        pass  # unreadable or malformed: load() reports it
    return from_model(load(model_dir), tokenizer_dir=Path(model_dir), name=str(model_dir))
