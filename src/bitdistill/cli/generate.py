"""`bitdistill generate PACKED --prompt TEXT`: stream text from a packed model on the native CPU runtime."""

from __future__ import annotations

import argparse
import math
import sys

from .._threads import check_threads
from ._kv_dtype import add_kv_dtype


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text with a packed model on the native CPU runtime (streams tokens)",
        description="Generate from a `bitdistill pack` directory. Greedy by default; --temperature > 0 "
        "samples (with optional --top-k / --top-p).",
    )
    p.add_argument("packed", help="packed model directory (bitdistill pack --out)")
    p.add_argument("--prompt", required=True, help="prompt text ('-' reads standard input)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    add_kv_dtype(p)
    p.add_argument("--no-stop", action="store_true", help="do not stop at the end-of-sequence token")
    p.add_argument("--stats", action="store_true", help="print prefill/decode speed to stderr")
    p.set_defaults(func=run)


def check_sampling(args: argparse.Namespace) -> None:
    from ..errors import BitDistillError

    if args.max_new_tokens < 1:
        raise BitDistillError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise BitDistillError(f"--temperature {args.temperature}: must be a number >= 0 (0 = greedy)")
    if args.top_k < 0:
        raise BitDistillError(f"--top-k {args.top_k}: must be >= 0 (0 = off)")
    if not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        raise BitDistillError(f"--top-p {args.top_p}: must be in (0, 1] (1 = off)")


def fit_context(n_prompt: int, max_new: int, arch: dict) -> int:
    """`max_new` cut to the model's context (with a warning); a prompt that fills it is refused.

    Without this a 100k-token prompt reserves a KV cache of gigabytes and prefills positions the model was
    never trained on."""
    from ..errors import BitDistillError

    ctx = int(arch.get("max_position_embeddings") or 0)
    if not ctx or n_prompt + max_new <= ctx:
        return max_new
    if n_prompt >= ctx:
        raise BitDistillError(
            f"the prompt is {n_prompt} tokens; the model's context is {ctx} tokens (max_position_embeddings) "
            "and generation needs room for at least one more. Shorten the prompt"
        )
    print(
        f"bitdistill generate: warning: the prompt ({n_prompt} tokens) + --max-new-tokens {max_new} exceed "
        f"the model's context of {ctx} tokens; generating at most {ctx - n_prompt}",
        file=sys.stderr,
    )
    return ctx - n_prompt


def run(args: argparse.Namespace) -> int:
    from ..errors import BitDistillError
    from ..runtime.engine import GenerationStats, SamplingParams, eos_ids, load, load_tokenizer
    from ..runtime.scoring import encode

    check_sampling(args)
    threads = None if args.threads is None else check_threads(args.threads)
    engine = load(args.packed, threads=threads, kv_dtype=args.kv_dtype)  # before the tokenizer: a wrong path is named as such
    tok = load_tokenizer(args.packed)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    ids = encode(tok, prompt)
    if not ids:
        raise BitDistillError("the prompt encodes to no tokens; give some text")
    args.max_new_tokens = fit_context(len(ids), args.max_new_tokens, engine.arch)
    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    stats = GenerationStats()
    out: list[int] = []
    shown = ""
    stop = [] if args.no_stop else eos_ids(engine.arch)
    for t in engine.stream(ids, args.max_new_tokens, params, stop, stats):
        if t in stop:
            break
        out.append(t)
        # decode the whole continuation each time: byte-level BPE pieces only become text once complete
        text = tok.decode(out, skip_special_tokens=True)
        if text.startswith(shown) and not text.endswith("\ufffd"):
            sys.stdout.write(text[len(shown) :])
            sys.stdout.flush()
            shown = text
    text = tok.decode(out, skip_special_tokens=True)
    if text.startswith(shown):
        sys.stdout.write(text[len(shown) :])
    sys.stdout.write("\n")
    if args.stats:
        print(
            f"[{stats.prompt_tokens} prompt tokens: {stats.prefill_tok_s:.1f} tok/s prefill; "
            f"{stats.new_tokens} new tokens: {stats.decode_tok_s:.1f} tok/s decode; {engine.threads} threads]",
            file=sys.stderr,
        )
    return 0
