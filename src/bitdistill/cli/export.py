"""`bitdistill export DIR --format gguf --out model.gguf`: a converted model as a llama.cpp GGUF file."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a converted model for deployment (GGUF for llama.cpp)",
        description="Write a bitdistill model directory as GGUF: ternary linears in TQ2_0/TQ1_0 with the "
        "model's weight scale in every block (exact up to fp16 rounding of the scale), rows whose width is "
        "not a multiple of 256 as exact Q4_0, embeddings/head in --head. Models converted with --no-subln "
        "run in stock llama.cpp (llama/qwen2/qwen3); SubLN models use llama.cpp's `bitnet` architecture. "
        "See docs/export.md.",
    )
    p.add_argument("model", metavar="DIR", help="directory written by `bitdistill convert` or training")
    p.add_argument("--format", choices=("gguf",), default="gguf", help="output format (gguf)")
    p.add_argument("--out", required=True, help="output file, e.g. model.gguf (written atomically)")
    # export.gguf_blocks' TERNARY_TYPES (less the API-only f16) and HEAD_TYPES, spelled out so that parsing
    # does not import gguf (tests/test_cli_choices.py keeps them equal)
    p.add_argument("--type", dest="ttype", choices=("tq2_0", "tq1_0"), default="tq2_0",
                   help="ternary block type: tq2_0 (2.06 bits/weight, fastest) or tq1_0 (1.69)")  # fmt: skip
    p.add_argument("--head", choices=("q8_0", "q4_0", "f16"), default="q8_0",
                   help="type of the token embedding / LM head (default q8_0)")  # fmt: skip
    p.add_argument("--allow-fallback", action="store_true",
                   help="store tensors whose scale varies inside a 256-block (group granularity) as exact "
                   "Q4_0/F16 instead of refusing")  # fmt: skip
    p.add_argument("--tokenizer-pre", default=None, metavar="NAME",
                   help="llama.cpp pre-tokenizer name when it cannot be detected (gpt-2, smollm, llama-bpe, qwen2)")  # fmt: skip
    p.add_argument("--name", default=None, help="general.name in the file (default: the output file's stem)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_directory

    start = time.perf_counter()
    report = export_directory(
        args.model,
        args.out,
        ttype=args.ttype,
        head=args.head,
        allow_fallback=args.allow_fallback,
        tokenizer_pre=args.tokenizer_pre,
        name=args.name,
    )
    types = ", ".join(f"{n} x{k}" for k, n in sorted(report.tensor_types.items()))
    print(f"architecture  {report.arch}")
    print(f"tensors       {types}")
    if report.fallbacks:
        reasons: dict[str, int] = {}
        for line in report.fallbacks:
            reason = line.split(": ", 1)[1]
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, n in sorted(reasons.items()):
            print(f"fallback      {n} tensor(s) as {reason}")
    tok = report.tokenizer
    print(f"tokenizer     gpt2 BPE, pre={tok['pre']}, {tok['tokens']} tokens, {tok['merges']} merges")
    for note in report.notes:
        print(f"note          {note}")
    print(f"wrote {report.path} ({report.bytes / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f}s")
    return 0
