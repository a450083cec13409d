"""`bitdistill sft`: the BitNet-SFT baseline (stage-1 conversion + plain CE task fine-tuning)."""

from __future__ import annotations

import argparse

from ._stage_args import add_common, build_recipe, run_one


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sft", help="BitNet-SFT baseline: convert to BitNet and fine-tune on a task with CE",
        description="Stage-1 conversion (BitLinear + SubLN) then CE task fine-tuning, without distillation.",
    )  # fmt: skip
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_one(build_recipe(args, "bitnet_sft"), "bitnet_sft")
