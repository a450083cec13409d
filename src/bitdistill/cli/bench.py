"""`bitdistill bench`: decode/prefill tokens/s and peak memory of the native runtime vs PyTorch eager."""

from __future__ import annotations

import argparse
from pathlib import Path

ENGINES = (
    "runtime-2",
    "runtime-1.58",
    "runtime-2-q4",
    "runtime-1.58-q4",
    "torch-fp32",
    "torch-bf16",
    "llamacpp-tq2_0",
)
HEADS = ("int8", "q4", "fp16", "bf16", "fp32")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark the native runtime (2-bit, 1.58-bit) against PyTorch eager fp32/bf16",
        description="Each engine runs in its own subprocess on the same model: a prefill of --prefill tokens "
        "then --decode greedy tokens, --runs times (after one warm-up run). Prints a table (median [min-max]) "
        "and writes JSON.",
    )
    p.add_argument("--model", default="qwen3-0.6b",
                   help="qwen3-0.6b (random weights, Qwen3-0.6B shape), smollm2-135m, or a model dir/.gguf")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill", type=int, default=128)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument(
        "--engines", default=None,
        help=f"comma-separated subset of {', '.join(ENGINES)} (default: all; llama.cpp when installed); "
        "runtime-BITS uses --head-dtype, runtime-BITS-HEAD names its head dtype (HEAD in "
        f"{', '.join(HEADS)})",
    )  # fmt: skip
    p.add_argument("--head-dtype", default="int8", choices=HEADS,
                   help="head/embedding dtype of the runtime-2 / runtime-1.58 engines (default int8)")  # fmt: skip
    p.add_argument("--work", default=None, help="where packed models are cached (default runs/bench/MODEL)")
    p.add_argument("--out", default=None, help="JSON output (default runs/bench/MODEL.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import BitDistillError
    from ..runtime.bench import format_table, llamacpp_engines, run_bench, write_json

    if args.engines is None:
        engines = ENGINES[:6] + llamacpp_engines()
    else:
        engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    runtime = {f"runtime-{b}-{h}" for b in ("2", "1.58") for h in HEADS}
    bad = [e for e in engines if e not in ENGINES and e not in runtime]
    if bad:
        raise BitDistillError(f"unknown engine(s) {bad}; choose from {', '.join(ENGINES)}")
    if min(args.prefill, args.decode, args.runs) < 1:
        raise BitDistillError("--prefill, --decode and --runs must be at least 1")
    from .._threads import check_threads

    args.threads = check_threads(args.threads)  # the workers' OpenMP crashes on absurd counts
    out = Path(args.out or Path("runs") / "bench" / f"{args.model.replace('/', '_')}.json")
    res = run_bench(
        args.model, args.threads, args.prefill, args.decode, args.runs, engines,
        Path(args.work) if args.work else None, args.head_dtype, out=out,
    )  # fmt: skip
    table = format_table(res)
    print(table)
    write_json(res, out)
    print(f"\nwrote {out}")
    return 0
