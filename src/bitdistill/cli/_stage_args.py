"""Shared flags of the single-stage sub-commands (teacher, sft, pretrain, distill).

Each sub-command builds a one-stage recipe from its flags (on top of a recipe file given with --config)
and runs it through the same code as `bitdistill run`; the stage's directory is --out.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

TRAIN_FLAGS = {
    "steps": int, "lr": float, "batch_size": int, "grad_accum": int, "warmup_steps": int,
    "weight_decay": float, "schedule": str, "precision": str, "save_every": int, "eval_every": int,
    "max_grad_norm": float,
}  # fmt: skip


def add_common(p: argparse.ArgumentParser, task: bool = True) -> None:
    p.add_argument("--config", help="take every default from this recipe file (flags override it)")
    p.add_argument("--out", required=True, help="the stage directory to write (model/, train/, stage.json)")
    p.add_argument("--model", help="the full-precision base model: HF dir, .gguf, hub id or smollm2-135m")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any recipe field"
    )
    if task:
        p.add_argument("--task", help="task name: sst2, mnli, qnli, cnndm, custom")
        p.add_argument("--data", help="local task data (a directory of train/dev files, or a file)")
        p.add_argument("--max-length", type=int, help="tokens per example")
        p.add_argument("--train-limit", type=int, help="use the first N training rows")
    g = p.add_argument_group("training")
    for name, tp in TRAIN_FLAGS.items():
        g.add_argument(f"--{name.replace('_', '-')}", dest=f"train_{name}", type=tp)


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def build_recipe(args: argparse.Namespace, stage: str, extra: dict[str, Any] | None = None):
    """A recipe with only `stage` enabled and its directory at --out."""
    from ..config.choices import STAGES
    from ..config.recipe import load_recipe, parse_recipe, set_dotted

    sets: dict[str, Any] = {"seed": args.seed, "model": args.model, f"stage_dirs.{stage}": args.out}
    for key, attr in (("name", "task"), ("path", "data"), ("max_length", "max_length"),
                      ("train_limit", "train_limit")):  # fmt: skip
        sets[f"task.{key}"] = getattr(args, attr, None)
    for name in TRAIN_FLAGS:
        sets[f"{stage}.train.{name}"] = getattr(args, f"train_{name}", None)
    sets.update(extra or {})
    overrides = [f"{k}={_dump(v)}" for k, v in sets.items() if v is not None]
    overrides += [f"{s}.enabled={'true' if s == stage else 'false'}" for s in STAGES]
    overrides += ["eval.enabled=false", *args.set]
    if args.config:
        return load_recipe(args.config, overrides)
    data: dict[str, Any] = {}
    for item in overrides:
        key, _, raw = item.partition("=")
        set_dotted(data, key, yaml.safe_load(raw), f"--set {item!r}")
    return parse_recipe(data, "<command line>")


def run_one(recipe, stage: str) -> int:
    from ..pipeline.run import evaluate_stage, locked, run_stage

    with locked(recipe.stage_dir(stage)):  # two commands writing one --out would corrupt its checkpoints
        record = run_stage(recipe, stage, force=False)
    print(f"{stage}: model -> {record.get('model_dir')}")
    if stage != "continue_pretrain":
        metrics = evaluate_stage(recipe, stage)
        print(f"{stage}: {recipe.task.name} {recipe.task.eval_split}: {metrics}")
    return 0
