"""BITDISTILL_* settings are read in one place (bitdistill.env), and the training loop's crash-test hook is
an argument: it sees every step and every checkpoint write, and the environment is not read per step."""

from __future__ import annotations

import pytest

from bitdistill.env import Env, read_env
from bitdistill.train import ShuffledBatches, train
from test_train_loop import collate, config, dataset, lm_loss, tiny_model


def test_read_env_parses_every_setting():
    env = read_env({"BITDISTILL_THREADS": " 3 ", "BITDISTILL_FAULT": "sft:step:2,,sft:save:3",
                    "BITDISTILL_API_KEY": "k", "OTHER": "x"})  # fmt: skip
    assert env == Env(threads="3", fault_points=frozenset({"sft:step:2", "sft:save:3"}), api_key="k")
    assert read_env({}) == Env() and read_env({"BITDISTILL_THREADS": "  ", "BITDISTILL_API_KEY": ""}) == Env()


def test_the_fault_hook_sees_every_step_and_checkpoint(tmp_path, monkeypatch):
    points: list[str] = []
    batches = ShuffledBatches(dataset(), 4, collate, seed=1)
    # Set after the hook is given: a loop that still read the environment would kill this process.
    monkeypatch.setenv("BITDISTILL_FAULT", "t:step:1,t:save:3")
    train(tiny_model(), batches, lm_loss, config(steps=5, save_every=3), tmp_path, desc="t", fault=points.append)
    # Checkpoints at step 3 (save_every) and 5 (the end); the save point fires before the step's next one.
    assert points == ["t:step:1", "t:step:2", "t:step:3", "t:save:3", "t:step:4", "t:step:5", "t:save:5"]


@pytest.mark.parametrize("points", ["", "other:step:1"])
def test_without_a_hook_the_loop_runs_through_unlisted_points(tmp_path, monkeypatch, points):
    monkeypatch.setenv("BITDISTILL_FAULT", points)
    batches = ShuffledBatches(dataset(), 4, collate, seed=1)
    result = train(tiny_model(), batches, lm_loss, config(steps=2), tmp_path, desc="t")
    assert result.steps == 2
