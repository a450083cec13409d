"""`bitdistill eval DIR --task T`: metrics of any model directory on a task's dev (or other) split."""

from __future__ import annotations

import argparse
import json

from ..errors import BitDistillError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model directory (FP, BitNet, packed) on a task: accuracy/macro-F1 or ROUGE/BLEU",
        description="Classification tasks are scored by label-word log-likelihood (accuracy, macro-F1); "
        "summarization tasks generate (greedy or beam) and score ROUGE-1/2/L/Lsum and BLEU.",
    )
    p.add_argument("dir", metavar="DIR", help="model directory (bitdistill, HF or packed), .gguf or hub id")
    p.add_argument("--task", default="sst2", help="sst2, mnli, qnli, cnndm or custom (default sst2)")
    p.add_argument("--data", help="local data: a directory of {split}.tsv/.jsonl/.csv/.parquet or one file")
    p.add_argument("--split", default="dev", help="split to evaluate (default dev)")
    p.add_argument("--limit", type=int, help="evaluate the first N rows only")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512, help="tokens per sequence (prompt is shortened)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="summarization: tokens to generate")
    p.add_argument("--beams", type=int, default=1, help="summarization: beam width (1 = greedy)")
    p.add_argument(
        "--task-option", action="append", default=[], metavar="KEY=VALUE",
        help="task option, e.g. text_column=review label_words=' bad',' good' (custom task; repeatable)",
    )  # fmt: skip
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, help="CPU threads (torch, or the native runtime for packed dirs)")
    p.add_argument("--json", metavar="OUT", help="write the full result (with per-example predictions) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_task_options(items: list[str]) -> dict:
    from ..data.task_flags import unescape

    opts: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BitDistillError(f"--task-option {item!r}: expected KEY=VALUE, e.g. text_column=review")
        if key in ("label_words", "label_names"):
            opts[key] = [w for w in value.split(",")]
        else:
            opts[key] = unescape(value) if key == "template" else value
    return opts


def check_device(device: str) -> None:
    """A one-line error for a device torch does not know or this machine does not have."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BitDistillError(f"--device {device!r}: not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BitDistillError(f"--device {device!r}: no CUDA GPU is available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise BitDistillError(f"--device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise BitDistillError(f"--device {device!r}: evaluation runs on cpu, cuda or mps")


def run(args: argparse.Namespace) -> int:
    from .._fs import atomic_write_text
    from .._threads import check_threads
    from ..eval.evaluate import evaluate_dir

    for flag in ("batch_size", "max_length", "max_new_tokens", "beams"):
        if getattr(args, flag) < 1:
            raise BitDistillError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise BitDistillError(f"--limit {args.limit}: must be at least 1 (omit it for the whole split)")
    if args.threads is not None:
        import torch

        args.threads = check_threads(args.threads)
        torch.set_num_threads(args.threads)  # on a shared machine 1 thread avoids OpenMP barrier stalls
    if args.device is not None:
        check_device(args.device)

    result = evaluate_dir(
        args.dir, args.task, data=args.data, split=args.split, limit=args.limit,
        task_options=parse_task_options(args.task_option), device=args.device, threads=args.threads,
        batch_size=args.batch_size, max_length=args.max_length, max_new_tokens=args.max_new_tokens,
        num_beams=args.beams, progress=not args.no_progress, keep_predictions=bool(args.json),
    )  # fmt: skip
    m = result["metrics"]
    shown = ", ".join(f"{k}={v * 100:.2f}" for k, v in m.items() if k != "n" and isinstance(v, float))
    print(f"{args.dir}: {result['task']} {args.split} (n={m['n']}): {shown}  [{result['seconds']:.1f}s]")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
