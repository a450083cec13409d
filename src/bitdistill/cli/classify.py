"""`bitdistill classify PACKED --task sst2`: label-word classification on the native CPU runtime."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._threads import check_threads
from ..data.task_flags import task_from_flags
from ..errors import BitDistillError
from ._kv_dtype import add_kv_dtype


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify text with a packed model by scoring the task's label words (native CPU runtime)",
        description="Score each label word's log-likelihood after the task prompt (as training/eval do) and "
        "predict the best. Input: --text for one example, or a task's data (--data, a file/directory; "
        "without it the task's hub dataset). Reports accuracy when labels are present.",
    )
    p.add_argument("packed", help="packed model directory (bitdistill pack --out)")
    p.add_argument("--task", default=None, help="task name (sst2, mnli, qnli, custom; default: the task the "
                   "packed model records, as models trained by bitdistill do)")  # fmt: skip
    p.add_argument("--data", default=None, help="data file or directory (default: the task's hub dataset)")
    p.add_argument("--split", default="dev")
    p.add_argument("--limit", type=int, default=None, help="first N examples only")
    p.add_argument("--text", default=None, help="classify this one text instead of a dataset")
    p.add_argument("--text-pair", default=None, help="second text for pair tasks (with --text)")
    p.add_argument("--labels", default=None, help="comma-separated label words, e.g. ' negative, positive' "
                   "(overrides the task's; needed when there is no --task and the model records none)")  # fmt: skip
    p.add_argument("--template", default=None, help="prompt template with {text} (and {text_pair}); \\n and "
                   "\\t in it are read as a newline and a tab")  # fmt: skip
    p.add_argument("--text-column", default=None, help="--task custom: the column holding the text")
    p.add_argument(
        "--text-pair-column", default=None, help="--task custom: the column holding the second text"
    )
    p.add_argument("--label-column", default=None, help="--task custom: the column holding the label")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="prompts are scored many per forward, up to this many tokens per batch (default "
                   "512; padding-free, so results do not depend on it)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None)
    add_kv_dtype(p)
    p.add_argument("--out", default=None, help="write per-example predictions as JSON lines here")
    p.set_defaults(func=run)


def _task(args, recorded):
    """The task to score: --task (with overrides), else the one the packed model records, else one built
    from --labels and --template alone."""
    columns = {"text_column": args.text_column, "text_pair_column": args.text_pair_column,
               "label_column": args.label_column}  # fmt: skip
    task = task_from_flags(args.task, args.labels, args.template, columns, recorded, where=args.packed)
    if task is None:
        raise BitDistillError(
            f"{args.packed} records no task: give --task, or both --labels and --template (with {{text}}); "
            "models trained by bitdistill record theirs"
        )
    return task


def run(args: argparse.Namespace) -> int:
    from ..data.task_record import recorded_task
    from ..data.tasks import render
    from ..runtime.engine import load, load_tokenizer
    from ..runtime.scoring import BATCH_TOKENS, check_words, iter_label_word_scores, score_label_words

    for flag in ("limit", "max_length", "batch_tokens"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise BitDistillError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    threads = None if args.threads is None else check_threads(args.threads)
    engine = load(args.packed, threads=threads, kv_dtype=args.kv_dtype)  # before the tokenizer: a wrong path is named as such
    recorded = recorded_task(engine.packed.config, args.packed)
    task = _task(args, recorded)
    if args.task is None and recorded is not None:
        print(f"task: {task.name}, the one {args.packed} records", file=sys.stderr)
    tok = load_tokenizer(args.packed)
    words = list(task.label_words)
    check_words(tok, words)
    if args.text is not None:
        pair = (args.text_pair or "").strip() if task.text_pair_columns else None
        prompt, _ = render(task.template, args.text.strip(), pair)
        scores = score_label_words(engine, tok, prompt, words, args.max_length)
        best = int(scores.argmax())
        for w, s in zip(words, scores, strict=True):
            print(f"{w.strip():>16s}  {s:10.4f}{'  <-' if w == words[best] else ''}")
        return 0
    if task.load is None:
        raise BitDistillError(
            "--data needs --task (use --task custom with --text-column, --label-column, --labels and "
            "--template for own files)"
        )
    examples = task.load(args.split, args.data, limit=args.limit)
    if not examples:
        raise BitDistillError(f"no examples in split {args.split!r}")
    rows, correct, labelled = [], 0, 0
    batch = args.batch_tokens or BATCH_TOKENS
    scored = iter_label_word_scores(
        engine, tok, [ex.prompt for ex in examples], words, args.max_length, batch
    )
    try:
        from tqdm import tqdm

        scored = tqdm(scored, total=len(examples), desc="classify", unit="ex", file=sys.stderr,
                      disable=not sys.stderr.isatty())  # fmt: skip
    except ImportError:
        pass
    for ex, scores in zip(examples, scored, strict=True):
        pred = int(scores.argmax())
        rows.append({"label": ex.label, "pred": pred, "scores": [round(float(s), 6) for s in scores]})
        if ex.label is not None:
            labelled += 1
            correct += int(pred == ex.label)
    print(f"{len(examples)} examples classified with {Path(args.packed).name}")
    if labelled:
        print(f"accuracy: {correct / labelled:.4f} ({correct}/{labelled})")
    if args.out:
        from .._fs import atomic_file

        with atomic_file(args.out) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0
