"""`bitdistill convert MODEL --out DIR`: stage 1 (BitLinear + SubLN) on a HF dir, GGUF file or hub id."""

from __future__ import annotations

import argparse
import time

from ..config.choices import GRANULARITIES, SUBLN_MODES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a full-precision model to BitNet (BitLinear + SubLN) and save it",
        description="Stage 1 of BitDistill: every decoder-block linear becomes a BitLinear (ternary weights, "
        "int8 activations) and a SubLN is inserted before o_proj and down_proj. MODEL is a local HF "
        "directory, a .gguf file, a hub id, or 'smollm2-135m' (the embedded default).",
    )
    p.add_argument("model", metavar="MODEL", help="HF directory, .gguf file, hub id, or smollm2-135m")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument(
        "--subln", choices=SUBLN_MODES, default="o_down",
        help="where RMSNorms go: o_down = before o_proj/down_proj (the paper's SubLN, llama.cpp-compatible), "
        "all = before every BitLinear (the authors' code, the recipe default), none",
    )  # fmt: skip
    p.add_argument("--no-subln", dest="subln", action="store_const", const="none", help="same as --subln none")
    p.add_argument("--granularity", choices=GRANULARITIES, default="tensor", help="weight scale granularity")
    p.add_argument("--group-size", type=int, default=128, help="columns per scale with --granularity group")
    p.add_argument(
        "--fp-activations", dest="quantize_activations", action="store_false",
        help="keep activations in floating point (weights-only ternary; for ablations)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model import load_pretrained, save, to_bitnet
    from ..model.summary import format_summary, summarize

    start = time.perf_counter()
    model, tokenizer = load_pretrained(args.model)
    to_bitnet(
        model,
        subln=args.subln,
        granularity=args.granularity,
        group_size=args.group_size,
        quantize_activations=args.quantize_activations,
    )
    save(model, args.out, tokenizer=tokenizer)
    print(format_summary(summarize(model.eval(), args.out)))
    print(f"converted {args.model} -> {args.out} in {time.perf_counter() - start:.1f}s")
    return 0
