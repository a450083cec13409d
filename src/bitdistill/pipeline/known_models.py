"""The config.json fields `run --check` reads, for the hub models the shipped paper recipes name.

`bitdistill run configs/qwen3-*.yaml --check` must print sizes and memory without a network and without the
model in the local Hugging Face cache; these are copied from each model's config.json on the hub
(Qwen/Qwen3-0.6B, -1.7B, -4B; the Base variants share them). A cached config.json, when present, wins.
"""

from __future__ import annotations

from typing import Any

_QWEN3 = {"model_type": "qwen3", "vocab_size": 151936, "head_dim": 128, "num_key_value_heads": 8,
          "tie_word_embeddings": True, "attention_bias": False}  # fmt: skip

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-0.6B": {**_QWEN3, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                        "num_attention_heads": 16},
    "Qwen/Qwen3-1.7B": {**_QWEN3, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                        "num_attention_heads": 16},
    "Qwen/Qwen3-4B": {**_QWEN3, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                      "num_attention_heads": 32},
}  # fmt: skip
for _name in list(KNOWN_CONFIGS):
    KNOWN_CONFIGS[f"{_name}-Base"] = KNOWN_CONFIGS[_name]


def known_config(spec: str) -> dict[str, Any] | None:
    """The shipped config of hub id `spec` (an optional @revision ignored), or None."""
    return KNOWN_CONFIGS.get(spec.split("@", 1)[0])


__all__ = ["KNOWN_CONFIGS", "known_config"]
