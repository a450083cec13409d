"""Resumable training checkpoints, written so that a kill -9 at any moment leaves a usable one behind.

Layout under a stage's `train/` directory::

    ckpt-000120/            one complete checkpoint (model, optimizer, scheduler, RNG, trainer state)
    LATEST                  the name of the newest complete checkpoint (replaced atomically)

A checkpoint is assembled in a hidden temporary directory, every file is fsynced, and only then is the
directory renamed to `ckpt-NNNNNN` and `LATEST` pointed at it. A crash before the rename leaves a stray
temporary directory (ignored and cleaned up); a crash after it leaves a complete checkpoint. Older
checkpoints are deleted only after `LATEST` names the new one.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model
from torch import nn

from .._fs import atomic_write_text, fsync_path, replace_dir
from ..errors import BitDistillError
from ..model.io import write_weights
from .sharding import is_sharded, scatter_optimizer, scatter_weights

LATEST = "LATEST"
PREFIX = "ckpt-"
STATE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    train_dir: Path,
    step: int,
    weights: nn.Module | Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any],
    scheduler: Any,
    trainer_state: dict[str, Any],
    keep: int = 1,
    rank: int = 0,
    is_main: bool = True,
    before_publish: Callable[[], None] | None = None,
) -> Path:
    """Write checkpoint `step` atomically and point LATEST at it; keep the newest `keep` checkpoints.

    `weights` is the model, or its full state dict gathered from a sharded model (train/sharding.py);
    `optimizer_state` the optimizer's state dict (gathered and keyed by parameter name when sharded)."""
    train_dir.mkdir(parents=True, exist_ok=True)
    final = train_dir / f"{PREFIX}{step:06d}"
    if not is_main:
        # Other ranks only contribute their RNG state, written after the main rank published the dir.
        torch.save(rng_state(), final / f"rng_{rank}.pt")
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=train_dir))
    try:
        write_weights(weights, tmp / "model.safetensors")  # tied tensors (embeddings / LM head) once
        torch.save(dict(optimizer_state), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / f"rng_{rank}.pt")
        (tmp / STATE).write_text(json.dumps({**trainer_state, "step": step}, indent=1))
        for f in tmp.iterdir():
            fsync_path(f)
        if before_publish is not None:
            before_publish()  # fault injection in tests: a kill here must leave the previous checkpoint
        replace_dir(tmp, final)  # a re-save of the same step after a resume replaces it
        fsync_path(train_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(train_dir / LATEST, final.name + "\n")
    for old in sorted(train_dir.glob(f"{PREFIX}*"))[:-keep] if keep > 0 else []:
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _complete(path: Path) -> bool:
    return path.is_dir() and all(
        (path / n).is_file() for n in ("model.safetensors", "optimizer.pt", "scheduler.pt", STATE)
    )


def latest_checkpoint(train_dir: Path) -> Path | None:
    """The newest complete checkpoint under `train_dir`, or None when there is none."""
    if not train_dir.is_dir():
        return None
    pointer = train_dir / LATEST
    if pointer.is_file():
        named = train_dir / pointer.read_text().strip()
        if _complete(named):
            return named
    # LATEST is written after the rename; a crash in between leaves a complete but unnamed checkpoint.
    candidates = [p for p in sorted(train_dir.glob(f"{PREFIX}*")) if _complete(p)]
    return candidates[-1] if candidates else None


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG from `path`; return the trainer state. Collective for a
    sharded model (every rank calls it; rank 0 reads the model and optimizer files and broadcasts)."""
    try:
        missing, unexpected = load_weights(model, path / "model.safetensors")
        tied = (
            {"lm_head.weight"}
            if getattr(getattr(model, "config", None), "tie_word_embeddings", False)
            else set()
        )
        missing = [k for k in missing if k not in tied]
        if missing or unexpected:
            raise BitDistillError(
                f"{path}: checkpoint does not match the model (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}); it was written by a different configuration — delete {path.parent} "
                "to start the stage over"
            )
        if is_sharded(model):
            scatter_optimizer(model, optimizer, path / "optimizer.pt")
        else:
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        rng_file = path / f"rng_{rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return json.loads((path / STATE).read_text())
    except (OSError, RuntimeError, ValueError) as err:
        raise BitDistillError(
            f"{path}: cannot resume from this checkpoint ({err}); delete it to fall back to an older one "
            f"or delete {path.parent} to start the stage over"
        ) from None


def load_weights(model: nn.Module, path: Path) -> tuple[list[str], list[str]]:
    """Load a weights file written by `write_weights` into `model` (sharded or not; collective when sharded);
    returns (missing, unexpected) names and loads nothing when the file does not match a sharded model."""
    if is_sharded(model):
        return scatter_weights(model, path)
    return load_model(model, str(path), strict=False)


def clean_stale(train_dir: Path) -> None:
    """Remove temporary directories left by a checkpoint write that was killed."""
    if train_dir.is_dir():
        for p in train_dir.glob(f".{PREFIX}*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
