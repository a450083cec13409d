"""The task a model records (config key `bitdistill_task`) and how --task/--labels/--template combine with it."""

from __future__ import annotations

import json

import pytest

from bitdistill.data.task_flags import task_from_flags
from bitdistill.data.task_record import CONFIG_KEY, recorded_task, task_from_record, task_record
from bitdistill.data.tasks import get_task
from bitdistill.errors import BitDistillError


def _same(a, b) -> None:
    for field in ("name", "kind", "template", "label_words", "label_names", "text_columns", "text_pair_columns",
                  "label_columns"):  # fmt: skip
        assert getattr(a, field) == getattr(b, field), field


@pytest.mark.parametrize(
    "task",
    [
        get_task("sst2"),
        get_task("sst2", template="Review: {text}\nMood:", label_words=[" bad", " good"]),
        get_task("mnli"),
        get_task("custom", text_column="q", text_pair_column="a", label_column="y", label_words=[" no", " yes"],
                 template="Q: {text}\nA: {text_pair}\nOK?"),  # fmt: skip
        get_task("cnndm"),
    ],
    ids=["sst2", "sst2-overrides", "mnli-pair", "custom-pair", "summarization"],
)
def test_record_round_trips_through_json(task) -> None:
    record = json.loads(json.dumps(task_record(task)))
    _same(task_from_record(record, "x/config.json"), task)
    _same(recorded_task({CONFIG_KEY: record}, "x/config.json"), task)


def test_the_record_keeps_the_trained_strings_not_the_current_defaults() -> None:
    record = task_record(get_task("sst2"))
    record["template"] = "Old template: {text}\nAnswer:"  # what an older bitdistill trained with
    assert task_from_record(record, "m").template == "Old template: {text}\nAnswer:"


@pytest.mark.parametrize(
    "record, needle",
    [
        ("sst2", "is not a task record"),
        ({"template": "{text}"}, "is not a task record"),
        ({"name": "nope"}, "unknown task 'nope'"),
        ({"name": "sst2", "template": "no placeholder"}, "must contain {text}"),
        ({"name": "custom", "label_words": [" a"], "label_columns": ["y"]}, "text_column"),
        ({"name": "custom", "text_columns": 5}, "malformed"),
    ],
)
def test_bad_records_are_one_line_errors_naming_the_file(record, needle) -> None:
    with pytest.raises(BitDistillError) as err:
        recorded_task({CONFIG_KEY: record}, "packed/config.json")
    assert "packed/config.json" in str(err.value) and needle in str(err.value)
    assert recorded_task({}, "packed/config.json") is None


def test_flags_override_the_recorded_task() -> None:
    recorded = get_task("sst2", template="Review: {text}\nSentiment:")
    assert task_from_flags(None, recorded=recorded).template == "Review: {text}\nSentiment:"
    t = task_from_flags(None, labels="bad,good", recorded=recorded)
    assert t.label_words == [" bad", " good"] and t.template == recorded.template and t.name == "sst2"
    t = task_from_flags(None, template=r"Text: {text}\nLabel:", recorded=recorded)
    assert t.template == "Text: {text}\nLabel:" and t.label_words == recorded.label_words
    # --task wins over the record entirely
    assert task_from_flags("mnli", recorded=recorded).name == "mnli"


def test_flags_without_a_record() -> None:
    assert task_from_flags(None) is None
    t = task_from_flags(None, labels="no, yes", template="{text} / {text_pair}?")
    assert (t.name, t.label_words, t.text_pair_columns) == ("custom", [" no", " yes"], ("text_pair",))
    with pytest.raises(BitDistillError, match="records no task: give --task, or both --labels and --template"):
        task_from_flags(None, labels="a,b", where="m")
    with pytest.raises(BitDistillError, match="only"):
        task_from_flags(None, columns={"text_column": "x"}, recorded=get_task("sst2"), where="m")
    with pytest.raises(BitDistillError, match="summarization: classify scores label words"):
        task_from_flags("cnndm")
    assert task_from_flags("cnndm", classification=False).kind == "summarization"


def test_a_recorded_custom_task_takes_new_columns() -> None:
    recorded = get_task("custom", text_column="q", label_column="y", label_words=[" a", " b"], template="{text}")
    t = task_from_flags(None, columns={"text_column": "question"}, recorded=recorded)
    assert t.text_columns == ("question",) and t.label_columns == ("y",)


def test_serve_defaults_come_from_the_record_unless_flags_say_otherwise() -> None:
    from bitdistill.serve import ClassifyDefaults, defaults_from_task

    recorded = get_task("qnli")
    d = defaults_from_task(None, recorded=recorded)
    assert (d.labels, d.template, d.pair) == (recorded.label_words, recorded.template, True)
    assert defaults_from_task(None, labels="x,y", recorded=recorded).labels == [" x", " y"]
    assert defaults_from_task("sst2", recorded=recorded).template == get_task("sst2").template
    # a summarizer serves generation: its record gives no classify defaults (and is no error)
    assert defaults_from_task(None, recorded=get_task("cnndm")) == ClassifyDefaults()
    # without a record, one flag alone is a partial default a request completes
    assert defaults_from_task(None, labels="a,b") == ClassifyDefaults([" a", " b"], None, False)
