"""One benchmark measurement in a fresh process (run as a script by bitdistill.bench.engines).

`runtime PACKED_DIR ...`: the native engine, loaded without importing torch (the package __init__ files
that pull torch in are bypassed with namespace stubs; the worker asserts torch never loaded).
`torch SPEC ... --dtype fp32|bf16`: transformers eager forward with a KV cache.
Prints one JSON line: per-run decode and prefill tokens/s, and the process's peak RSS.
`classify-runtime PACKED_DIR --data DIR` / `classify-torch SPEC --data DIR [--bitnet]`: label-word
classification of a task's dev split (batched; per-run sentences/s and every prediction).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

# Run as a script, this file's directory heads sys.path, where its modules could shadow packages of the same
# name that transformers probes for; drop it (the package is imported by its full name below).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)


def _peak_rss_mib() -> float:
    from bitdistill._peak_rss import peak_rss_mib  # imported late: after the mode's package stubs

    return peak_rss_mib()


def _stub_packages(*subpackages: str) -> None:
    """Register bitdistill (and the given sub-packages) as bare namespaces, so importing one module does
    not run the package __init__ files that pull torch in (it would inflate the measured peak RSS)."""
    pkg = Path(__file__).resolve().parents[1]
    for name in ("", *subpackages):
        mod = types.ModuleType("bitdistill" + (f".{name}" if name else ""))
        mod.__path__ = [str(pkg / name if name else pkg)]
        sys.modules[mod.__name__] = mod


def _llamacpp(args) -> dict:
    _stub_packages("export")
    from bitdistill.export.llamacpp import bench_worker

    res = bench_worker(args.target, args.threads, args.prefill, args.decode, args.runs)
    assert "torch" not in sys.modules, "the llama.cpp worker imported torch"
    return {**res, "peak_rss_mib": _peak_rss_mib(), "torch_loaded": False}


def _runtime(args) -> dict:
    _stub_packages("quant")
    import numpy as np

    from bitdistill.runtime.engine import load

    engine = load(args.target, threads=args.threads, kv_dtype=args.kv_dtype)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, engine.arch["vocab"], args.prefill).tolist()
    dec, pre = [], []
    engine.reset(args.prefill + args.decode + 1)
    engine.forward(prompt)  # the ThreadPicker's first probe pair (all threads, then one) ends in the warm-up
    for _ in range(args.runs + 1):  # the first run warms caches and page-faults the weights in
        engine.reset(args.prefill + args.decode + 1)
        t = time.perf_counter()
        logits = engine.forward(prompt)
        t_pre = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(args.decode):
            logits = engine.forward([int(np.argmax(logits))])
        t_dec = time.perf_counter() - t
        pre.append(args.prefill / t_pre)
        dec.append(args.decode / t_dec)
    assert "torch" not in sys.modules, "the runtime worker imported torch"
    from bitdistill.runtime.native import SIMD_NAMES, prefetch_ahead, simd_level

    return {
        "decode": dec[1:], "prefill": pre[1:], "peak_rss_mib": _peak_rss_mib(), "torch_loaded": False,
        "simd": SIMD_NAMES[simd_level()], "prefetch_bytes": prefetch_ahead(), "threads_used": engine._pick.picks(),
    }  # fmt: skip


def _torch(args) -> dict:
    import torch

    from bitdistill.bench.engines import build_fp_model

    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model, _ = build_fp_model(args.target, dtype)
    model = model.to(dtype).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (1, args.prefill), generator=g)
    dec, pre = [], []
    runs = args.runs + 1
    with torch.inference_mode():
        for _ in range(runs):
            t = time.perf_counter()
            out = model(prompt, use_cache=True)
            t_pre = time.perf_counter() - t
            cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            t = time.perf_counter()
            for _ in range(args.decode):
                out = model(nxt, past_key_values=cache, use_cache=True)
                cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            t_dec = time.perf_counter() - t
            pre.append(args.prefill / t_pre)
            dec.append(args.decode / t_dec)
    return {"decode": dec[1:], "prefill": pre[1:], "peak_rss_mib": _peak_rss_mib(), "torch_loaded": True}


def _examples(args):
    from bitdistill.data.tasks import get_task

    task = get_task(args.task)
    return task, task.load("dev", args.data, limit=args.limit)


def _timed_runs(args, score) -> dict:
    """sentences/s of `runs` full passes of score(examples) after a warm-up on the first few."""
    task, examples = _examples(args)
    for _ in range(2):  # two batches: the ThreadPicker's first probe pair (all threads, then one) ends here
        score(examples[:8], task.label_words)
    speeds, preds = [], None
    for _ in range(args.runs):
        t = time.perf_counter()
        preds = score(examples, task.label_words)
        speeds.append(len(examples) / (time.perf_counter() - t))
    return {"sentences_s": speeds, "preds": preds, "labels": [ex.label for ex in examples]}


def _classify_runtime(args) -> dict:
    _stub_packages("quant", "data")
    from bitdistill.runtime.engine import load, load_tokenizer
    from bitdistill.runtime.native import SIMD_NAMES, prefetch_ahead, simd_level
    from bitdistill.runtime.scoring import iter_label_word_scores

    engine, tok = load(args.target, threads=args.threads), load_tokenizer(args.target)

    def score(examples, words):
        prompts = [ex.prompt for ex in examples]
        it = iter_label_word_scores(engine, tok, prompts, words, args.max_length, args.batch_tokens)
        return [int(s.argmax()) for s in it]

    res = _timed_runs(args, score)
    assert "torch" not in sys.modules, "the runtime worker imported torch"
    return {
        **res,
        "peak_rss_mib": _peak_rss_mib(),
        "simd": SIMD_NAMES[simd_level()],
        "prefetch_bytes": prefetch_ahead(),
        "threads_used": engine._pick.picks(),  # calls per "kind threads": a run gone to one thread shows here
    }


def _classify_torch(args) -> dict:
    import torch

    from bitdistill.bench.engines import build_fp_model
    from bitdistill.data.scoring import score_label_words

    torch.set_num_threads(args.threads)
    model, tok = build_fp_model(args.target)
    if args.bitnet:  # the model the runtime packs (bench.prepare): its predictions are the reference
        from bitdistill.model.convert import is_bitnet, to_bitnet

        if not is_bitnet(model):
            to_bitnet(model, subln=False)
    model.eval()

    def score(examples, words):
        scores = score_label_words(model, tok, examples, words, args.batch_size, args.max_length)
        return scores.argmax(-1).tolist()

    res = _timed_runs(args, score)  # score_label_words runs under no_grad
    return {**res, "peak_rss_mib": _peak_rss_mib(), "torch_loaded": True}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["runtime", "torch", "llamacpp", "classify-runtime", "classify-torch"])
    p.add_argument("target")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill", type=int, default=128)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--kv-dtype", default="fp32", choices=["fp32", "fp16"])
    p.add_argument("--task", default="sst2")
    p.add_argument("--data", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bitnet", action="store_true")
    args = p.parse_args()
    kinds = {"runtime": _runtime, "torch": _torch, "llamacpp": _llamacpp,
             "classify-runtime": _classify_runtime, "classify-torch": _classify_torch}  # fmt: skip
    res = kinds[args.kind](args)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
