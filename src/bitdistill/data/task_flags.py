"""The task a command scores with, from its --task/--labels/--template flags and the model's recorded task.

`classify`, `serve` and `pack` read these flags the same way: a named task (with the flags as overrides), else
the task the model records (bitdistill.data.task_record; the flags still override), else a task built from
--labels and --template alone. Templates and label words go through the task registry's own validation.
"""

from __future__ import annotations

import re

from ..errors import BitDistillError
from .task_record import task_from_record, task_record
from .tasks import Task, get_task


def unescape(text: str) -> str:
    """`\\n`, `\\t` and `\\\\` typed in a shell argument as the characters they name (the docs' templates
    write "Review: {text}\\nSentiment:", which a shell passes with a literal backslash)."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def label_continuations(words: list[str]) -> list[str]:
    """Label words are continuations of the prompt: a leading space is added where missing; empty ones go."""
    return [w if w.startswith(" ") else " " + w for w in words if w.strip()]


def parse_labels(labels: str | None) -> list[str] | None:
    """--labels 'negative,positive' as label continuations (None when not given)."""
    return label_continuations([x.strip() for x in labels.split(",")]) if labels else None


def task_from_flags(
    name: str | None,
    labels: str | None = None,
    template: str | None = None,
    columns: dict[str, str | None] | None = None,
    recorded: Task | None = None,
    where: str = "the model",
    classification: bool = True,
) -> Task | None:
    """The task the flags (and the recorded task) describe; None when they describe none. With
    `classification`, a task of another kind is an error (scoring needs label words)."""
    words = parse_labels(labels)
    tmpl = unescape(template) if template else None
    columns = {k: v for k, v in (columns or {}).items() if v is not None}
    if name:
        task = get_task(name, label_words=words, template=tmpl, **columns)
    elif recorded is not None:
        if columns and recorded.name != "custom":
            raise BitDistillError(
                f"{where} records task {recorded.name!r}: --*-column flags apply to custom tasks only"
            )
        record = task_record(recorded)
        record.update({k: v for k, v in (("label_words", words), ("template", tmpl)) if v is not None})
        record.update({f"{k}s": [v] for k, v in columns.items()})  # text_column -> text_columns, ...
        task = task_from_record(record, where)
    elif words and tmpl:
        pair = "text_pair" if "{text_pair}" in tmpl else None
        task = get_task("custom", text_column="text", text_pair_column=pair, label_column="label",
                        label_words=words, template=tmpl)  # fmt: skip
        task.load = None  # only --text: there are no files to read columns from
    elif words or tmpl:
        raise BitDistillError(
            f"{where} records no task: give --task, or both --labels and --template (with {{text}})"
        )
    else:
        return None
    if classification and task.kind != "classification":
        raise BitDistillError(
            f"task {task.name!r} is {task.kind}: classify scores label words; evaluate it with "
            f"`bitdistill eval DIR --task {task.name}`"
        )
    return task
