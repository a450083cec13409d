"""`bitdistill pack DIR --out PACKED`: write a packed ternary model for the native CPU runtime."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.task_record import CONFIG_KEY
from ..errors import BitDistillError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pack",
        help="pack a BitNet model into 2-bit or 1.58-bit ternary weights for the CPU runtime",
        description="Pack a converted/trained BitNet model directory (or, with --convert, any full-precision "
        "model) into a directory the native runtime loads: ternary linears at 2 or 1.58 bits per weight, "
        "embeddings/head in the chosen dtype, norms as is, tokenizer copied.",
    )
    p.add_argument("model", help="BitNet model directory (bitdistill convert/train output), or with --convert "
                   "any model spec: HF directory, .gguf file, 'smollm2-135m'")  # fmt: skip
    p.add_argument("--out", required=True, help="output directory (replaced atomically)")
    p.add_argument("--bits", choices=["2", "1.58"], default="2", help="2: 4 weights/byte; 1.58: 5 per byte")
    # runtime.dense_dtypes.DENSE_DTYPES spelled out: importing the runtime here would slow every command's
    # start by ~0.3 s (tests/test_cli_choices.py keeps the two equal)
    p.add_argument("--head-dtype", choices=["int8", "q4", "fp16", "bf16", "fp32"], default="int8",
                   help="LM head dtype: int8 per row (default), q4 (4-bit, a scale per 64 columns, like "
                   "llama.cpp Q4_0: half the bytes of int8, fastest decode, least exact), fp16/bf16/fp32")  # fmt: skip
    p.add_argument("--embed-dtype", choices=["int8", "q4", "fp16", "bf16", "fp32"], default=None,
                   help="embedding dtype (default: same as the head, one shared copy when tied)")  # fmt: skip
    p.add_argument("--convert", action="store_true",
                   help="the model is full precision: ternarize it as is (no SubLN, no training) before packing")  # fmt: skip
    p.add_argument("--task", default=None, help="record this task (sst2, mnli, ...) in the packed model for "
                   "classify/serve; default: the task the model records (bitdistill's task stages record it)")  # fmt: skip
    p.add_argument("--labels", default=None, help="record these label words (comma-separated; overrides the "
                   "task's)")  # fmt: skip
    p.add_argument("--template", default=None, help="record this prompt template with {text} (overrides the "
                   "task's)")  # fmt: skip
    p.set_defaults(func=run)


def record_flags(config, args: argparse.Namespace) -> None:
    """Record the task --task/--labels/--template describe (over the model's own record) on its config."""
    from ..data.task_flags import task_from_flags
    from ..data.task_record import record_task, task_from_record

    record = getattr(config, CONFIG_KEY, None)
    recorded = task_from_record(record, args.model) if record is not None else None
    task = task_from_flags(args.task, args.labels, args.template, recorded=recorded, where=args.model,
                           classification=False)  # fmt: skip
    if task is not None:
        record_task(config, task)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..model.convert import is_bitnet, to_bitnet
    from ..model.hub import load_any
    from ..runtime.pack_writer import pack_model
    from ..runtime.packed import load_packed

    model, tok = load_any(args.model)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BitDistillError(
                f"{args.model}: {name} holds NaN/inf values (a diverged training run?); pack a healthy "
                "checkpoint instead"
            )
    if not is_bitnet(model):
        if not args.convert:
            raise BitDistillError(
                f"{args.model}: a full-precision model; pack a BitNet model (bitdistill convert/train output) "
                "or add --convert to ternarize this one as is (quality drops without distillation)"
            )
        to_bitnet(model, subln=False)
    model.eval()
    record_flags(model.config, args)
    out = pack_model(model, args.out, bits=args.bits, head_dtype=args.head_dtype, embed_dtype=args.embed_dtype,
                     tokenizer=tok)  # fmt: skip
    pm = load_packed(out)  # validates what was written
    arch = pm.arch
    fp16 = arch["linear_params"] * 2
    size = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file())
    print(
        f"packed {arch['family']} ({arch['n_layers']} layers) -> {out}\n"
        f"  linear weights: {arch['linear_bytes_on_disk'] / 2**20:.1f} MiB at {arch['bits']} bits "
        f"({fp16 / arch['linear_bytes_on_disk']:.2f}x smaller than fp16)\n"
        f"  head/embeddings: {arch['head_dtype']}/{arch['embed_dtype']}{' (tied)' if arch['tied'] else ''}; "
        f"directory total {size / 2**20:.1f} MiB",
        file=sys.stdout,
    )
    task = getattr(model.config, CONFIG_KEY, None)
    print(f"  task: {task['name']} (classify and serve use it by default)" if task else
          "  task: none recorded (classify/serve need --task; pack --task records one)")  # fmt: skip
    if tok is None:
        print("  note: no tokenizer found; `generate` needs one (token ids still work via the Python API)")
    return 0
