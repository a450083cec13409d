"""Where a stage stands in its directory, checked against the recipe's fingerprint for it.

    new        nothing to reuse: no stage.json, no checkpoint
    done       stage.json and the same fingerprint: skipped
    resume     a checkpoint and the same fingerprint: training continues from it
    changed    stage.json or a checkpoint under another fingerprint: refused, naming the keys that differ
    unverified stage.json or a checkpoint without fingerprint.json (written before fingerprints existed):
               refused, since nothing says what produced it

Refusals say which flag retrains the stage; `clear_outputs` is what that flag (`--restart`) does.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.recipe import Recipe
from ..errors import BitDistillError
from ..train.checkpoint import latest_checkpoint
from ..train.distributed import is_main
from .fingerprint import FINGERPRINT_FILE, differences, read_fingerprint, stage_fingerprint, write_fingerprint
from .lock import pid_alive
from .markers import STAGE_FILE

# What a stage writes in its directory (stage_dirs may point into a directory that holds other things:
# only these are ever moved or deleted). stage.json goes first, so a killed restart is never "done".
OUTPUTS = (STAGE_FILE, FINGERPRINT_FILE, "eval.json", "model", "train", "corpus")
TRASH = ".restart-"


@dataclass
class StageState:
    stage: str
    path: Path
    status: str
    expected: dict[str, Any]
    step: int | None = None  # the checkpoint a resume starts from
    diff: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return self.status in ("changed", "unverified")


def stage_state(recipe: Recipe, stage: str) -> StageState:
    out = recipe.stage_dir(stage)
    expected = stage_fingerprint(recipe, stage)
    done = (out / STAGE_FILE).is_file()
    ckpt = None if done else latest_checkpoint(out / "train")
    if not done and ckpt is None:
        return StageState(stage, out, "new", expected)
    step = int(ckpt.name.rsplit("-", 1)[1]) if ckpt is not None else None
    recorded = read_fingerprint(out)
    if recorded is None:
        return StageState(stage, out, "unverified", expected, step)
    if recorded != expected:
        return StageState(stage, out, "changed", expected, step, differences(recorded, expected))
    return StageState(stage, out, "done" if done else "resume", expected, step)


def restart_hint(stages: list[str], flag: str | None = None) -> str:
    """The advice that ends a refusal: the --restart flag, or deleting the directory (`flag` overrides)."""
    if flag is not None:
        return flag
    return f"rerun with --restart {','.join(stages)} (or --restart all) to retrain it"


def refusal(state: StageState, hint: str) -> BitDistillError:
    what = "finished" if state.step is None else f"checkpointed at step {state.step}"
    if state.status == "unverified":
        return BitDistillError(
            f"{state.path}: {what} by a bitdistill that did not record stage fingerprints, so it cannot be "
            f"checked against the recipe; {hint}"
        )
    return BitDistillError(f"{state.path}: recipe changed since this stage ran: {', '.join(state.diff)}; {hint}")


def clear_outputs(path: Path) -> bool:
    """Remove a stage's outputs from `path`: moved aside into one hidden directory (renames, so a kill
    never leaves a half-deleted model looking complete), then deleted. True when something was there."""
    present = [path / name for name in OUTPUTS if (path / name).exists()]
    for stale in path.glob(f"{TRASH}*") if path.is_dir() else []:
        pid = stale.name[len(TRASH) :].split("-")[0]
        if not (pid.isdigit() and pid_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)  # what a killed restart left
    if not present:
        return False
    trash = path / f"{TRASH}{os.getpid()}-{time.time_ns()}"
    trash.mkdir()
    for p in present:
        try:
            os.replace(p, trash / p.name)
        except FileNotFoundError:  # moved by another process of the same distributed run
            pass
    shutil.rmtree(trash, ignore_errors=True)
    return True


def prepare_stage(recipe: Recipe, stage: str, hint: str | None = None) -> StageState:
    """The stage's state; refused states raise. A stage about to start fresh records its fingerprint
    first (after clearing what an earlier start under another fingerprint left, e.g. a task corpus)."""
    state = stage_state(recipe, stage)
    if state.refused:
        raise refusal(state, restart_hint([stage], hint))
    if state.status == "new" and is_main():  # one process of a multi-process run writes; see run_stage
        recorded = read_fingerprint(state.path)
        if recorded is not None and recorded != state.expected:
            clear_outputs(state.path)
        write_fingerprint(state.path, state.expected)
    return state


__all__ = ["OUTPUTS", "StageState", "clear_outputs", "prepare_stage", "refusal", "restart_hint", "stage_state"]
