"""`bitdistill teacher`: fine-tune the full-precision teacher on a task (FP16-SFT in the paper)."""

from __future__ import annotations

import argparse

from ._stage_args import add_common, build_recipe, run_one


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "teacher", help="fine-tune the full-precision teacher on a task",
        description="Full-precision task fine-tuning (CE on target tokens). Resumes from --out if interrupted.",
    )  # fmt: skip
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_one(build_recipe(args, "teacher"), "teacher")
