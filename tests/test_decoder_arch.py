"""DecoderArch.of applies the defaults Hugging Face model code applies to what a config leaves out."""

from __future__ import annotations

from types import SimpleNamespace

from transformers import Gemma3TextConfig, LlamaConfig, Qwen3Config

from bitdistill.model.decoder_arch import DecoderArch


def test_a_config_that_leaves_out_kv_heads_head_dim_and_activation():
    """An older-style config: one KV head per head, head_dim = hidden / heads, SiLU, no softcaps."""
    cfg = SimpleNamespace(hidden_size=64, intermediate_size=96, num_attention_heads=4, rms_norm_eps=1e-5,
                          max_position_embeddings=256)  # fmt: skip
    a = DecoderArch.of(cfg)
    assert (a.hidden, a.n_heads, a.n_kv, a.head_dim, a.inter) == (64, 4, 4, 16, 96)
    assert not a.head_dim_stated
    assert (a.act, a.eps, a.final_softcap, a.attn_softcap, a.max_positions) == ("silu", 1e-5, 0.0, 0.0, 256)
    assert (a.bos_token_id, a.eos_token_id) == (None, None)


def test_llama_config_defaults_num_key_value_heads_itself():
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=None)
    assert (DecoderArch.of(cfg).n_kv, DecoderArch.of(cfg).head_dim) == (4, 16)


def test_qwen3_states_a_head_dim_that_differs_from_hidden_over_heads():
    cfg = Qwen3Config(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=32)  # fmt: skip
    a = DecoderArch.of(cfg)
    assert (a.n_kv, a.head_dim, a.head_dim_stated) == (2, 32, True)


def test_gemma3_activation_and_softcaps():
    cfg = Gemma3TextConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=1,
                           head_dim=16, final_logit_softcapping=30.0, attn_logit_softcapping=50.0)  # fmt: skip
    a = DecoderArch.of(cfg)
    assert a.act == "gelu_pytorch_tanh"  # hidden_activation, the name Gemma's MLP reads
    assert (a.final_softcap, a.attn_softcap) == (30.0, 50.0)
