"""Run an exported GGUF in stock llama.cpp through llama-cpp-python (optional): greedy tokens, logits, speed.

Used by benchmarks/llamacpp_check.py and by `bitdistill bench` to put llama.cpp beside the native runtime.
Nothing here is needed to export; every function raises BitDistillError when llama-cpp-python is missing.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence

import numpy as np

from ..errors import BitDistillError


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def open_model(gguf_path: str | os.PathLike, n_ctx: int = 512, threads: int = 2):
    """A llama_cpp.Llama keeping every position's logits (needed for teacher-forced comparisons)."""
    try:
        import llama_cpp
    except ImportError:
        raise BitDistillError(
            "llama-cpp-python is not installed: pip install llama-cpp-python (builds llama.cpp from source, "
            "about 5 minutes on 2 cores)"
        ) from None
    return llama_cpp.Llama(
        str(gguf_path),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=True,
        verbose=False,
    )


def greedy(llm, prompt_ids: Sequence[int], n_new: int) -> list[int]:
    """Greedy continuation (argmax of llama.cpp's logits at every step)."""
    llm.reset()
    llm.eval(list(prompt_ids))
    out: list[int] = []
    for _ in range(n_new):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        if len(out) == n_new:
            break
        llm.eval([tok])
    return out


def logits(llm, ids: Sequence[int]) -> np.ndarray:
    """float32 [len(ids), vocab]: llama.cpp's logits at every position of `ids` (teacher forced)."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def decode_speed(llm, prompt_ids: Sequence[int], n_new: int = 128, runs: int = 5) -> dict:
    """Decode and prefill tokens/s over `runs` runs (median, min, max): batch 1, greedy, one token a step."""
    decode, prefill = [], []
    for _ in range(runs):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(list(prompt_ids))
        t1 = time.perf_counter()
        for _ in range(n_new):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        t2 = time.perf_counter()
        prefill.append(len(prompt_ids) / (t1 - t0))
        decode.append(n_new / (t2 - t1))

    def summary(xs: list[float]) -> dict:
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}

    return {"decode_tok_s": summary(decode), "prefill_tok_s": summary(prefill), "new_tokens": n_new}
