"""`bitdistill distill`: distil a task teacher into a BitNet student (CE + λ·LD + γ·AD)."""

from __future__ import annotations

import argparse

from ._stage_args import add_common, build_recipe, run_one


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill", help="distil a fine-tuned teacher into a BitNet student on a task (stage 3)",
        description="L = CE + lambda * tau^2 * KL(teacher || student) + gamma * L_AD (attention relations). "
        "Defaults are the paper's: tau=5; lambda=10, gamma=1e5 (classification); 1, 1e3 (summarization).",
    )  # fmt: skip
    add_common(p)
    p.add_argument("--teacher", required=False, help="the fine-tuned teacher directory")
    p.add_argument("--student", help="the BitNet student directory (e.g. a pretrain output); default: "
                   "--model converted to BitNet")  # fmt: skip
    p.add_argument("--temperature", type=float)
    p.add_argument("--lambda-logits", type=float)
    p.add_argument("--gamma-attention", type=float)
    p.add_argument(
        "--student-layer",
        type=_layer,
        help="layer for attention distillation (negative from the end) or auto",
    )
    p.add_argument("--teacher-layer", type=int)
    p.add_argument("--relation-heads", type=int)
    p.add_argument("--no-logits", action="store_true", help="ablation: attention distillation only")
    p.add_argument("--no-attention", action="store_true", help="ablation: logits distillation only")
    p.set_defaults(func=run)


def _layer(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer index or auto, got {value!r}") from None


def run(args: argparse.Namespace) -> int:
    extra = {
        "distill.teacher": args.teacher,
        "distill.student": args.student,
        "distill.temperature": args.temperature,
        "distill.lambda_logits": args.lambda_logits,
        "distill.gamma_attention": args.gamma_attention,
        "distill.student_layer": args.student_layer,
        "distill.teacher_layer": args.teacher_layer,
        "distill.relation_heads": args.relation_heads,
        "distill.logits": False if args.no_logits else None,
        "distill.attention": False if args.no_attention else None,
    }
    return run_one(build_recipe(args, "distill", extra), "distill")
