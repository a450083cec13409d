"""Dev-set metrics of a model under training, with the recipe's evaluation settings.

Classification scores label words (the metrics `bitdistill eval` reports, eval/evaluate.py); summarization
reports the teacher-forced target loss and, optionally, ROUGE/BLEU of generated outputs. Best-checkpoint
selection (`eval_metric`) reads these numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.recipe import Recipe
from ..data.encode import IGNORE_INDEX, TaskDataset, collate, pad_token_id
from ..data.tasks import Example
from ..distill.losses import task_ce
from ..errors import BitDistillError
from ..eval.evaluate import evaluate_model as evaluate_task
from ..model.eval_mode import eval_mode
from ..train.distributed import across_ranks
from .models import load_model_dir_or_spec
from .task_data import TaskData, load_task_data


def dev_metrics(
    model: nn.Module, tokenizer, data: TaskData, recipe: Recipe, progress: bool = False, generate: bool = True
) -> dict:
    """Dev-set metrics: accuracy and macro-F1 by label-word scoring (classification); target loss and,
    with `generate`, ROUGE/BLEU of generated outputs (summarization; see `generation_metrics`)."""
    if not data.eval:
        raise BitDistillError(
            f"{recipe.source}: task.eval_split {recipe.task.eval_split!r} has no labeled rows"
        )
    with eval_mode(model):
        if data.task.kind == "classification":
            return task_metrics(model, tokenizer, data, data.eval, recipe, progress)
        metrics = {"eval_loss": target_loss(model, tokenizer, data.eval, recipe), "n": len(data.eval)}
        if generate:
            metrics.update(generation_metrics(model, tokenizer, data, recipe, progress))
        return metrics


def generation_metrics(model, tokenizer, data: TaskData, recipe: Recipe, progress: bool) -> dict:
    """ROUGE-1/2/L/Lsum and BLEU of generated outputs on the first `task.generate_limit` eval rows."""
    limit = recipe.task.generate_limit
    examples = data.eval if limit is None else data.eval[:limit]
    if not examples:
        return {}
    scores = task_metrics(model, tokenizer, data, examples, recipe, progress)
    scores.pop("n", None)  # n stays the loss's count (all rows)
    return {**scores, "generated": len(examples)}


def task_metrics(model, tokenizer, data: TaskData, examples: list[Example], recipe: Recipe, progress: bool):
    """The metrics `bitdistill eval` reports (eval/evaluate.py), with the recipe's evaluation settings."""
    spec = recipe.task
    return evaluate_task(
        model, tokenizer, data.task, examples, batch_size=spec.eval_batch_size, max_length=spec.max_length,
        max_new_tokens=spec.max_new_tokens, num_beams=spec.num_beams, progress=progress,
    )["metrics"]  # fmt: skip


def target_loss(model: nn.Module, tokenizer, examples: list[Example], recipe: Recipe) -> float:
    """Mean cross-entropy of the target tokens (teacher-forced) over `examples`."""
    ds = TaskDataset(tokenizer, examples, recipe.task.max_length)
    pad = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    size = recipe.task.eval_batch_size

    def batch_sums(starts: list[int]) -> list[tuple[float, int]]:
        sums = []
        for i in starts:
            b = collate([ds[j] for j in range(i, min(i + size, len(ds)))], pad)
            n = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
            sums.append((float(task_ce(model, {k: v.to(device) for k, v in b.items()})) * n, n))
        return sums

    with torch.inference_mode():  # under `accelerate launch` the processes share the batches
        sums = across_ranks(batch_sums, list(range(0, len(ds), size)))
    return sum(t for t, _ in sums) / max(sum(n for _, n in sums), 1)


def eval_metric(kind: str) -> tuple[str, bool]:
    """(metric name, greater is better) that best-checkpoint selection uses."""
    return ("accuracy", True) if kind == "classification" else ("eval_loss", False)


def evaluate_model_dir(recipe: Recipe, model_dir: str | Path, data: TaskData | None = None) -> dict[str, Any]:
    """Dev-set metrics of a model directory (FP or BitNet), as `bitdistill run` reports them."""
    model, tok = load_model_dir_or_spec(model_dir)
    data = data or load_task_data(recipe, need_train=False)
    return dev_metrics(model.eval(), tok, data, recipe, progress=True)
