"""Pieces every stage shares: task data, losses on target tokens, evaluation, model loading, stage markers.

A stage directory holds `model/` (written by `bitdistill.save`), `train/` (resumable checkpoints and the
jsonl log) and `stage.json`, written last and atomically: its presence is what marks a stage as done.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.encode import IGNORE_INDEX, TaskDataset, collate, pad_token_id
from ..data.tasks import Example, Task, get_task
from ..errors import BitDistillError
from ..recipe.schema import Recipe
from ..train.checkpoint import atomic_write_text
from ..train.distributed import across_ranks

STAGE_FILE = "stage.json"


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


@dataclass
class TaskData:
    task: Task
    train: list[Example]
    eval: list[Example]


def load_task_data(recipe: Recipe, need_train: bool = True) -> TaskData:
    spec = recipe.task
    task = get_task(spec.name, **spec.options)
    train = task.load("train", path=spec.path, limit=spec.train_limit) if need_train else []
    dev = task.load(spec.eval_split, path=spec.path, limit=spec.eval_limit)
    if need_train and not train:
        raise BitDistillError(f"{recipe.source}: task {spec.name}: the training split is empty")
    if task.kind == "classification":
        dev = [ex for ex in dev if ex.label is not None]  # unlabeled test rows cannot be scored
    return TaskData(task, train, dev)


def task_batches(tokenizer, examples: list[Example], recipe: Recipe, cfg, accelerator):
    """Resumable training batches for a stage's TrainConfig `cfg` (batch size, seed, length grouping)."""
    from ..train import ShuffledBatches

    dataset = TaskDataset(tokenizer, examples, recipe.task.max_length)
    pad = pad_token_id(tokenizer)
    # Character counts rank examples by length well enough to group them, without tokenizing them all.
    lengths = [len(ex.prompt) + len(ex.target) for ex in examples] if cfg.group_by_length else None
    return ShuffledBatches(
        dataset,
        cfg.batch_size,
        lambda feats: collate(feats, pad),
        seed=cfg.seed,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        lengths=lengths,
    )


def causal_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose label is not -100 (target tokens only)."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def ce_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    loss = causal_ce(out.logits, batch["labels"])
    return loss, {"ce": float(loss.detach())}


def evaluate_model(
    model: nn.Module, tokenizer, data: TaskData, recipe: Recipe, progress: bool = False, generate: bool = True
) -> dict:
    """Dev-set metrics: accuracy and macro-F1 by label-word scoring (classification); target loss and,
    with `generate`, ROUGE/BLEU of generated outputs (summarization; see `generation_metrics`)."""
    if not data.eval:
        raise BitDistillError(
            f"{recipe.source}: task.eval_split {recipe.task.eval_split!r} has no labeled rows"
        )
    was_training = model.training
    model.eval()
    try:
        if data.task.kind == "classification":
            return task_metrics(model, tokenizer, data, data.eval, recipe, progress)
        metrics = {"eval_loss": target_loss(model, tokenizer, data.eval, recipe), "n": len(data.eval)}
        if generate:
            metrics.update(generation_metrics(model, tokenizer, data, recipe, progress))
        return metrics
    finally:
        model.train(was_training)


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
    from ..eval.evaluate import evaluate_model as evaluate_task

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
            logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device))
            n = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
            sums.append((float(causal_ce(logits.logits, b["labels"].to(device))) * n, n))
        return sums

    with torch.inference_mode():  # under `accelerate launch` the processes share the batches
        sums = across_ranks(batch_sums, list(range(0, len(ds), size)))
    return sum(t for t, _ in sums) / max(sum(n for _, n in sums), 1)


def eval_metric(kind: str) -> tuple[str, bool]:
    """(metric name, greater is better) that best-checkpoint selection uses."""
    return ("accuracy", True) if kind == "classification" else ("eval_loss", False)


def convert(model: nn.Module, recipe: Recipe) -> nn.Module:
    from ..model.convert import to_bitnet

    b = recipe.bitnet
    return to_bitnet(
        model, subln=b.subln, granularity=b.granularity, group_size=b.group_size,
        quantize_activations=b.quantize_activations,
    )  # fmt: skip


def load_model_dir_or_spec(spec: str | Path):
    """(model, tokenizer) from a bitdistill/HF directory or any load_pretrained spec, in train mode."""
    from ..model.hub import load_any

    model, tok = load_any(spec)
    if tok is None:
        raise BitDistillError(f"{spec}: no tokenizer found beside the model; save it with a tokenizer")
    return model.train(), tok


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
