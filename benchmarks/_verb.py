"""Run one `bitdistill` CLI verb as a benchmark script: the verb's own parser, with a default --out under
benchmarks/results/ (the scripts print a table and write JSON)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results"


def run_verb(doc: str, register: Callable, verb: str, argv: list[str], default_out: Callable[[list[str]], Path]) -> int:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    register(parser.add_subparsers(dest="command"))
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv = [*argv, "--out", str(default_out(argv))]
    args = parser.parse_args([verb, *argv])
    return args.func(args)
