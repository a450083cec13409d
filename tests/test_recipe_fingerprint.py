"""Runs that cannot lie: a finished or checkpointed stage is reused only under the same fingerprint.

A tiny pipeline (3 steps per stage) runs once per module; each test then re-runs it with one change and
checks that the change is refused naming the differing keys, that settings which do not change weights
are accepted, and that --restart retrains exactly the named stages.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bitdistill.cli import main
from bitdistill.pipeline import load_recipe
from bitdistill.pipeline.fingerprint import FINGERPRINT_FILE, digest, read_fingerprint, stage_fingerprint
from bitdistill.pipeline.run import evaluate_stage
from tiny_pipeline import build_model_dir, build_world, write_tiny_recipe

STAGES = ("teacher", "bitnet_sft", "continue_pretrain", "distill")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def write_recipe(tmp: Path, world: dict[str, Path], ablations: dict | None = None) -> Path:
    return write_tiny_recipe(tmp, world, ablations, continue_pretrain__corpus__tokens=384)  # 3 steps


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
    """A finished run (template): each test copies it, so tests do not see each other's changes."""
    tmp = tmp_path_factory.mktemp("finished")
    recipe = write_recipe(tmp, world, {"LD only": {"distill.attention": False}})
    assert main(["run", str(recipe)]) == 0
    return tmp


@pytest.fixture
def run(finished, tmp_path, world) -> Path:
    """A copy of the finished run whose records point into the copy."""
    shutil.copytree(finished / "run", tmp_path / "run")
    for record in (tmp_path / "run").rglob("*.json"):
        st = record.stat()
        record.write_text(record.read_text().replace(str(finished / "run"), str(tmp_path / "run")))
        os.utime(record, ns=(st.st_atime_ns, st.st_mtime_ns))
    return write_recipe(tmp_path, world, {"LD only": {"distill.attention": False}})


def mtimes(out: Path) -> dict[str, int]:
    return {s: (out / s / "stage.json").stat().st_mtime_ns for s in STAGES}


def run_cli(recipe: Path, *args: str) -> list[str]:
    return ["run", str(recipe), *args]


def test_unchanged_run_is_skipped(run, capsys):
    out = run.parent / "run"
    before = mtimes(out)
    assert main(run_cli(run)) == 0
    err = capsys.readouterr().err
    assert all(f"{s}: done already" in err for s in STAGES)
    assert mtimes(out) == before


def test_another_model_is_refused_naming_it(run, world, tmp_path, capsys):
    other = build_model_dir(tmp_path / "other", seed=3)
    out = run.parent / "run"
    before = mtimes(out)
    capsys.readouterr()
    assert main(run_cli(run, "--set", f"model={other}")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{out / 'teacher'}: recipe changed since this stage ran: model {world['model']} -> {other}" in err
    # every stage trained from the model must be retrained, and the ablation row with them
    assert "--restart teacher,bitnet_sft,continue_pretrain,distill,ablations (or --restart all)" in err
    assert mtimes(out) == before
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == str(world["model"])  # results.json still names the model that trained it


def test_a_stage_setting_change_is_refused_naming_the_keys(run, capsys):
    out = run.parent / "run"
    code = main(run_cli(run, "--set", "distill.train.lr=1e-3", "--set", "distill.temperature=2"))
    assert code == 2
    err = capsys.readouterr().err
    assert (
        f"{out / 'distill'}: recipe changed since this stage ran: distill.temperature 5.0 -> 2.0, "
        "distill.train.lr 0.003 -> 0.001; rerun with --restart distill,ablations (or --restart all)"
    ) in err


@pytest.mark.parametrize(
    "sets",
    [
        ["train.log_every=7", "train.progress=true", "train.save_every=1", "train.keep_checkpoints=3"],
        ["train.eval_every=2", "task.eval_limit=8", "task.eval_batch_size=3", "output_dir={out}"],
    ],
)
def test_settings_that_do_not_change_weights_are_accepted(run, capsys, sets):
    out = run.parent / "run"
    before = mtimes(out)
    args = [x for s in sets for x in ("--set", s.format(out=out))]
    assert main(run_cli(run, *args)) == 0, capsys.readouterr().err
    assert mtimes(out) == before


def test_restart_retrains_only_the_named_stages(run, capsys):
    out = run.parent / "run"
    before = mtimes(out)
    old_eval = json.loads((out / "distill" / "eval.json").read_text())
    (out / "distill" / "notes.txt").write_text("mine")  # not a stage output: --restart must leave it
    assert main(run_cli(run, "--set", "distill.train.lr=1e-3", "--restart", "distill,ablations")) == 0
    after = mtimes(out)
    assert {s for s in STAGES if after[s] != before[s]} == {"distill"}
    assert read_fingerprint(out / "distill")["distill.train.lr"] == 0.001
    new_eval = json.loads((out / "distill" / "eval.json").read_text())
    assert new_eval["key"]["weights"] != old_eval["key"]["weights"]
    assert read_fingerprint(out / "ablations" / "ld-only" / "distill")["distill.train.lr"] == 0.001
    assert not list((out / "distill").glob(".restart-*"))
    assert (out / "distill" / "notes.txt").read_text() == "mine"
    # the new settings are now the recorded ones: an identical re-run skips everything
    capsys.readouterr()
    assert main(run_cli(run, "--set", "distill.train.lr=1e-3")) == 0
    assert "distill: done already" in capsys.readouterr().err


def test_upstream_change_invalidates_its_consumers(run, capsys):
    """A retrained teacher is another teacher: the distill stage that read the old one is out of date."""
    assert main(run_cli(run, "--set", "teacher.train.lr=1e-3", "--restart", "teacher")) == 2
    err = capsys.readouterr().err
    assert "distill: recipe changed since this stage ran: distill.teacher teacher stage" in err
    assert "--restart distill,ablations" in err


def test_resume_from_a_checkpoint_needs_the_same_fingerprint(run, capsys):
    out = run.parent / "run"
    (out / "distill" / "stage.json").unlink()  # as if killed after its last checkpoint
    assert main(run_cli(run, "--set", "distill.train.seed=5", "--only", "distill")) == 2
    err = capsys.readouterr().err
    assert f"{out / 'distill'}: recipe changed since this stage ran: seed 7 -> 5" in err
    assert main(run_cli(run, "--only", "distill")) == 0
    assert "distill: resuming from step 3" in capsys.readouterr().err


def test_a_stage_without_fingerprint_is_not_trusted(run, capsys):
    out = run.parent / "run"
    (out / "bitnet_sft" / FINGERPRINT_FILE).unlink()  # written by a bitdistill before fingerprints
    assert main(run_cli(run)) == 2
    err = capsys.readouterr().err
    assert "bitnet_sft: finished by a bitdistill that did not record stage fingerprints" in err
    assert "--restart bitnet_sft" in err


def test_ablation_rows_reuse_the_main_stages_with_their_own_fingerprints(run):
    out = run.parent / "run"
    row = out / "ablations" / "ld-only"
    assert not (row / "teacher").exists() and not (row / "continue_pretrain").exists()
    main_fp, row_fp = read_fingerprint(out / "distill"), read_fingerprint(row / "distill")
    assert row_fp["distill.attention"] is False and main_fp["distill.attention"] is True
    # both distill rows read the same teacher and stage-2 outputs: the main run's
    for key in ("distill.teacher", "distill.student"):
        assert row_fp[key] == main_fp[key]
    cpt = digest(read_fingerprint(out / "continue_pretrain"))
    assert main_fp["distill.student"] == f"continue_pretrain stage {cpt}"


def test_data_change_is_refused(run, world, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    with open(data / "train.tsv", "a") as f:
        f.write("a very good film .\t1\n")
    assert main(run_cli(run, "--set", f"task.path={data}")) == 2
    err = capsys.readouterr().err
    assert "teacher: recipe changed since this stage ran: task.data.train sha256:" in err
    assert f"task.path {world['data']} -> {data}" in err


def test_eval_cache_follows_the_weights(run):
    """eval.json is reused for the same weights only: another fingerprint recomputes the metrics."""
    out = run.parent / "run"
    recipe = load_recipe(run)
    cache = out / "distill" / "eval.json"
    cached = json.loads(cache.read_text())
    cached["metrics"]["accuracy"] = -1.0  # a sentinel only the cache can return
    cache.write_text(json.dumps(cached))
    assert evaluate_stage(recipe, "distill")["accuracy"] == -1.0
    fp = stage_fingerprint(recipe, "distill")
    fp["distill.train.lr"] = 1.0  # as if the stage had been retrained with other settings
    (out / "distill" / FINGERPRINT_FILE).write_text(json.dumps({"keys": fp}))
    assert 0.0 <= evaluate_stage(recipe, "distill")["accuracy"] <= 1.0
