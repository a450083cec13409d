"""Reading a run directory: results.json completed from the stage directories, models, training logs.

The pipeline writes these files (pipeline/markers.py names them); the report only reads them, and a file
it cannot read is an error naming that file, never a silently missing row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config.choices import STAGES
from ..errors import BitDistillError
from ..pipeline.markers import EVAL_FILE, RESULTS_FILE, STAGE_FILE, SWEEP_FILE


def read_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    """results.json of a run, completed from the stage directories (see `merge_stage_dirs`)."""
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    results: dict[str, Any] = {"stages": {}}
    if path.is_file():
        try:
            results = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BitDistillError(
                f"{path}: not valid JSON ({err}); re-run `bitdistill run --only eval`"
            ) from None
        if not isinstance(results, dict) or not isinstance(results.get("stages"), dict):
            raise BitDistillError(f"{path}: no 'stages' mapping; it was not written by `bitdistill run`")
        for stage, rec in results["stages"].items():
            if not isinstance(rec, dict) or not isinstance(rec.get("eval", {}), dict | None):
                raise BitDistillError(
                    f"{path}: stages.{stage} is not a stage record (with an 'eval' mapping); it was not written "
                    "by `bitdistill run` — re-run `bitdistill run --only eval`"
                )
    merge_stage_dirs(run_dir, results)
    if not results["stages"]:
        raise BitDistillError(f"{path}: missing, and no finished stage under {run_dir}; run the recipe first "
                              "(bitdistill run CONFIG.yaml)")  # fmt: skip
    return results


def merge_stage_dirs(run_dir: Path, results: dict[str, Any]) -> None:
    """Fill in stages that finished under `run_dir/<stage>/` but are missing from results.json.

    `bitdistill run --only ...` invocations each write results.json with their own stages; the stage
    directories (stage.json, and eval.json once evaluated) hold everything, so the report reads them too.
    Values already in results.json win.
    """
    for stage in STAGES:
        marker = run_dir / stage / STAGE_FILE
        if not marker.is_file():
            continue
        rec = _mapping(marker)
        ev_file = run_dir / stage / EVAL_FILE
        ev = _mapping(ev_file).get("metrics") if ev_file.is_file() else None
        train = rec.get("train") or {}
        found = {
            "model_dir": rec.get("model_dir"), "wall_seconds": rec.get("wall_seconds"), "steps": train.get("steps"),
            "train_tokens": train.get("tokens"), "tokens_per_second": train.get("tokens_per_second"),
            "first_loss": train.get("first_loss"), "last_loss": train.get("last_loss"),
            "reused": rec.get("reused", False),
            **({"distill": rec["distill"]} if "distill" in rec else {}), **({"eval": ev} if ev else {}),
        }  # fmt: skip
        have = results["stages"].setdefault(stage, {})
        for key, value in found.items():
            if have.get(key) is None and value is not None:
                have[key] = value
    # keep the pipeline's stage order
    order = [s for s in STAGES if s in results["stages"]]
    results["stages"] = {
        s: results["stages"][s] for s in order + [s for s in results["stages"] if s not in order]
    }


def resolve_model_dir(run_dir: Path, stage: str, recorded: str | None) -> Path | None:
    """Where a stage's model lives now: as recorded (absolute or relative to the working directory, as
    the runner wrote it), relative to the run directory, or the run's own `<stage>/model`."""
    candidates = []
    if recorded:
        candidates += [Path(recorded), run_dir / recorded]
    candidates.append(run_dir / stage / "model")
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    return None


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a jsonl training log; a line cut by a kill is skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            out.append(rec)
    return out


def stage_log_path(run_dir: Path, stage: str, record: dict[str, Any]) -> Path | None:
    """The stage's training log: beside its model directory, or under `<run>/<stage>/train/`."""
    candidates = []
    if record.get("model_dir"):
        md = Path(record["model_dir"])
        candidates += [md.parent / "train" / "log.jsonl", run_dir / md.parent / "train" / "log.jsonl"]
    candidates.append(run_dir / stage / "train" / "log.jsonl")
    return next((c for c in candidates if c.is_file()), None)


def read_sweep(run_dir: Path) -> dict[str, Any] | None:
    """The run's layer_sweep.json (bitdistill sweep-layers), or None when there was no sweep."""
    path = run_dir / SWEEP_FILE
    return read_json(path) if path.is_file() else None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BitDistillError(f"{path}: corrupt ({err}); delete it and re-run the step that writes it") from None


def _mapping(path: Path) -> dict[str, Any]:
    """A JSON object file the pipeline wrote; anything else is an error naming it (never a dropped row)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise BitDistillError(
            f"{path}: not a JSON object, so not written by `bitdistill run`; delete it and re-run that stage"
        )
    return data
