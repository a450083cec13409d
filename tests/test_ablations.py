"""Ablation rows: recipe variants that reuse the main run's teacher and stage 2 and land in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bitdistill import load_recipe, run_recipe
from bitdistill.errors import BitDistillError
from bitdistill.pipeline.ablations import slug, variant
from tiny_pipeline import build_world, write_tiny_recipe

ABLATIONS = {
    "LD only": {"distill.attention": False},
    "w/o continued pre-training": {"continue_pretrain.enabled": False},
    "longer stage 2": {"continue_pretrain.corpus.tokens": 2048},
    "SubLN": {"bitnet.subln": "o_down"},
}


def recipe_file(tmp_path: Path, world: dict[str, Path], ablations: dict) -> Path:
    return write_tiny_recipe(tmp_path, world, ablations, train__steps=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def test_slug_names_directories():
    assert slug("w/o continued pre-training") == "w-o-continued-pre-training"
    assert slug("LD only") == "ld-only"


def test_variants_reuse_teacher_and_stage2_only_when_unchanged(world, tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, world, ABLATIONS))
    ld = variant(recipe, "LD only")
    assert ld.out == recipe.out / "ablations" / "ld-only"
    assert ld.stage_dir("teacher") == recipe.stage_dir("teacher")
    assert ld.stage_dir("continue_pretrain") == recipe.stage_dir("continue_pretrain")
    assert ld.distill.attention is False and ld.bitnet_sft.enabled is False
    assert ld.eval.stages == ["distill"]
    no_cpt = variant(recipe, "w/o continued pre-training")
    assert no_cpt.continue_pretrain.enabled is False
    longer = variant(recipe, "longer stage 2")  # its own stage 2: the corpus budget differs
    assert longer.stage_dir("continue_pretrain") == longer.out / "continue_pretrain"
    assert longer.continue_pretrain.corpus.tokens == 2048
    # another stage-1 conversion is another stage-2 model, even with the same corpus and training
    subln = variant(recipe, "SubLN")
    assert subln.stage_dir("continue_pretrain") == subln.out / "continue_pretrain"
    assert subln.bitnet.subln == "o_down" != recipe.bitnet.subln


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"distill.lamda_logits": 1.0}, "lamda_logits: unknown field; did you mean 'lambda_logits'"),
        ({"output_dir": "x"}, "output_dir cannot be overridden"),
        ({"distill.enabled": False}, "an ablation row is a distill stage"),
        ({}, "expected a mapping of dotted.key: value overrides"),
    ],
)
def test_bad_ablation_names_the_row(world, tmp_path, overrides, message):
    recipe = load_recipe(recipe_file(tmp_path, world, {"bad row": overrides}))
    with pytest.raises(BitDistillError, match="ablations.bad row") as err:
        variant(recipe, "bad row")
    assert message in str(err.value)


@pytest.mark.slow
def test_run_writes_ablation_rows_into_results_and_report(world, tmp_path):
    torch.manual_seed(0)
    ablations = {k: ABLATIONS[k] for k in ("LD only", "w/o continued pre-training")}
    recipe = load_recipe(recipe_file(tmp_path, world, ablations))
    results = run_recipe(recipe)
    rows = results["ablations"]
    assert set(rows) == set(ablations)
    for label, row in rows.items():
        assert 0.0 <= row["eval"]["accuracy"] <= 1.0, label
        assert Path(row["model_dir"]).is_relative_to(recipe.out / "ablations" / slug(label))
    assert rows["LD only"]["distill"]["gamma"] == 0.0
    assert rows["LD only"]["distill"]["lambda"] > 0
    # The reused stages ran once: only the main run has a teacher and a stage-2 directory.
    assert not (recipe.out / "ablations" / "ld-only" / "continue_pretrain").exists()
    assert not (recipe.out / "ablations" / "ld-only" / "teacher").exists()
    saved = json.loads((recipe.out / "results.json").read_text())
    assert saved["ablations"]["LD only"]["eval"] == rows["LD only"]["eval"]
    report = (recipe.out / "report.md").read_text()
    assert "| LD only |" in report and "| w/o continued pre-training |" in report
