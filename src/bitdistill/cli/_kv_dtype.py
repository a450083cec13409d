"""The --kv-dtype flag of the verbs that run the native runtime (generate, classify, serve)."""

from __future__ import annotations

KV_DTYPES = ("fp32", "fp16")  # = runtime.engine.KV_DTYPES, spelled out so the CLI starts without numpy


def add_kv_dtype(p) -> None:
    p.add_argument(
        "--kv-dtype", choices=KV_DTYPES, default="fp32",
        help="KV cache precision: fp32 (default) keeps logits equal to PyTorch's up to float noise; fp16 halves "
        "the cache and the attention's memory reads (faster decode at long contexts, as llama.cpp's default) "
        "at a small numerical cost (see docs/runtime.md)",
    )  # fmt: skip
