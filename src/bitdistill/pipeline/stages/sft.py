"""Task fine-tuning stages: the full-precision teacher (FP16-SFT) and the BitNet-SFT baseline.

Both train `prompt -> target` with cross-entropy on the target tokens; they differ only in the model:
the teacher trains the full-precision model (or a larger one of the same tokenizer, or reuses a
user-supplied fine-tuned directory), BitNet-SFT first applies the stage-1 conversion (BitLinear + SubLN).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...config.recipe import Recipe
from ...data.task_record import record_task
from ...distill.losses import task_ce
from ...model.io import save
from ...train.loop import LossFn, make_accelerator, result_dict, train
from ...train.sharding import weights_for_saving
from ..dev_eval import dev_metrics, eval_metric
from ..markers import read_stage, stage_dir, write_stage
from ..models import convert, load_model_dir_or_spec
from ..task_data import TaskData, load_task_data, task_batches


def ce_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """The task loss of teacher and BitNet-SFT: cross-entropy on the target tokens."""
    loss = task_ce(model, batch)
    return loss, {"ce": float(loss.detach())}


def train_task_model(
    recipe: Recipe,
    stage: str,
    model,
    tokenizer,
    data: TaskData,
    loss_fn: LossFn,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune `model` on the task with `loss_fn` through the shared loop; save it; write stage.json."""
    t0 = time.perf_counter()
    out = stage_dir(recipe, stage)
    cfg = recipe.train_config(stage)
    accelerator = make_accelerator(cfg.precision)
    model.to(accelerator.device)
    batches = task_batches(tokenizer, data.train, recipe, cfg, accelerator)
    metric, greater = eval_metric(data.task.kind)
    eval_fn = None
    if cfg.eval_every or cfg.select == "best":
        # Checkpoint selection reads eval_loss/accuracy only: no generation during training.
        eval_fn = lambda m: dev_metrics(m, tokenizer, data, recipe, generate=False)  # noqa: E731
    result = train(
        model, batches, loss_fn, cfg, out / "train", eval_fn=eval_fn, metric=metric,
        greater_is_better=greater, desc=stage, accelerator=accelerator,
    )  # fmt: skip
    model_dir = out / "model"
    weights = weights_for_saving(model)  # a sharded model's full weights, gathered by every rank
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(model)
        record_task(trained.config, data.task)  # classify/serve/pack read the task from the model itself
        save(trained, model_dir, tokenizer=tokenizer, weights=weights)
        record = {
            "stage": stage,
            "model_dir": str(model_dir),
            "train": result_dict(result),
            "wall_seconds": time.perf_counter() - t0,
            "precision": cfg.precision,
            **(extra or {}),
        }
        write_stage(out, record)
    accelerator.wait_for_everyone()
    return read_stage(out) or {}


def run_teacher(recipe: Recipe) -> dict[str, Any]:
    """Fine-tune the full-precision teacher, or register a user-supplied teacher directory."""
    spec = recipe.teacher
    out = stage_dir(recipe, "teacher")
    if spec.path:
        # A ready teacher: nothing to train; record where it is so distill and eval use it.
        t0 = time.perf_counter()
        load_model_dir_or_spec(spec.path)  # fail now, with a clear message, if it does not load
        record = {"stage": "teacher", "model_dir": str(Path(spec.path)), "reused": True}
        record["wall_seconds"] = time.perf_counter() - t0
        write_stage(out, record)
        return record
    model, tok = load_model_dir_or_spec(spec.model or recipe.model)
    data = load_task_data(recipe)
    return train_task_model(
        recipe, "teacher", model, tok, data, ce_loss, {"base_model": spec.model or recipe.model}
    )


def run_bitnet_sft(recipe: Recipe) -> dict[str, Any]:
    """The BitNet-SFT baseline: stage-1 conversion + plain cross-entropy task fine-tuning."""
    model, tok = load_model_dir_or_spec(recipe.model)
    convert(model, recipe)
    data = load_task_data(recipe)
    return train_task_model(recipe, "bitnet_sft", model, tok, data, ce_loss, {"base_model": recipe.model})

