"""Benchmark the native runtime against PyTorch eager on the same model (see bitdistill.runtime.bench).

    python benchmarks/bench_runtime.py --model qwen3-0.6b --threads 2 --runs 5
    python benchmarks/bench_runtime.py --model smollm2-135m

Prints a markdown table (median [min-max] of the runs) and writes JSON (default benchmarks/results/).
Same options as `bitdistill bench`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from bitdistill.cli.bench import register

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    register(sub)
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        model = "qwen3-0.6b"
        for i, a in enumerate(argv):
            if a == "--model" and i + 1 < len(argv):
                model = argv[i + 1]
            elif a.startswith("--model="):
                model = a.split("=", 1)[1]
        out = Path(__file__).parent / "results" / f"runtime-{Path(model).name}.json"
        argv += ["--out", str(out)]
    args = parser.parse_args(["bench", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
