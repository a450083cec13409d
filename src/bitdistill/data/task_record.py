"""The task a model was fine-tuned on, recorded in its config so that `classify` and `serve` need no flags.

The task stages write the resolved task (name, template, label words, columns) under the config key
`bitdistill_task` of the model they save; `bitdistill pack` keeps the config, so the packed directory carries
it too (or records one given with `pack --task/--labels/--template`). The resolved strings are recorded, not
just the task's name, so a model keeps answering with the prompt it was trained on even if a later bitdistill
changes a built-in task's default template.
"""

from __future__ import annotations

from typing import Any

from ..errors import BitDistillError
from .tasks import Task, get_task

CONFIG_KEY = "bitdistill_task"


def task_record(task: Task) -> dict[str, Any]:
    """The JSON-able record of `task` (what `task_from_record` rebuilds it from)."""
    return {
        "name": task.name,
        "kind": task.kind,
        "template": task.template,
        "label_words": list(task.label_words),
        "label_names": list(task.label_names),
        "text_columns": list(task.text_columns),
        "text_pair_columns": list(task.text_pair_columns),
        "label_columns": list(task.label_columns),
    }


def task_from_record(record: Any, where: str) -> Task:
    """Rebuild a recorded task through the task registry's own validation; errors name `where`."""
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        raise BitDistillError(f'{where}: "{CONFIG_KEY}" is not a task record; re-pack with --task')
    try:
        if record["name"] == "custom":
            first = lambda key: (record.get(key) or [None])[0]  # noqa: E731
            return get_task(
                "custom", kind=record.get("kind"), template=record.get("template"),
                label_words=record.get("label_words") or None, label_names=record.get("label_names") or None,
                text_column=first("text_columns"), text_pair_column=first("text_pair_columns"),
                label_column=first("label_columns"),
            )  # fmt: skip
        return get_task(
            record["name"], template=record.get("template"), label_words=record.get("label_words") or None,
            label_names=record.get("label_names") or None,
        )  # fmt: skip
    except BitDistillError as err:
        raise BitDistillError(f'{where}: recorded "{CONFIG_KEY}": {err}') from None
    except (TypeError, IndexError, AttributeError):
        raise BitDistillError(f'{where}: "{CONFIG_KEY}" is malformed; re-pack with --task') from None


def recorded_task(config: dict[str, Any], where: str) -> Task | None:
    """The task recorded in a parsed config.json, or None when the model records none."""
    record = config.get(CONFIG_KEY)
    return None if record is None else task_from_record(record, where)


def record_task(model_config, task: Task) -> None:
    """Record `task` on a Hugging Face config (written by `save_pretrained` and kept by `pack`)."""
    setattr(model_config, CONFIG_KEY, task_record(task))
