"""`bitdistill bench`: decode/prefill tokens/s and peak memory of the native runtime vs PyTorch eager."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ENGINES = (
    "runtime-2",
    "runtime-1.58",
    "runtime-2-q4",
    "runtime-1.58-q4",
    "torch-fp32",
    "torch-bf16",
    "llamacpp-tq2_0",
    "llama-bench-tq2_0",
)
HEADS = ("int8", "q4", "fp16", "bf16", "fp32")  # = runtime.dense_dtypes.DENSE_DTYPES (see cli/pack.py)


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
    p.add_argument(
        "--runs", type=int, default=None, help="timed runs per engine (default 5; 1 with --classify)"
    )
    p.add_argument(
        "--rounds", type=int, default=1,
        help="the engines take turns this many times, --runs runs each per turn, all pooled (a machine whose "
        "speed drifts then slows every engine alike; default 1)",
    )  # fmt: skip
    p.add_argument(
        "--engines", default=None,
        help=f"comma-separated subset of {', '.join(ENGINES)} (default: all; llama.cpp when installed); "
        "runtime-BITS uses --head-dtype, runtime-BITS-HEAD names its head dtype (HEAD in "
        f"{', '.join(HEADS)}); a -kv16 suffix on either keeps its KV cache in fp16 (llama.cpp's default) "
        "instead of fp32",
    )  # fmt: skip
    p.add_argument("--head-dtype", default=None, choices=HEADS,
                   help="head/embedding dtype of the runtime-2 / runtime-1.58 engines (default int8; fp32 with "
                   "--classify, the head of the torch model whose predictions are the reference)")  # fmt: skip
    p.add_argument("--work", default=None, help="where packed models are cached (default runs/bench/MODEL)")
    p.add_argument("--out", default=None, help="JSON output (default runs/bench/MODEL.json)")
    p.add_argument("--llama-bench", default=None, metavar="PATH",
                   help="llama.cpp's llama-bench binary for the llama-bench-tq2_0 engine (TQ2_0 linears, Q4_0 "
                   "head; default: llama-bench on PATH; skipped with a message when there is none)")  # fmt: skip
    p.add_argument("--roofline", action="store_true",
                   help="measure the machine's read bandwidth in the same run and print each runtime engine's "
                   "decode speed as a fraction of bandwidth / bytes read per token")  # fmt: skip
    p.add_argument("--scaling", action="store_true",
                   help="instead of the engine table: the runtime (2-bit, --head-dtype head) at 1 and --threads "
                   "threads, alternating, on the machine as it is and with a busy-loop process holding one core")  # fmt: skip
    c = p.add_argument_group("classification workload (--classify)")
    c.add_argument("--classify", action="store_true",
                   help="measure label-word classification sentences/s on --data's dev split instead: the "
                   "packed 2-bit model (batched, padding-free) vs PyTorch fp32 eager (batched) and the torch "
                   "BitNet model, whose predictions the runtime's are compared with")  # fmt: skip
    c.add_argument("--task", default="sst2", help="classification task (default sst2)")
    c.add_argument("--data", default=None, help="the task's data directory (with dev.tsv), e.g. data/sst2")
    c.add_argument("--limit", type=int, default=None, help="first N dev sentences only")
    c.add_argument("--batch-tokens", type=int, default=512, help="runtime: tokens per batched forward")
    c.add_argument("--batch-size", type=int, default=32, help="PyTorch: sequences per batch")
    p.set_defaults(func=run)


def _known_engine(name: str) -> bool:
    """One of ENGINES, or a runtime engine name that bench.engines.runtime_engine parses with a known head."""
    from ..bench.engines import runtime_engine

    if name in ENGINES:
        return True
    try:
        return runtime_engine(name, HEADS[0])[1] in HEADS
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from ..errors import BitDistillError

    if args.classify:
        args.head_dtype = args.head_dtype or "fp32"
        return run_classify(args)
    args.head_dtype = args.head_dtype or "int8"
    if args.scaling:
        return run_scaling(args)
    args.runs = 5 if args.runs is None else args.runs
    from ..bench.engines import format_table, llamacpp_engines, run_bench, write_json
    from ..bench.llama_bench import find_llama_bench

    llama_bench = find_llama_bench(args.llama_bench)
    if args.engines is None:
        engines = ENGINES[:6] + llamacpp_engines() + ((ENGINES[-1],) if llama_bench else ())
    else:
        engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    bad = [e for e in engines if not _known_engine(e)]
    if bad:
        raise BitDistillError(
            f"unknown engine(s) {bad}; choose from {', '.join(ENGINES)} (runtime-BITS[-HEAD][-kv16])"
        )
    if llama_bench is None and ENGINES[-1] in engines:
        print(f"skipping {ENGINES[-1]}: no llama-bench on PATH; give --llama-bench PATH to include llama.cpp",
              file=sys.stderr)  # fmt: skip
        engines = tuple(e for e in engines if e != ENGINES[-1])
    if not engines:
        raise BitDistillError("--engines: no engine left to run")
    if min(args.prefill, args.decode, args.runs, args.rounds) < 1:
        raise BitDistillError("--prefill, --decode, --runs and --rounds must be at least 1")
    from .._threads import check_threads

    args.threads = check_threads(args.threads)  # the workers' OpenMP crashes on absurd counts
    out = Path(args.out or Path("runs") / "bench" / f"{args.model.replace('/', '_')}.json")
    res = run_bench(
        args.model, args.threads, args.prefill, args.decode, args.runs, engines,
        Path(args.work) if args.work else None, args.head_dtype, out=out, roofline=args.roofline,
        llama_bench=llama_bench, rounds=args.rounds,
    )  # fmt: skip
    table = format_table(res)
    print(table)
    write_json(res, out)
    print(f"\nwrote {out}")
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from .._threads import check_threads
    from ..bench.classify import format_classify_table, run_classify_bench
    from ..bench.engines import write_json
    from ..errors import BitDistillError

    args.runs = 1 if args.runs is None else args.runs
    for flag in ("runs", "limit", "batch_tokens", "batch_size"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise BitDistillError(f"--{flag.replace('_', '-')} {v}: must be at least 1")
    if args.data is None or not Path(args.data).is_dir():
        raise BitDistillError(f"--classify needs --data, the task's data directory (got {args.data!r})")
    threads = check_threads(args.threads)
    out = Path(args.out or Path("runs") / "bench" / f"{args.model.replace('/', '_')}-classify.json")
    res = run_classify_bench(
        args.model, Path(args.data), threads, args.runs, args.limit, Path(args.work) if args.work else None,
        args.head_dtype, args.batch_tokens, args.batch_size, args.task, out=out,
    )  # fmt: skip
    print(format_classify_table(res))
    write_json(res, out)
    print(f"\nwrote {out}")
    return 0


def run_scaling(args: argparse.Namespace) -> int:
    from .._threads import check_threads
    from ..bench.engines import prepare, write_json
    from ..bench.scaling import format_scaling_table, run_scaling_bench
    from ..errors import BitDistillError

    args.runs = 5 if args.runs is None else args.runs
    if min(args.prefill, args.decode, args.runs) < 1:
        raise BitDistillError("--prefill, --decode and --runs must be at least 1")
    threads = check_threads(args.threads)
    work = Path(args.work or Path("runs") / "bench" / args.model.replace("/", "_"))
    packed = prepare(args.model, work, args.head_dtype)["2"]
    out = Path(args.out or Path("runs") / "bench" / f"{args.model.replace('/', '_')}-scaling.json")
    res = run_scaling_bench(packed, threads, args.prefill, args.decode, args.runs)
    print(format_scaling_table(res))
    write_json(res, out)
    print(f"\nwrote {out}")
    return 0
