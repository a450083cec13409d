"""Choose the llama.cpp architecture that runs a converted model, or refuse with the reason.

Without SubLN a converted model is its original architecture with ternary linears, so stock llama.cpp runs
it as `llama` (Llama, SmolLM2, Mistral), `qwen2` or `qwen3`. With SubLN the only llama.cpp graph that has an
RMSNorm in front of the attention output and FFN down projections is `bitnet` (LLM_ARCH_BITNET,
src/models/bitnet.cpp): SiLU-gated FFN, NEOX RoPE, no biases, no q/k norms, square q/o projections
(heads · head_dim = hidden) and the token embedding reused as the LM head. Models outside those limits are
refused here, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BitDistillError
from .source import ExportSource, refuse_allnorm

# families whose HF attention uses rotate_half: llama.cpp's `llama` graph uses interleaved ("normal") RoPE,
# so convert_hf_to_gguf.py permutes q/k rows for it; `qwen2`, `qwen3` and `bitnet` use NEOX RoPE as HF does.
NO_SUBLN_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


@dataclass(frozen=True)
class Target:
    arch: str  # GGUF general.architecture
    permute_qk: bool  # llama's interleaved RoPE needs HF's q/k rows permuted
    write_head_dim: bool  # key_length / value_length (when the config states head_dim)
    notes: tuple[str, ...] = ()


def rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise BitDistillError(
            "config.json has no rope_theta (rope_parameters.rope_theta); cannot export RoPE"
        )
    return float(theta)


def rope_scaling(config) -> tuple[str, float]:
    """('none', 1) or ('linear', factor); other RoPE scalings are refused."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind == "default":
        return "none", 1.0
    if kind == "linear":
        return "linear", float(params["factor"])
    raise BitDistillError(
        f"config.json rope_parameters.rope_type={kind!r}: this exporter writes default and linear RoPE only "
        "(llama3/yarn scaling needs extra tensors and keys); export a model with default RoPE"
    )


def choose_target(src: ExportSource) -> Target:
    """The llama.cpp architecture for `src`, or a BitDistillError naming what cannot be represented."""
    cfg, family, a = src.config, src.adapter.family, src.arch
    hidden, heads, head_dim = a.hidden, a.n_heads, a.head_dim
    refuse_allnorm(src.settings.subln, "the model")  # from_model / from_packed refuse it earlier, by name
    if family == "gemma3":
        raise BitDistillError(
            "gemma3 models cannot be exported to GGUF by bitdistill yet: llama.cpp's gemma3 graph needs "
            "(1 + w) norms, embedding scaling, sliding-window layers and GELU, and it has no SubLN; use a "
            "llama, mistral, qwen2 or qwen3 model"
        )
    if family not in NO_SUBLN_ARCH:
        raise BitDistillError(f"family {family!r} has no GGUF mapping; supported: {sorted(NO_SUBLN_ARCH)}")
    if a.act != "silu":
        raise BitDistillError(
            f"config.json hidden_act={a.act!r}: llama.cpp's {family} graph computes SiLU only"
        )
    if getattr(cfg, "mlp_bias", False):
        raise BitDistillError("config.json mlp_bias=true: llama.cpp's graphs used here have no FFN biases")
    rope_scaling(cfg)
    notes = []
    window = getattr(cfg, "sliding_window", None)
    if family == "mistral" and window and window < a.max_positions:
        notes.append(
            f"sliding_window={window}: llama.cpp's llama graph attends to the full context, so outputs "
            f"differ from the model beyond {window} tokens"
        )
    if src.settings.subln == "none":
        arch = NO_SUBLN_ARCH[family]
        return Target(arch, arch == "llama", a.head_dim_stated, tuple(notes))

    # SubLN -> llama.cpp `bitnet`
    why = []
    if src.adapter.has_qk_norm:
        why.append(f"{family} has q/k norms (attn_q_norm/attn_k_norm), which the bitnet graph lacks")
    if any(b.biases for b in src.blocks):
        roles = sorted({r for b in src.blocks for r in b.biases})
        why.append(f"its {'/'.join(roles)} projections carry biases, which the bitnet graph lacks")
    if heads * head_dim != hidden:
        why.append(
            f"heads·head_dim = {heads}·{head_dim} = {heads * head_dim} differs from hidden_size {hidden} "
            "(the bitnet graph requires square q/o projections)"
        )
    if src.head is not None:
        why.append("its LM head is not tied to the embeddings (the bitnet graph reuses token_embd as output)")
    if rope_scaling(cfg)[0] != "none":
        why.append("it uses RoPE scaling")
    if why:
        raise BitDistillError(
            "this SubLN model cannot be represented in llama.cpp's `bitnet` architecture (the only llama.cpp "
            "graph with sub-norms): " + "; ".join(why) + ". Export a model converted without SubLN "
            "(`bitdistill convert --no-subln`), or a Llama/SmolLM2/Mistral-shaped SubLN model."
        )
    return Target("bitnet", False, False, tuple(notes))
