"""`bitdistill report RUN_DIR`: the FP16-SFT / BitNet-SFT / BitDistill table, plots, report.md + report.json."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write report.md / report.json (comparison table, memory, plots) for a finished run",
        description="Reads RUN_DIR/results.json (from `bitdistill run`) and writes RUN_DIR/report.md, "
        "RUN_DIR/report.json and the PNG figures it links.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding results.json")
    p.add_argument(
        "--add", action="append", default=[], metavar="[LABEL=]RUN_DIR[:STAGE]",
        help="add a row from another run (an ablation), by default its distill stage; the label defaults "
        "to what that run left out (repeatable)",
    )  # fmt: skip
    p.add_argument("--layer", type=int, help="decoder block for the weight histograms (default: the middle)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=run)


def parse_add(item: str) -> tuple[str | None, Path, str]:
    label, sep, rest = item.partition("=")
    if not sep:
        label, rest = None, item
    path, _, stage = rest.rpartition(":") if ":" in rest else (rest, "", "distill")
    return label or None, Path(path), stage or "distill"


def run(args: argparse.Namespace) -> int:
    from ..report.run_report import REPORT_JSON, REPORT_MD, write_report

    extra = [parse_add(a) for a in args.add]
    report = write_report(args.run_dir, extra, plots=not args.no_plots, histogram_layer=args.layer)
    md = (Path(args.run_dir) / REPORT_MD).read_text()
    start = md.find("## Comparison")
    print(md[start : md.find("\n## ", start + 3)].strip() if start >= 0 else md)
    print(f"\nwrote {Path(args.run_dir) / REPORT_MD} and {REPORT_JSON}"
          + (f" with {', '.join(report['report']['plots'].values())}" if report["report"]["plots"] else ""))  # fmt: skip
    return 0
