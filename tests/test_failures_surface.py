"""Failures that used to be swallowed now reach the user: a failed report is recorded in results.json and
makes `bitdistill run` exit non-zero; a corrupt stage file stops the report instead of dropping a row; a
corrupt config.json is an error, not "this is not a packed model"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import test_recipe_lock
from bitdistill.cli import main
from bitdistill.errors import BitDistillError
from bitdistill.model.io import is_packed_dir
from bitdistill.pipeline import run as run_module
from bitdistill.report import write_report

# Fixtures shared with the lock tests: a tiny model, data and corpus, and a recipe file over them.
world, recipe = test_recipe_lock.world, test_recipe_lock.recipe


def test_a_failed_report_is_recorded_and_fails_the_run(recipe, tmp_path, monkeypatch, capsys):
    # The stages "ran" and evaluated, but left no stage directory: the real report cannot find its rows.
    def evaluated_nothing_on_disk(recipe, only, ablations, restart_flag=None):
        return {"recipe": "tiny", "stages": {"teacher": {"eval": {"accuracy": 0.5}}}}

    monkeypatch.setattr(run_module, "_execute", evaluated_nothing_on_disk)
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the report failed" in err and f"bitdistill report {tmp_path / 'run'}" in err
    assert "Traceback" not in err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "no finished stage" in results["report_error"]
    assert results["stages"]["teacher"]["eval"] == {"accuracy": 0.5}


def _run_with_teacher(run: Path) -> None:
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"stages": {"teacher": {"eval": {"accuracy": 0.9}}}}))
    (run / "bitnet_sft").mkdir()


@pytest.mark.parametrize(
    "stage_json, eval_json, bad",
    [
        ("{not json", None, "stage.json: corrupt"),
        ("[1, 2]", None, "stage.json: not a JSON object"),
        ('{"model_dir": "m"}', '["metrics"]', "eval.json: not a JSON object"),  # was an AttributeError
        ('{"model_dir": "m"}', "{", "eval.json: corrupt"),
    ],
)
def test_a_corrupt_stage_file_stops_the_report_instead_of_dropping_the_row(tmp_path, stage_json, eval_json, bad):
    run = tmp_path / "run"
    _run_with_teacher(run)
    (run / "bitnet_sft" / "stage.json").write_text(stage_json)
    if eval_json is not None:
        (run / "bitnet_sft" / "eval.json").write_text(eval_json)
    with pytest.raises(BitDistillError, match=bad) as info:
        write_report(run, plots=False)
    assert str(run / "bitnet_sft") in str(info.value)
    assert not (run / "report.md").exists()


def test_the_report_reads_a_sound_stage_directory(tmp_path):
    """The other side of the test above: the same layout with sound files gives the row."""
    run = tmp_path / "run"
    _run_with_teacher(run)
    (run / "bitnet_sft" / "stage.json").write_text('{"model_dir": "m"}')
    (run / "bitnet_sft" / "eval.json").write_text('{"metrics": {"accuracy": 0.75}}')
    rows = write_report(run, plots=False)["report"]["rows"]
    assert [(r["label"], r["metrics"]["accuracy"]) for r in rows] == [("FP16-SFT", 0.9), ("BitNet-SFT", 0.75)]


def test_a_corrupt_config_is_an_error_not_an_unpacked_model(world, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"packed": ')
    with pytest.raises(BitDistillError, match="config.json: not valid JSON"):
        is_packed_dir(model)
    assert main(["eval", str(model), "--data", str(world["data"]), "--limit", "2"]) == 2
    assert "config.json: not valid JSON" in capsys.readouterr().err
    (model / "config.json").write_text('{"packed": {"version": 1}}')
    assert is_packed_dir(model) and not is_packed_dir(tmp_path)


def test_a_corrupt_parquet_file_is_one_error_for_tasks_and_corpora(tmp_path):
    """pyarrow's own exception types are the ones turned into a user error (the readers catch only those)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bitdistill.data import iter_text
    from bitdistill.data.tasks import get_task

    bad = tmp_path / "dev.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(BitDistillError, match=f"{bad}: not a readable Parquet file"):
        get_task("sst2").load("dev", path=tmp_path)
    with pytest.raises(BitDistillError, match=f"{bad}: not a readable Parquet file"):
        list(iter_text([str(bad)]))
    pq.write_table(pa.table({"text": ["one document", "another"]}), tmp_path / "good.parquet")
    assert list(iter_text([str(tmp_path / "good.parquet")])) == ["one document", "another"]


def test_a_hub_id_the_cache_refuses_is_left_to_the_loader():
    from bitdistill.pipeline.modelinfo import hub_config

    assert hub_config("not a valid id") is None
