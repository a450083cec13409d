"""Stage markers: a stage directory is finished when its `stage.json` exists.

A stage directory holds `model/` (written by `bitdistill.save`), `train/` (resumable checkpoints and the
jsonl log) and `stage.json`, written last and atomically: its presence is what marks a stage as done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._fs import atomic_write_text
from ..config.recipe import Recipe
from ..errors import BitDistillError

# The files of a run directory (<run>/) and of each stage directory in it (<run>/<stage>/).
STAGE_FILE = "stage.json"  # a finished stage's record
EVAL_FILE = "eval.json"  # a stage's cached dev metrics
RESULTS_FILE = "results.json"  # the run's stages, evaluations and ablation rows
SWEEP_FILE = "layer_sweep.json"  # the layer sweep and the criterion


def stage_dir(recipe: Recipe, stage: str) -> Path:
    return recipe.stage_dir(stage)


def read_stage(path: Path) -> dict[str, Any] | None:
    """The stage.json of a finished stage directory, or None when the stage has not finished."""
    f = path / STAGE_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as err:
        raise BitDistillError(f"{f}: corrupt ({err}); delete it to re-run the stage") from None


def write_stage(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(path / STAGE_FILE, json.dumps(record, indent=1) + "\n")


def finished_model(recipe: Recipe, stage: str) -> Path:
    """The model directory a finished stage produced (its own `model/` or a reused teacher path)."""
    record = read_stage(stage_dir(recipe, stage))
    if record is None:
        raise BitDistillError(
            f"stage {stage} has not finished under {recipe.out}; run it first (bitdistill run or the stage "
            "sub-command) or point the next stage at a model directory"
        )
    return Path(record["model_dir"])
