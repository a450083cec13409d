"""Time FP fine-tuning, BitNet-SFT and distillation steps (see bitdistill.train.bench).

    python benchmarks/bench_train.py --threads 2
    git worktree add ../bench-old d59aa69
    python benchmarks/bench_train.py --threads 2 --baseline ../bench-old/src   # old code, same batches

Prints a markdown table (median [min-max] seconds per step) and writes JSON (default
benchmarks/results/train-MODEL.json). Same options as `bitdistill bench-train`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from bitdistill.cli.bench_train import register

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    register(sub)
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(Path(__file__).parent / "results" / "train-smollm2-135m.json")]
    args = parser.parse_args(["bench-train", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
