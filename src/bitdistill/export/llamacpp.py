"""Run an exported GGUF in stock llama.cpp through llama-cpp-python (optional): greedy tokens, logits, speed.

Used by benchmarks/llamacpp_check.py and by `bitdistill bench` to put llama.cpp beside the native runtime.
Nothing here is needed to export; every function raises BitDistillError when llama-cpp-python is missing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from .._peak_rss import peak_rss_mib
from .._spread import spread
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
    return {"decode_tok_s": spread(decode), "prefill_tok_s": spread(prefill), "new_tokens": n_new}


def byte_level_tokenizer():
    """A minimal byte-level BPE tokenizer (256 byte tokens, one merge, <|endoftext|>) for models that have
    none, such as the random-weight benchmark models: llama.cpp needs a vocabulary to load a file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["Ġt"] = len(vocab)  # llama.cpp refuses a BPE vocabulary without merges: give it one
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"eos_token": "<|endoftext|>"})
    return fast


def prepare_gguf(model, work: str | os.PathLike, tokenizer=None, ttype: str = "tq2_0", head: str = "q4_0"):
    """Export a converted in-memory model to WORK/model-TTYPE-HEAD.gguf (reused when present) for timing."""
    from pathlib import Path

    from .gguf_export import export_gguf
    from .source import from_model

    work = Path(work)
    out = work / f"model-{ttype}-{head}.gguf"
    if out.is_file():
        return out
    tok_dir = work / "gguf-tokenizer"
    (tokenizer if tokenizer is not None else byte_level_tokenizer()).save_pretrained(str(tok_dir))
    export_gguf(from_model(model, tokenizer_dir=tok_dir), out, ttype=ttype, head=head)
    return out


def bench_worker(gguf_path, threads: int, prefill: int, decode: int, runs: int) -> dict:
    """The `bitdistill bench` worker protocol: a random `prefill`-token prompt then `decode` greedy tokens,
    `runs` times after one warm-up; per-run tokens/s and the process's peak RSS (run it in its own process)."""
    llm = open_model(gguf_path, n_ctx=prefill + decode + 8, threads=threads)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, llm.n_vocab(), prefill).tolist()
    res = decode_speed(llm, prompt, decode, runs + 1)
    return {
        "decode": res["decode_tok_s"]["runs"][1:],
        "prefill": res["prefill_tok_s"]["runs"][1:],
        "peak_rss_mib": peak_rss_mib(),
    }
