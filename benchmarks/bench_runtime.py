"""Benchmark the native runtime against PyTorch eager on the same model (see bitdistill.bench.engines).

    python benchmarks/bench_runtime.py --model qwen3-0.6b --threads 2 --runs 5
    python benchmarks/bench_runtime.py --model smollm2-135m

Prints a markdown table (median [min-max] of the runs) and writes JSON (default benchmarks/results/).
Same options as `bitdistill bench`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _verb import RESULTS, run_verb


def _default_out(argv: list[str]) -> Path:
    model = "qwen3-0.6b"
    for i, a in enumerate(argv):
        if a == "--model" and i + 1 < len(argv):
            model = argv[i + 1]
        elif a.startswith("--model="):
            model = a.split("=", 1)[1]
    return RESULTS / f"runtime-{Path(model).name}.json"


def main() -> int:
    from bitdistill.cli.bench import register

    return run_verb(__doc__, register, "bench", sys.argv[1:], _default_out)


if __name__ == "__main__":
    sys.exit(main())
