"""What a Hugging Face decoder config says about the architecture, read in one place.

Configs leave facts out and let the model code default them: no num_key_value_heads means one KV head per
head, no head_dim means hidden / heads, no softcap means none, and Gemma names its activation
hidden_activation beside hidden_act. The packed format's "arch" record (runtime/pack_writer.py) and the GGUF
metadata (export/) both start from `DecoderArch.of(config)`, so the two files of one model cannot disagree
about its shape.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecoderArch:
    hidden: int
    n_heads: int
    n_kv: int
    head_dim: int
    head_dim_stated: bool  # the config names head_dim (it may differ from hidden / heads)
    inter: int
    act: str  # the Hugging Face activation name (e.g. "silu", "gelu_pytorch_tanh")
    eps: float  # RMSNorm epsilon
    final_softcap: float  # 0: none
    attn_softcap: float  # 0: none
    max_positions: int  # 0: the config gives none
    bos_token_id: int | None
    eos_token_id: int | list[int] | None

    @classmethod
    def of(cls, cfg) -> DecoderArch:
        n_heads = cfg.num_attention_heads
        stated_head_dim = getattr(cfg, "head_dim", None)
        return cls(
            hidden=cfg.hidden_size,
            n_heads=n_heads,
            n_kv=getattr(cfg, "num_key_value_heads", None) or n_heads,
            head_dim=stated_head_dim or cfg.hidden_size // n_heads,
            head_dim_stated=stated_head_dim is not None,
            inter=cfg.intermediate_size,
            act=getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", "silu"),
            eps=float(cfg.rms_norm_eps),
            final_softcap=float(getattr(cfg, "final_logit_softcapping", None) or 0.0),
            attn_softcap=float(getattr(cfg, "attn_logit_softcapping", None) or 0.0),
            max_positions=int(getattr(cfg, "max_position_embeddings", 0) or 0),
            bos_token_id=getattr(cfg, "bos_token_id", None),
            eos_token_id=getattr(cfg, "eos_token_id", None),
        )
