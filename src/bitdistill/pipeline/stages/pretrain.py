"""Continued pre-training (the paper's stage 2): the stage-1 BitNet model + next-token loss on a corpus.

The corpus is packed into fixed blocks (`data.corpus.PackedCorpus`); its token budget sets the number of
optimizer steps (budget / tokens per step), and the stream's block order is fixed, so a resumed run
fast-forwards to the block it stopped at.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ..._fs import atomic_write_text
from ...config.recipe import Recipe
from ...data.corpus import PackedCorpus
from ...data.tasks import get_task
from ...distill.losses import causal_lm_loss
from ...model.io import save
from ...train.batches import StreamBatches
from ...train.loop import make_accelerator, result_dict, train
from ...train.sharding import weights_for_saving
from ..markers import stage_dir, write_stage
from ..models import convert, load_model_dir_or_spec


def lm_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross-entropy over every position of a packed block (labels are the block itself)."""
    logits = model(input_ids=batch["input_ids"]).logits
    loss = causal_lm_loss(logits, batch["labels"])
    return loss, {"lm": float(loss.detach())}


def materialize_sources(recipe: Recipe, out: Path) -> list[str]:
    """Corpus sources with `task:<split>` replaced by a text file of that split's input texts.

    Where no general corpus is at hand (offline machines), the task's own unlabeled input texts are a
    stand-in corpus: one document per example, labels never included.
    """
    sources: list[str] = []
    for src in recipe.continue_pretrain.corpus.sources:
        if not src.startswith("task:"):
            sources.append(src)
            continue
        split = src.split(":", 1)[1] or "train"
        path = out / "corpus" / f"task-{split}.txt"
        if not path.is_file():
            task = get_task(recipe.task.name, **recipe.task.options)
            examples = task.load(split, path=recipe.task.path)
            docs = [" ".join(ex.prompt[a:b] for a, b in ex.spans) or ex.prompt for ex in examples]
            atomic_write_text(path, "\n\n".join(d.replace("\n\n", "\n") for d in docs) + "\n")
        sources.append(str(path))
    return sources


def run_continue_pretrain(recipe: Recipe) -> dict[str, Any]:
    t0 = time.perf_counter()
    spec = recipe.continue_pretrain
    out = stage_dir(recipe, "continue_pretrain")
    model, tok = load_model_dir_or_spec(recipe.model)
    convert(model, recipe)
    cfg = recipe.train_config("continue_pretrain")
    accelerator = make_accelerator(cfg.precision)
    corpus = PackedCorpus(
        tok, materialize_sources(recipe, out), spec.corpus.block_size, token_budget=spec.corpus.tokens
    )
    tokens_per_step = cfg.batch_size * cfg.grad_accum * accelerator.num_processes * spec.corpus.block_size
    # The token budget decides the length of the stage; train.steps only caps it.
    budget_steps = max(1, math.ceil(spec.corpus.tokens / tokens_per_step))
    if cfg.steps > budget_steps or "steps" not in {**recipe.train, **spec.train}:
        cfg.steps = budget_steps
    model.to(accelerator.device)
    batches = StreamBatches(
        corpus,
        cfg.batch_size,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
    )
    result = train(
        model, batches, lm_loss, cfg, out / "train", desc="continue_pretrain", accelerator=accelerator
    )
    model_dir = out / "model"
    weights = weights_for_saving(model)  # a sharded model's full weights, gathered by every rank
    if accelerator.is_main_process:
        save(accelerator.unwrap_model(model), model_dir, tokenizer=tok, weights=weights)
        write_stage(
            out,
            {
                "stage": "continue_pretrain",
                "model_dir": str(model_dir),
                "train": result_dict(result),
                "wall_seconds": time.perf_counter() - t0,
                "corpus": {"sources": spec.corpus.sources, "block_size": spec.corpus.block_size,
                           "token_budget": spec.corpus.tokens},
                "precision": cfg.precision,
            },
        )  # fmt: skip
    accelerator.wait_for_everyone()
    return {"model_dir": str(model_dir), "train": result_dict(result), "wall_seconds": time.perf_counter() - t0}
