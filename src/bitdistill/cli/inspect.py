"""`bitdistill inspect DIR [--json]`: what a model directory holds."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show architecture, BitLinear/SubLN counts, ternary shares and sizes of a model directory",
    )
    p.add_argument("dir", metavar="DIR", help="a directory written by bitdistill (or any HF model dir)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model.hub import load_any
    from ..model.summary import format_summary, summarize

    model, _ = load_any(args.dir)
    info = summarize(model.eval(), args.dir)
    print(json.dumps(info, indent=2) if args.json else format_summary(info))
    return 0
