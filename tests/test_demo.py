"""`bitdistill demo`: the packaged demo recipe end to end (tiny model, tiny budgets) and its clear errors."""

from __future__ import annotations

import json

import pytest
import yaml

from bitdistill.cli import main
from bitdistill.cli.demo import comparison_section, demo_recipe_path
from tiny_pipeline import build_world

TINY = [
    "teacher.train.steps=3", "bitnet_sft.train.steps=3", "distill.train.steps=3", "train.warmup_steps=1",
    "continue_pretrain.corpus.tokens=256", "continue_pretrain.corpus.block_size=16", "train.progress=false",
    "task.eval_batch_size=8", "train.precision=fp32",
]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def test_packaged_recipe_is_the_three_row_pipeline():
    data = yaml.safe_load(demo_recipe_path().read_text())
    assert data["model"] == "smollm2-135m"
    assert data["eval"]["stages"] == ["teacher", "bitnet_sft", "distill"]
    assert data["continue_pretrain"]["corpus"]["sources"] == ["task:train"]


def test_demo_runs_pipeline_and_prints_table(world, tmp_path, capsys):
    out = tmp_path / "demo"
    sets = [a for s in TINY for a in ("--set", s)]
    code = main(
        ["demo", "--model", str(world["model"]), "--data", str(world["data"]), "--out", str(out), *sets]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for label in ("FP16-SFT", "BitNet-SFT", "BitDistill"):
        assert f"| {label} |" in printed
    results = json.loads((out / "results.json").read_text())
    assert {"teacher", "bitnet_sft", "continue_pretrain", "distill"} <= set(results["stages"])
    assert all("accuracy" in results["stages"][s]["eval"] for s in ("teacher", "bitnet_sft", "distill"))
    assert (out / "report.md").is_file()

    # Run again with one stage setting changed: refused before anything trains, naming the key and the
    # flag; with that flag only the changed stage retrains and the others are reused.
    changed = ["--set", "distill.train.steps=2"]
    argv = ["demo", "--model", str(world["model"]), "--data", str(world["data"]), "--out", str(out), *sets, *changed]
    stamp = (out / "teacher" / "stage.json").stat().st_mtime_ns
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "steps" in err and "--restart distill" in err and "Traceback" not in err
    assert main([*argv, "--restart", "distill"]) == 0
    assert json.loads((out / "results.json").read_text())["stages"]["distill"]["steps"] == 2
    assert (out / "teacher" / "stage.json").stat().st_mtime_ns == stamp  # reused, not retrained


def test_demo_without_data_says_what_to_pass(tmp_path, capsys):
    code = main(["demo", "--data", str(tmp_path / "nowhere")])
    assert code != 0
    err = capsys.readouterr().err
    assert "nowhere" in err and "train and dev files" in err and "--data" in err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_comparison_section_extracts_the_table():
    md = "# run\n\n## Comparison\n\n| a | b |\n|---|---|\n\nnote\n\n## Training\n\n| x |\n"
    assert comparison_section(md) == "| a | b |\n|---|---|\n\nnote"


def test_convert_only_reports_before_and_after(world, tmp_path, capsys):
    out = tmp_path / "conv"
    code = main(["demo", "--convert-only", "--model", str(world["model"]), "--data", str(world["data"]),
                 "--out", str(out), "--sentences", "8"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "full precision" in printed and "BitNet (stage 1 only)" in printed
    assert (out / "model" / "config.json").is_file()
