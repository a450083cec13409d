"""`bitdistill bench-train`: seconds per training step of FP fine-tuning, BitNet-SFT and distillation."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from ..pipeline.bench_train import VARIANTS

    p = subparsers.add_parser(
        "bench-train",
        help="time FP fine-tuning, BitNet-SFT and distillation steps (tokens/s, s/step, peak RSS)",
        description="Each row runs in its own subprocess through the real training loop on SST-2 batches "
        "(length-grouped, as training sees them): median [min-max] seconds per optimizer step after warm-up, "
        "tokens/s and peak RSS. --baseline SRC adds rows run with another checkout's code (e.g. a git "
        "worktree of an older commit) on the same batches. Prints a table and writes JSON.",
    )
    p.add_argument("--model", default="smollm2-135m", help="model spec (default: the embedded SmolLM2-135M)")
    p.add_argument("--data", default="../shared/data/sst2",
                   help="SST-2 directory (train.tsv); when missing, a synthetic set with SST-2's lengths")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=6, help="measured steps per row (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", default=None, help="torch threads (default: torch's default)")
    p.add_argument("--subln", default="all", choices=("all", "o_down", "none"))
    p.add_argument(
        "--rows", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}"
    )
    p.add_argument("--baseline", default=None, help="another checkout's src/ directory to time as well")
    p.add_argument("--baseline-rows", default="fp,bitnet,distill-targets")
    p.add_argument("--out", default="runs/bench/train.json", help="JSON output")
    p.set_defaults(func=run)


def _rows(text: str, flag: str) -> tuple[str, ...]:
    from ..errors import BitDistillError
    from ..pipeline.bench_train import VARIANTS

    rows = tuple(r.strip() for r in text.split(",") if r.strip())
    bad = [r for r in rows if r not in VARIANTS]
    if bad or not rows:
        raise BitDistillError(f"{flag}: unknown row(s) {bad}; choose from {', '.join(VARIANTS)}")
    return rows


def run(args: argparse.Namespace) -> int:
    from ..errors import BitDistillError
    from ..pipeline.bench_train import format_table, run_bench_train, write_json

    if min(args.batch_size, args.steps) < 1 or args.warmup < 0:
        raise BitDistillError("--batch-size and --steps must be at least 1, --warmup at least 0")
    if args.threads is not None:
        from .._threads import check_threads

        args.threads = check_threads(args.threads)
    if args.baseline and not (Path(args.baseline) / "bitdistill").is_dir():
        raise BitDistillError(
            f"--baseline {args.baseline}: no bitdistill package there; pass a checkout's src/"
        )
    res = run_bench_train(
        model=args.model, data=args.data, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
        threads=args.threads, subln=args.subln, variants=_rows(args.rows, "--rows"), baseline=args.baseline,
        baseline_variants=_rows(args.baseline_rows, "--baseline-rows"),
    )  # fmt: skip
    print(format_table(res))
    write_json(res, args.out)
    print(f"\nwrote {args.out}")
    return 0
