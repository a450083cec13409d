"""Run a recipe: teacher -> bitnet_sft -> continue_pretrain -> distill -> eval, as the YAML declares.

Before anything trains, the whole recipe is checked (pipeline/check.py: paths, layers, sizes, numbers, and
each stage directory against the recipe's fingerprint for it) and the plan printed; then the run takes the
run directory's lock (pipeline/lock.py), applies `--restart`, and runs the stages. A stage whose `stage.json`
exists and whose fingerprint matches is skipped (its record is reused); a stage that was interrupted
resumes from its last checkpoint under the same condition. The run ends with `results.json` in the output
directory: per stage the dev metrics, wall time, training tokens and tokens/s.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .._fs import atomic_write_text
from ..config.choices import STAGES
from ..config.recipe import Recipe
from ..data.tasks import get_task
from ..errors import BitDistillError
from ..train.checkpoint import latest_checkpoint
from ..train.distributed import barrier, is_main
from .ablations import variants
from .dev_eval import evaluate_model_dir
from .fingerprint import FINGERPRINT_FILE, digest, path_identity, read_fingerprint
from .launch import Launch
from .markers import EVAL_FILE, RESULTS_FILE, read_stage, stage_dir, write_stage
from .state import clear_outputs, prepare_stage

RESTARTABLE = (*STAGES, "ablations")

# Renders a finished run directory; returns what it wrote (see run_recipe).
Reporter = Callable[[Path], Any]


def _log(msg: str) -> None:
    if not is_main():  # `accelerate launch`: every process runs this code; one of them reports
        return
    print(f"[bitdistill] {msg}", file=sys.stderr, flush=True)


def run_stage(
    recipe: Recipe, stage: str, force: bool = False, hint: str | None = None, checked: bool = False
) -> dict[str, Any]:
    """Run one stage unless it already finished under the same fingerprint; return its stage.json record.

    Unless `checked` (run_recipe checked the whole recipe), the stage gets the pre-flight checks of
    `bitdistill run --check` first. A finished or checkpointed stage whose fingerprint differs from the
    recipe's is refused (one line naming the differing keys, ending with `hint`; default: delete the
    directory or use --restart). `force` retrains a finished stage with the same fingerprint.
    """
    from .stages import RUNNERS

    out = stage_dir(recipe, stage)
    hint = hint or f"delete {out} (bitdistill run: --restart {stage}) to retrain it"
    if not checked:
        from .check import check_recipe

        check_recipe(recipe, [stage], hint=hint)
    existed = out.exists()
    state = prepare_stage(recipe, stage, hint)
    barrier()  # the other processes start once rank 0 has prepared the directory
    done = read_stage(out)
    if done is not None and not force:
        _log(f"{stage}: done already ({out / 'stage.json'}), skipping")
        return {**done, "skipped": True}
    if state.status == "resume":
        _log(f"{stage}: resuming from step {state.step} (same fingerprint) -> {out}")
    else:
        _log(f"{stage}: starting -> {out}")
    t0 = time.perf_counter()
    try:
        RUNNERS[stage](recipe)
    except BaseException:
        # Failed before its first checkpoint (a model that does not load, Ctrl-C): the fingerprint
        # written for it describes nothing; leave no directory behind that this call created.
        if state.status == "new" and latest_checkpoint(out / "train") is None and not (out / "stage.json").exists():
            (out / FINGERPRINT_FILE).unlink(missing_ok=True)
            if not existed:
                prune_empty(out)
        raise
    record = read_stage(out) or {}
    _log(f"{stage}: finished in {time.perf_counter() - t0:.1f}s")
    return record


def evaluate_stage(recipe: Recipe, stage: str, data=None) -> dict[str, Any]:
    """Dev metrics of a finished stage's model, cached in <stage>/eval.json (keyed by the eval settings)."""
    out = stage_dir(recipe, stage)
    record = read_stage(out)
    if record is None:
        return {}
    key = eval_cache_key(recipe, stage, record)
    cache = out / EVAL_FILE
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["metrics"]
    _log(f"eval: {stage} ({record['model_dir']}) on {recipe.task.name} {recipe.task.eval_split}")
    t0 = time.perf_counter()
    metrics = evaluate_model_dir(recipe, record["model_dir"], data)
    metrics["eval_seconds"] = time.perf_counter() - t0
    if is_main():
        atomic_write_text(cache, json.dumps({"key": key, "metrics": metrics}, indent=1) + "\n")
    return metrics


def eval_cache_key(recipe: Recipe, stage: str, record: dict[str, Any]) -> dict[str, Any]:
    """What a stage's cached dev metrics (eval.json) depend on: a different key means evaluate again."""
    out = stage_dir(recipe, stage)
    key = {
        "split": recipe.task.eval_split,
        "limit": recipe.task.eval_limit,
        "max_length": recipe.task.max_length,
        # the weights (retrained weights have another fingerprint) and the data they are scored on
        "weights": digest(read_fingerprint(out) or {"record": record}),
        "task": [recipe.task.name, recipe.task.options, _eval_data(recipe)],
    }
    if get_task(recipe.task.name, **recipe.task.options).kind != "classification":  # generation settings
        key.update(generate_limit=recipe.task.generate_limit, max_new_tokens=recipe.task.max_new_tokens,
                   num_beams=recipe.task.num_beams)  # fmt: skip
    return key


def _eval_data(recipe: Recipe) -> str:
    if recipe.task.path is None:
        return "hub"
    try:
        task = get_task(recipe.task.name, **recipe.task.options)
        return path_identity(task.split_file(recipe.task.path, recipe.task.eval_split))
    except BitDistillError:
        return "missing"


def parse_restart(value: str | None) -> tuple[str, ...]:
    """`--restart STAGE[,STAGE]|all` as stage names (plus "ablations"); errors are one line."""
    if not value:
        return ()
    names = [s.strip().replace("-", "_") for s in value.split(",") if s.strip()]
    if "all" in names:
        return RESTARTABLE
    for name in names:
        if name not in RESTARTABLE:
            raise BitDistillError(f"--restart: {name!r} is not one of {', '.join(RESTARTABLE)} or all")
    return tuple(names)


def plan_recipe(
    recipe: Recipe, only: list[str] | None = None, restart: tuple[str, ...] = (), launch: Launch | None = None
) -> tuple[list[str], dict[str, Recipe]]:
    """(the plan's lines, the ablation variants) after checking everything; writes nothing. `launch`: the
    processes and sharding the memory plan assumes (default: this process's launch)."""
    from .check import check_recipe

    for name in restart:
        if name in STAGES and not getattr(recipe, name).enabled:
            raise BitDistillError(f"--restart {name}: that stage is disabled in {recipe.source}")
    # Built before anything trains, so a bad ablation override fails fast.
    ablations = variants(recipe) if not only or "ablations" in only else {}
    return check_recipe(recipe, only, restart, ablations, launch=launch), ablations


def run_recipe(
    recipe: Recipe,
    only: list[str] | None = None,
    restart: tuple[str, ...] = (),
    check_only: bool = False,
    report: Reporter | None = None,
    launch: Launch | None = None,
) -> dict[str, Any]:
    """Check the recipe, print the plan, then (unless `check_only`) hold the run directory's lock, apply
    `restart` and execute the enabled stages in order, then evaluation; write and return results.json.

    `report(run_dir)` renders the finished run (bitdistill.report.write_report; the report layer sits above
    this one, so it is passed in). Its failure is recorded in results.json and raised. `launch` plans a
    launch other than this one (`--check --num-processes N --fsdp`); a run that trains refuses it.
    """
    if launch is not None and not check_only:
        raise BitDistillError(
            "--num-processes/--fsdp only plan a launch, with --check; to train on N processes run under "
            "`accelerate launch` (docs/gpus.md)"
        )
    plan, ablations = plan_recipe(recipe, only, restart, launch)
    if check_only:
        return {"plan": plan}
    _log("\n".join(plan))
    with locked(recipe.out):
        results = _restart_and_execute(recipe, only, restart, ablations)
        evaluated = any(r.get("eval") for r in results.get("stages", {}).values())
        if report is not None and recipe.eval.enabled and evaluated and is_main():
            _report(recipe.out, results, report)
    return results


def _report(out: Path, results: dict[str, Any], report: Reporter) -> None:
    try:
        _log(f"report: {report(out)}")
    except BitDistillError as err:
        results["report_error"] = str(err)
        _write_results(out, results)
        raise BitDistillError(
            f"{out}: the stages finished and results.json is written, but the report failed: {err}; fix that "
            f"and run `bitdistill report {out}`"
        ) from None


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold `out`'s RunLock; if `out` is new and the work fails, leave no empty directories behind."""
    from .lock import RunLock

    existed = out.exists()
    try:
        with RunLock(out):
            yield
    except BaseException:
        if not existed:
            prune_empty(out)  # a run that failed at once leaves no empty run directory
        raise


def prune_empty(path: Path) -> None:
    """Remove `path` and the directories under it that are empty (bottom-up); keep anything with a file."""
    if not path.is_dir():
        return
    for root, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
        try:
            os.rmdir(root)
        except OSError:
            pass


def _restart_and_execute(
    recipe: Recipe, only: list[str] | None, restart: tuple[str, ...], ablations: dict[str, Recipe]
) -> dict[str, Any]:
    if not is_main():  # rank 0 clears; the others must not move away what it writes next
        restart = ()
    for name in restart:
        if name in STAGES and clear_outputs(recipe.stage_dir(name)):
            _log(f"{name}: --restart: removed the old outputs in {recipe.stage_dir(name)}")
    if "ablations" in restart:
        for label, variant in ablations.items():
            for name in STAGES:  # only the variant's own stages, never the main run's it reuses
                if variant.stage_dir(name).is_relative_to(variant.out) and clear_outputs(variant.stage_dir(name)):
                    _log(f"ablation {label!r}: {name}: --restart: removed the old outputs")
    barrier()
    return _execute(recipe, only, ablations)


def _execute(
    recipe: Recipe, only: list[str] | None, ablations: dict[str, Recipe], restart_flag: str | None = None
) -> dict[str, Any]:
    """Run the stages, ablations and evaluation (checked and locked by the caller); `restart_flag`: what
    a refusal tells the user to pass to --restart (an ablation variant's stages: "ablations")."""
    out = recipe.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "recipe": recipe.name,
        "source": recipe.source,
        "model": recipe.model,
        "task": recipe.task.name,
        "seed": recipe.seed,
        "host": {"python": platform.python_version(), "torch": torch.__version__,
                 "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads()},
        "stages": {},
    }  # fmt: skip
    t_all = time.perf_counter()
    for stage in STAGES:
        if not getattr(recipe, stage).enabled or (only and stage not in only):
            continue
        flag = restart_flag or stage
        hint = f"rerun with --restart {flag} (or --restart all) to retrain it"
        record = run_stage(recipe, stage, hint=hint, checked=True)
        train = record.get("train", {})
        results["stages"][stage] = {
            "model_dir": record.get("model_dir"),
            "wall_seconds": record.get("wall_seconds"),
            "steps": train.get("steps"),
            "train_tokens": train.get("tokens"),
            "tokens_per_second": train.get("tokens_per_second"),
            "first_loss": train.get("first_loss"),
            "last_loss": train.get("last_loss"),
            "reused": record.get("reused", False),
            **({"distill": record["distill"]} if "distill" in record else {}),
        }
    if ablations:
        results["ablations"] = run_ablations(ablations)
    if recipe.eval.enabled and (not only or "eval" in only):
        from .task_data import load_task_data

        data = None
        for stage in recipe.eval.stages:
            if stage in results["stages"] or read_stage(stage_dir(recipe, stage)) is not None:
                if data is None:
                    data = load_task_data(recipe, need_train=False)
                metrics = evaluate_stage(recipe, stage, data)
                results["stages"].setdefault(stage, {})["eval"] = metrics
    results["wall_seconds_this_invocation"] = time.perf_counter() - t_all
    if not is_main():
        return results  # the other processes trained and evaluated their share; rank 0 writes and reports
    _write_results(out, results)
    _log(f"results: {out / 'results.json'}")
    _print_summary(results)
    return results


def _write_results(out: Path, results: dict[str, Any]) -> None:
    atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=1) + "\n")


def run_ablations(ablations: dict[str, Recipe]) -> dict[str, Any]:
    """Run each ablation variant (its distill stage and that stage's evaluation); label -> its record."""
    rows: dict[str, Any] = {}
    for label, variant in ablations.items():
        _log(f"ablation {label!r}: -> {variant.out}")
        sub = _execute(variant, None, {}, restart_flag="ablations")
        rows[label] = {"stage": "distill", **sub["stages"].get("distill", {})}
    return rows


def _print_summary(results: dict[str, Any]) -> None:
    rows = []
    for stage, r in [*results["stages"].items(), *(results.get("ablations") or {}).items()]:
        ev = r.get("eval", {})
        metric = next((f"{k}={v:.4f}" for k, v in ev.items() if k in ("accuracy", "eval_loss")), "-")
        wall = r.get("wall_seconds")
        tps = r.get("tokens_per_second")
        rows.append(
            f"  {stage:<26} {metric:<18} wall={wall or 0:8.1f}s  tok/s={tps or 0:8.1f}  "
            f"loss {r.get('first_loss') or float('nan'):.4f} -> {r.get('last_loss') or float('nan'):.4f}"
        )
    print("\n".join([f"recipe {results['recipe']} ({results['task']}):", *rows]))


__all__ = ["evaluate_stage", "locked", "parse_restart", "plan_recipe", "run_recipe", "run_stage", "write_stage"]
