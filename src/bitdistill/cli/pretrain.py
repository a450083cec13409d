"""`bitdistill pretrain`: continued pre-training of the stage-1 BitNet model on a text corpus."""

from __future__ import annotations

import argparse

from ._stage_args import add_common, build_recipe, run_one


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain", help="continued pre-training of the BitNet model on text (stage 2)",
        description="Convert the model to BitNet and train it with next-token loss on packed text blocks "
        "until the token budget is spent.",
    )  # fmt: skip
    add_common(p, task=False)
    p.add_argument("--corpus", action="append", help="text source: .txt/.jsonl/.parquet, directory, glob, "
                   "or hub:name[:config]:split (repeatable)")  # fmt: skip
    p.add_argument("--tokens", help="token budget, e.g. 2M")
    p.add_argument("--block-size", type=int)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    extra = {
        "continue_pretrain.corpus.sources": args.corpus,
        "continue_pretrain.corpus.tokens": args.tokens,
        "continue_pretrain.corpus.block_size": args.block_size,
    }
    return run_one(build_recipe(args, "continue_pretrain", extra), "continue_pretrain")
