"""Stage fingerprints: everything that determines a stage's weights, as a flat mapping of named keys.

A stage records its fingerprint (`<stage>/fingerprint.json`) before it trains. A later `bitdistill run`
skips the finished stage, or resumes its checkpoint, only when the recipe still gives the same
fingerprint; otherwise it stops and names the keys that differ (pipeline/state.py). Without this, re-running
a finished run with `--set model=OTHER` reported weights trained from the first model under the second
model's name, and a resume after changing the learning rate mixed two configurations.

What a stage's fingerprint holds:
- its merged train config, minus TRAIN_NOT_WEIGHTS (and the recipe seed, as `seed`);
- the recipe fields the stage reads: the task (minus TASK_EVAL_ONLY), `bitnet` for the stages that convert
  a model, its own section (`continue_pretrain.corpus`, every `distill` field);
- identities of what it reads: models (`model`, `teacher.model`, `teacher.path`, `distill.student`,
  `distill.teacher`: the resolved path plus `.files`, a digest of the files' sizes and mtimes, and of the
  content of files up to SMALL_FILE; a hub id is its id), the task's training file, corpus files;
- for a stage that consumes another stage's output, that stage's fingerprint digest (so retraining the
  teacher with another learning rate makes the distill stage out of date too);
- FORMAT_VERSION, bumped when a code change makes old weights mean something else.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..config.recipe import Recipe
from ..errors import BitDistillError

FORMAT_VERSION = 1
FINGERPRINT_FILE = "fingerprint.json"
SMALL_FILE = 8 << 20  # files up to 8 MiB are identified by content, larger ones by size and mtime
MAX_FILES = 10_000  # a data directory with more files is identified by its first MAX_FILES

# Train settings that never change the weights: resume is exact (the state after step s depends on
# (seed, s) only), so how often the loop logs, saves or keeps checkpoints does not matter, nor whether a
# progress bar is drawn. eval_every matters only with `select: best` (it decides which steps compete).
TRAIN_NOT_WEIGHTS = ("log_every", "progress", "save_every", "keep_checkpoints", "eval_every")
# Task settings read only by evaluation; eval_split/eval_limit matter with `select: best`.
TASK_EVAL_ONLY = ("eval_split", "eval_limit", "eval_batch_size", "generate_limit", "max_new_tokens", "num_beams")


def file_identity(path: Path) -> str:
    st = path.stat()
    if st.st_size <= SMALL_FILE:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"size:{st.st_size},mtime:{st.st_mtime_ns}"


def path_identity(path: Path) -> str:
    """A digest of a file, or of a directory's files (hidden ones excluded); 'missing' when absent."""
    try:
        if path.is_file():
            return file_identity(path)
        if not path.is_dir():
            return "missing"
        h = hashlib.sha256()
        count = 0
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                f = Path(root) / name
                h.update(f"{f.relative_to(path)}={file_identity(f)}\n".encode())
                count += 1
                if count >= MAX_FILES:
                    return f"files:{count}+,{h.hexdigest()[:16]}"
        return f"files:{count},{h.hexdigest()[:16]}"
    except OSError as err:
        raise BitDistillError(f"{path}: cannot read it to fingerprint the stage ({err.strerror})") from None


def model_identity(spec: str) -> tuple[str, str]:
    """(name, files) of a model spec: an embedded name or hub id as is, a local path made absolute."""
    from ..model.hub import _EMBEDDED, embedded_gguf

    if spec.lower() in _EMBEDDED:
        return spec.lower(), path_identity(embedded_gguf(spec.lower()))
    p = Path(spec).expanduser()
    if p.exists():
        return str(p.resolve()), path_identity(p)
    return spec, "hub" if spec.count("/") == 1 and not p.is_absolute() else "missing"


def digest(keys: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _task_keys(recipe: Recipe, select_best: bool) -> dict[str, Any]:
    from ..data.tasks import get_task

    spec = recipe.task
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        if f.name not in TASK_EVAL_ONLY or (select_best and f.name in ("eval_split", "eval_limit")):
            keys[f"task.{f.name}"] = getattr(spec, f.name)
    if spec.path is not None:
        splits = ["train", spec.eval_split] if select_best else ["train"]
        for split in splits:
            try:
                found = path_identity(get_task(spec.name, **spec.options).split_file(spec.path, split))
            except BitDistillError:
                found = "missing"
            keys[f"task.data.{split}"] = found
    return keys


def _train_keys(recipe: Recipe, stage: str) -> dict[str, Any]:
    cfg = recipe.train_config(stage)
    best = cfg.select == "best"
    keys: dict[str, Any] = {"seed": cfg.seed}
    for name, value in dataclasses.asdict(cfg).items():
        if name == "seed" or (name in TRAIN_NOT_WEIGHTS and not (best and name == "eval_every")):
            continue
        keys[f"{stage}.train.{name}"] = value
    if stage == "continue_pretrain" and "steps" not in {**recipe.train, **recipe.continue_pretrain.train}:
        keys[f"{stage}.train.steps"] = "token budget"  # the stage derives its length from corpus.tokens
    return keys


def _model_keys(key: str, spec: str) -> dict[str, Any]:
    name, files = model_identity(spec)
    return {key: name, f"{key}.files": files}


def _bitnet_keys(recipe: Recipe) -> dict[str, Any]:
    return {f"bitnet.{k}": v for k, v in dataclasses.asdict(recipe.bitnet).items()}


def _corpus_keys(recipe: Recipe) -> dict[str, Any]:
    corpus = recipe.continue_pretrain.corpus
    keys: dict[str, Any] = {f"continue_pretrain.corpus.{k}": v for k, v in dataclasses.asdict(corpus).items()}
    for i, src in enumerate(corpus.sources):
        if src.startswith(("hub:", "task:")):
            continue  # a hub id is its own identity; task:<split> is the task's data (task.* keys)
        from ..data.builtin import resolve

        p = resolve(src)
        matches = sorted(glob.glob(str(p), recursive=True)) if any(c in src for c in "*?[") else [str(p)]
        ids = [path_identity(Path(m)) for m in matches[:MAX_FILES]] or ["missing"]
        keys[f"continue_pretrain.corpus.sources[{i}].files"] = ids[0] if len(ids) == 1 else digest({"ids": ids})
    return keys


def upstream(recipe: Recipe, stage: str) -> str:
    """How a consuming stage names `stage`'s output: its fingerprint digest (expected when the stage is
    enabled, else the one recorded in its directory)."""
    if getattr(recipe, stage).enabled:
        return f"{stage} stage {digest(stage_fingerprint(recipe, stage))}"
    recorded = read_fingerprint(recipe.stage_dir(stage))
    return f"{stage} stage {digest(recorded) if recorded else 'without fingerprint'}"


def _distill_keys(recipe: Recipe) -> dict[str, Any]:
    spec = recipe.distill
    keys: dict[str, Any] = {
        f"distill.{f.name}": getattr(spec, f.name)
        for f in dataclasses.fields(spec)
        # teacher_sharding only places the teacher's weights: the same numbers whichever
        if f.name not in ("enabled", "train", "student", "teacher", "teacher_sharding")
        # a key added later is recorded only when set, so fingerprints written before it still match
        and not (f.name == "teacher_dtype" and spec.teacher_dtype == "float32")
    }
    if spec.student == "teacher":
        keys["distill.student"] = upstream(recipe, "teacher") + ", converted"
        keys.update(_bitnet_keys(recipe))
    elif spec.student != "auto":
        keys.update(_model_keys("distill.student", spec.student))
    elif recipe.continue_pretrain.enabled:
        keys["distill.student"] = upstream(recipe, "continue_pretrain")
    else:
        keys["distill.student"] = "model, converted"
        keys.update(_model_keys("model", recipe.model))
        keys.update(_bitnet_keys(recipe))
    if spec.teacher == "auto":
        keys["distill.teacher"] = upstream(recipe, "teacher")
    else:
        keys.update(_model_keys("distill.teacher", spec.teacher))
    return keys


def stage_fingerprint(recipe: Recipe, stage: str) -> dict[str, Any]:
    """The flat fingerprint mapping of `stage` under `recipe` (see the module docstring), as JSON values
    (what fingerprint.json gives back when read)."""
    return json.loads(json.dumps(_stage_keys(recipe, stage), default=str))


def _stage_keys(recipe: Recipe, stage: str) -> dict[str, Any]:
    keys: dict[str, Any] = {"format": FORMAT_VERSION}
    if stage == "teacher" and recipe.teacher.path:
        return {**keys, **_model_keys("teacher.path", recipe.teacher.path)}  # evaluated, not trained
    keys.update(_train_keys(recipe, stage))
    best = recipe.train_config(stage).select == "best"
    if stage == "teacher":  # its base: teacher.model, or the recipe's model when that is null
        keys.update(_model_keys("teacher.model" if recipe.teacher.model else "model", recipe.teacher.model or recipe.model))
        keys.update(_task_keys(recipe, best))
    elif stage == "bitnet_sft":
        keys.update(_model_keys("model", recipe.model))
        keys.update(_bitnet_keys(recipe))
        keys.update(_task_keys(recipe, best))
    elif stage == "continue_pretrain":
        keys.update(_model_keys("model", recipe.model))
        keys.update(_bitnet_keys(recipe))
        keys.update(_corpus_keys(recipe))
        if any(s.startswith("task:") for s in recipe.continue_pretrain.corpus.sources):
            keys.update(_task_keys(recipe, False))
    elif stage == "distill":
        keys.update(_distill_keys(recipe))
        keys.update(_task_keys(recipe, best))
    else:
        raise ValueError(stage)
    return keys


def read_fingerprint(stage_dir: Path) -> dict[str, Any] | None:
    f = stage_dir / FINGERPRINT_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
        return dict(data["keys"])
    except (ValueError, KeyError, TypeError):
        return {"format": "unreadable fingerprint.json"}  # differs from any real fingerprint: refused


def write_fingerprint(stage_dir: Path, keys: dict[str, Any]) -> None:
    from .._fs import atomic_write_text

    atomic_write_text(stage_dir / FINGERPRINT_FILE, json.dumps({"digest": digest(keys), "keys": keys}, indent=1) + "\n")


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:98] + "..." + text[-98:]  # paths are shown whole


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 8) -> list[str]:
    """'key old -> new' for every key whose value differs (absent keys shown as 'unset')."""
    out = []
    for key in sorted(set(old) | set(new), key=lambda k: (k != "format", k)):
        a, b = old.get(key, "unset"), new.get(key, "unset")
        parent = key.removesuffix(".files")
        if a != b and not (parent != key and old.get(parent) != new.get(parent)):  # files of another path
            out.append(f"{key} {_show(a)} -> {_show(b)}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


__all__ = [
    "FINGERPRINT_FILE", "FORMAT_VERSION", "TASK_EVAL_ONLY", "TRAIN_NOT_WEIGHTS", "differences", "digest",
    "read_fingerprint", "stage_fingerprint", "upstream", "write_fingerprint",
]  # fmt: skip
