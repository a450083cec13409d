"""Time FP fine-tuning, BitNet-SFT and distillation steps (see bitdistill.pipeline.bench_train).

    python benchmarks/bench_train.py --threads 2
    git worktree add ../bench-old d59aa69
    python benchmarks/bench_train.py --threads 2 --baseline ../bench-old/src   # old code, same batches

Prints a markdown table (median [min-max] seconds per step) and writes JSON (default
benchmarks/results/train-MODEL.json). Same options as `bitdistill bench-train`.
"""

from __future__ import annotations

import sys

from _verb import RESULTS, run_verb


def main() -> int:
    from bitdistill.cli.bench_train import register

    return run_verb(__doc__, register, "bench-train", sys.argv[1:], lambda _: RESULTS / "train-smollm2-135m.json")


if __name__ == "__main__":
    sys.exit(main())
