"""Tiny random models of every supported family, built from configs (no network). Shared by the tests."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3")
COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def tiny_config(family: str, **overrides):
    kw = {**COMMON, **overrides}
    if family == "llama":
        return LlamaConfig(**kw)
    if family == "mistral":
        return MistralConfig(**kw)
    if family == "qwen2":
        return Qwen2Config(**kw)  # q/k/v carry a bias in Qwen2
    if family == "qwen3":
        return Qwen3Config(**{"head_dim": 16, **kw})
    if family == "gemma3":
        return Gemma3TextConfig(**{"head_dim": 16, "sliding_window": 8, **kw})
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).float()


def tiny_tokenizer(vocab_size: int = 128):
    """A word-level tokenizer over `vocab_size` entries (built offline; special tokens first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    words = [f"w{i}" for i in range(vocab_size - len(specials))]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def save_tiny_hf_dir(path, family: str = "llama", seed: int = 0, **overrides):
    """A local HF model directory (config, safetensors, tokenizer) of a tiny random model."""
    model = tiny_model(family, seed=seed, **overrides)
    model.save_pretrained(path)
    tiny_tokenizer(model.config.vocab_size).save_pretrained(path)
    return model
