"""`bitdistill classify PACKED --task sst2`: label-word classification on the native CPU runtime."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify text with a packed model by scoring the task's label words (native CPU runtime)",
        description="Score each label word's log-likelihood after the task prompt (as training/eval do) and "
        "predict the best. Input: --text for one example, or a task's data (--data, a file/directory; "
        "without it the task's hub dataset). Reports accuracy when labels are present.",
    )
    p.add_argument("packed", help="packed model directory (bitdistill pack --out)")
    p.add_argument("--task", default=None, help="task name (sst2, mnli, qnli, custom)")
    p.add_argument("--data", default=None, help="data file or directory (default: the task's hub dataset)")
    p.add_argument("--split", default="dev")
    p.add_argument("--limit", type=int, default=None, help="first N examples only")
    p.add_argument("--text", default=None, help="classify this one text instead of a dataset")
    p.add_argument("--text-pair", default=None, help="second text for pair tasks (with --text)")
    p.add_argument("--labels", default=None, help="comma-separated label words, e.g. ' negative, positive' "
                   "(overrides the task's; needed without --task)")  # fmt: skip
    p.add_argument("--template", default=None, help="prompt template with {text} (and {text_pair})")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write per-example predictions as JSON lines here")
    p.set_defaults(func=run)


def _task(args):
    from ..errors import BitDistillError

    labels = None
    if args.labels:
        labels = [w if w.startswith(" ") else " " + w for w in (x.strip() for x in args.labels.split(","))]
        labels = [w for w in labels if w.strip()]
    try:
        from ..data.tasks import get_task
    except ImportError:
        get_task = None
    if args.task and get_task is not None:
        opts = {"label_words": labels, "template": args.template}
        return get_task(args.task, **{k: v for k, v in opts.items() if v is not None})
    if not (labels and args.template):
        raise BitDistillError("give --task, or both --labels and --template (with {text})")
    from types import SimpleNamespace

    return SimpleNamespace(name="custom", template=args.template, label_words=labels, load=None)


def run(args: argparse.Namespace) -> int:
    from ..errors import BitDistillError
    from ..runtime.engine import load, load_tokenizer
    from ..runtime.scoring import score_label_words

    task = _task(args)
    tok = load_tokenizer(args.packed)
    engine = load(args.packed, threads=args.threads)
    words = list(task.label_words)
    if args.text is not None:
        prompt = task.template.format(text=args.text.strip(), text_pair=(args.text_pair or "").strip())
        scores = score_label_words(engine, tok, prompt, words, args.max_length)
        best = int(scores.argmax())
        for w, s in zip(words, scores, strict=True):
            print(f"{w.strip():>16s}  {s:10.4f}{'  <-' if w == words[best] else ''}")
        return 0
    if task.load is None:
        raise BitDistillError(
            "--data needs --task (use --task custom with --labels/--template for own files)"
        )
    examples = task.load(args.split, args.data, limit=args.limit)
    if not examples:
        raise BitDistillError(f"no examples in split {args.split!r}")
    rows, correct, labelled = [], 0, 0
    try:
        from tqdm import tqdm

        it = tqdm(examples, desc="classify", unit="ex", file=sys.stderr, disable=not sys.stderr.isatty())
    except ImportError:
        it = examples
    for ex in it:
        scores = score_label_words(engine, tok, ex.prompt, words, args.max_length)
        pred = int(scores.argmax())
        rows.append({"label": ex.label, "pred": pred, "scores": [round(float(s), 6) for s in scores]})
        if ex.label is not None:
            labelled += 1
            correct += int(pred == ex.label)
    print(f"{len(examples)} examples classified with {Path(args.packed).name}")
    if labelled:
        print(f"accuracy: {correct / labelled:.4f} ({correct}/{labelled})")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, out)
    return 0
