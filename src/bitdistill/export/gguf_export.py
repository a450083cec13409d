"""`export_gguf`: write a converted bitdistill model as a GGUF file llama.cpp loads.

Linears: ternary (TQ2_0 / TQ1_0) with Δ as every block's fp16 scale, Q4_0 (exact) for rows whose width is
not a multiple of 256. Embeddings / LM head: Q8_0, Q4_0 or F16. Norms and biases: F32. Metadata follows
llama.cpp's convert_hf_to_gguf.py for the target architecture (see arch.py), plus `bitdistill.*` keys that
record how the model was converted. The file is written under a temporary name and renamed.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, RopeScalingType

from .._fs import atomic_file
from ..errors import BitDistillError
from .arch import Target, choose_target, rope_scaling, rope_theta
from .gguf_blocks import (
    HEAD_TYPES,
    TERNARY_TYPES,
    TernaryMatrix,
    check_fp16_scale,
    encode_float,
    encode_ternary,
    pick_type,
)
from .source import ExportSource
from .tokenizer import add_tokenizer

GGUF_LINEAR = {
    "q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output",
    "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down",
}  # fmt: skip
GGUF_NORM = {
    "attn": "attn_norm", "ffn": "ffn_norm", "q": "attn_q_norm", "k": "attn_k_norm",
    "attn_sub": "attn_sub_norm", "ffn_sub": "ffn_sub_norm",
}  # fmt: skip


@dataclass
class ExportReport:
    path: Path
    arch: str
    tensor_types: Counter = field(default_factory=Counter)
    fallbacks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tokenizer: dict = field(default_factory=dict)
    bytes: int = 0


def qk_permutation(rows: int, n_head: int) -> np.ndarray:
    """Row order llama.cpp's `llama` graph expects for HF q/k rows (LlamaModel.permute in
    convert_hf_to_gguf.py): within each head, the halves [0, d/2) and [d/2, d) interleave."""
    half = rows // n_head // 2
    return np.arange(rows).reshape(n_head, 2, half).swapaxes(1, 2).reshape(rows)


def _ternary(
    writer: GGUFWriter, name: str, m: TernaryMatrix, qtype, allow_fallback: bool, report: ExportReport
) -> None:
    try:
        check_fp16_scale(m, name)
        kind, reason = pick_type(m, qtype, allow_fallback)
    except ValueError as err:
        raise BitDistillError(
            f"{name}: {err}. Re-convert with --granularity tensor or channel (or a group size that is a multiple "
            "of 256), or pass --allow-fallback to store such tensors as exact Q4_0/F16"
        ) from None
    if reason:
        report.fallbacks.append(f"{name}: {kind.name} ({reason})")
    data = encode_ternary(m, kind)
    writer.add_tensor(name, data, raw_dtype=None if kind == GGMLQuantizationType.F16 else kind)
    report.tensor_types[kind.name] += 1


def _vector(writer: GGUFWriter, name: str, v: np.ndarray, report: ExportReport) -> None:
    writer.add_tensor(name, np.ascontiguousarray(v, dtype=np.float32))
    report.tensor_types["F32"] += 1


def _float_matrix(writer: GGUFWriter, name: str, w: np.ndarray, qtype, report: ExportReport) -> None:
    data, kind = encode_float(w, qtype)
    writer.add_tensor(name, data, raw_dtype=None if kind == GGMLQuantizationType.F16 else kind)
    report.tensor_types[kind.name] += 1


def _metadata(writer: GGUFWriter, src: ExportSource, target: Target, name: str, ttype: str) -> None:
    cfg, a = src.config, src.arch
    writer.add_type("model")
    writer.add_name(name)
    writer.add_file_type(LlamaFileType[f"MOSTLY_{TERNARY_TYPES[ttype].name}"])  # the linears' type names the file
    writer.add_quantization_version(2)
    writer.add_vocab_size(src.embed.shape[0])
    writer.add_context_length(a.max_positions)
    writer.add_embedding_length(a.hidden)
    writer.add_feed_forward_length(a.inter)
    writer.add_block_count(len(src.blocks))
    writer.add_head_count(a.n_heads)
    writer.add_head_count_kv(a.n_kv)
    writer.add_rope_freq_base(rope_theta(cfg))
    writer.add_layer_norm_rms_eps(a.eps)
    writer.add_rope_dimension_count(a.head_dim)
    if target.write_head_dim:
        writer.add_key_length(a.head_dim)
        writer.add_value_length(a.head_dim)
    kind, factor = rope_scaling(cfg)
    if kind == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    s = src.settings
    writer.add_string("bitdistill.family", s.family)
    writer.add_string("bitdistill.subln", s.subln)
    writer.add_string("bitdistill.granularity", s.granularity)
    writer.add_uint32("bitdistill.group_size", s.group_size)
    writer.add_bool("bitdistill.quantize_activations", s.quantize_activations)
    writer.add_uint32("bitdistill.format_version", s.format_version)
    writer.add_string("bitdistill.weight_scale", "fp16 per GGML block, = fp16(absmean delta)")


def export_gguf(
    src: ExportSource,
    out: str | os.PathLike,
    ttype: str = "tq2_0",
    head: str = "q8_0",
    allow_fallback: bool = False,
    tokenizer_pre: str | None = None,
    name: str | None = None,
) -> ExportReport:
    """Write `src` to `out` (atomically) and return what was written."""
    if ttype not in TERNARY_TYPES:
        raise BitDistillError(f"--type {ttype!r}: choose one of {sorted(TERNARY_TYPES)}")
    if head not in HEAD_TYPES:
        raise BitDistillError(f"--head {head!r}: choose one of {sorted(HEAD_TYPES)}")
    target = choose_target(src)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out, target.arch, notes=list(target.notes))
    with atomic_file(out) as tmp:  # removed on error; a killed export's is removed by the next one
        writer = GGUFWriter(str(tmp), target.arch)
        _metadata(writer, src, target, name or out.stem, ttype)
        if src.tokenizer_dir is None:
            raise BitDistillError("no tokenizer directory: GGUF needs the model's tokenizer")
        report.tokenizer = add_tokenizer(writer, src.tokenizer_dir, src.embed.shape[0], tokenizer_pre)

        qtype, htype = TERNARY_TYPES[ttype], HEAD_TYPES[head]
        n_head, n_kv = src.arch.n_heads, src.arch.n_kv
        _float_matrix(writer, "token_embd.weight", src.embed, htype, report)
        for i, block in enumerate(src.blocks):
            for role, m in block.linears.items():
                bias = block.biases.get(role)
                if target.permute_qk and role in ("q", "k"):
                    order = qk_permutation(m.q.shape[0], n_head if role == "q" else n_kv)
                    m = m.permute_rows(order)
                    bias = None if bias is None else bias[order]
                _ternary(writer, f"blk.{i}.{GGUF_LINEAR[role]}.weight", m, qtype, allow_fallback, report)
                if bias is not None:
                    _vector(writer, f"blk.{i}.{GGUF_LINEAR[role]}.bias", bias, report)
            for key, v in block.norms.items():
                _vector(writer, f"blk.{i}.{GGUF_NORM[key]}.weight", v, report)
        _vector(writer, "output_norm.weight", src.final_norm, report)
        if src.head is not None:
            _float_matrix(writer, "output.weight", src.head, htype, report)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    report.bytes = out.stat().st_size
    return report


def export_directory(model_dir: str | os.PathLike, out: str | os.PathLike, **kwargs) -> ExportReport:
    """Load a bitdistill model directory and export it (see `export_gguf` for the options)."""
    from .source import from_directory

    return export_gguf(from_directory(model_dir), out, **kwargs)
