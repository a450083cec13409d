"""The whole-run time left shown beside the demo's progress bars, against hand-computed sums."""

from __future__ import annotations

import pytest

from bitdistill.cli.demo import demo_recipe_path
from bitdistill.pipeline import load_recipe
from bitdistill.train import eta


@pytest.fixture
def recipe():
    sets = ["teacher.train.steps=10", "bitnet_sft.train.steps=20", "distill.train.steps=30",
            "train.batch_size=16", "continue_pretrain.corpus.tokens=4096", "continue_pretrain.corpus.block_size=128",
            "continue_pretrain.train.batch_size=8", "eval.stages=[teacher,distill]"]  # fmt: skip
    return load_recipe(demo_recipe_path(), sets)


def test_plan_counts_each_stage_and_eval(recipe):
    tracker = eta.plan(recipe, eval_examples=100)
    names = [(i.name, i.steps, i.per_step) for i in tracker.items]
    assert names == [
        ("teacher", 10, 16), ("bitnet_sft", 20, 16), ("continue_pretrain", 4, 8 * 128), ("distill", 30, 16),
        ("eval:teacher", 1, 100), ("eval:distill", 1, 100),
    ]  # fmt: skip


def test_time_left_is_measured_rate_times_remaining_work(recipe, capsys):
    tracker = eta.plan(recipe, eval_examples=100)
    with eta.track(tracker):
        postfix = eta.step("teacher", tokens=16 * 20, seconds=4.0)  # 20 tokens per example measured
    rate = 4.0 / (16 * 20)  # seconds per FP-training token
    f = eta.FACTORS
    work = (9 * 16 * 20 * f["teacher"] + 20 * 16 * 20 * f["bitnet_sft"] + 4 * 1024 * f["continue_pretrain"]
            + 30 * 16 * 20 * f["distill"] + 100 * 20 * (eta.EVAL_FACTOR["fp"] + eta.EVAL_FACTOR["bitnet"]))  # fmt: skip
    expected = rate * work + 5 * eta.OVERHEAD_S  # three stages and two evaluations not started
    assert tracker.remaining_seconds() == pytest.approx(expected)
    assert postfix == {"run_left": eta._clock(expected)}
    line = capsys.readouterr().err
    assert line.startswith("[bitdistill] teacher: step 1 took 4.0s; whole run: ~") and eta._clock(expected) in line


def test_later_stage_closes_earlier_ones_and_untracked_runs_show_nothing(recipe):
    tracker = eta.plan(recipe, eval_examples=100)
    with eta.track(tracker):
        eta.step("distill", tokens=16 * 20, seconds=8.0)  # teacher .. pretraining were done already
        assert [i.name for i in tracker.items if i.finished] == ["teacher", "bitnet_sft", "continue_pretrain"]
        assert eta.step("no-such-stage", 10, 1.0) == {}
    assert eta.step("teacher", 10, 1.0) == {}  # no run tracked: the loop's bar shows only its own numbers
    assert eta._clock(59.6) == "1:00" and eta._clock(3725) == "1:02:05"
