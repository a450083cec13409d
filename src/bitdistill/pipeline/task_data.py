"""A recipe's task data: the training and dev examples, and the resumable batches a stage trains on."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.recipe import Recipe
from ..data.encode import TaskDataset, collate, pad_token_id
from ..data.tasks import Example, Task, get_task
from ..errors import BitDistillError


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
    from ..train.batches import ShuffledBatches

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


def criterion_batches(recipe: Recipe, tokenizer, examples: int, batch_size: int) -> list[dict]:
    """The first `examples` training rows as padded batches: what the layer criterion measures on."""
    data = load_task_data(recipe)
    ds = TaskDataset(tokenizer, data.train[:examples], recipe.task.max_length)
    pad = pad_token_id(tokenizer)
    return [
        collate([ds[j] for j in range(i, min(i + batch_size, len(ds)))], pad)
        for i in range(0, len(ds), batch_size)
    ]
