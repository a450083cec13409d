"""Evaluate any checkpoint directory on a task: FP or BitNet (bitdistill/HF dirs), and packed directories.

Classification is scored by label-word log-likelihood (`data.scoring`), giving accuracy and macro-F1;
summarization generates with greedy or beam search (`generate.py`) and scores ROUGE-1/2/L/Lsum and BLEU.
Packed directories (written by `bitdistill pack`) run on the native runtime's engine instead of torch.
The result is a JSON-friendly dict: the metrics, the counts, what model was evaluated, timing, and
optionally the per-example predictions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..data.tasks import Example, Task, get_task
from ..errors import BitDistillError
from ..model.io import is_packed_dir
from ..train.distributed import across_ranks, is_main
from .metrics import classification_metrics, summarization_metrics


def evaluate_packed(
    path: str | os.PathLike,
    task: Task,
    examples: Sequence[Example],
    *,
    max_length: int = 512,
    max_new_tokens: int = 128,
    num_beams: int = 1,
    threads: int | None = None,
    progress: bool = False,
    keep_predictions: bool = False,
    **_ignored: Any,
) -> dict[str, Any]:
    """Metrics of a packed directory on the native runtime (no torch in the forward pass).

    Classification uses the runtime's label-word scoring (the same rule as `data.scoring`, one example at
    a time); summarization decodes greedily with the engine from the prompt ids training would use.
    """
    from ..runtime.engine import load, load_tokenizer

    t0 = time.perf_counter()
    engine = load(path, threads=threads)
    bar = _bar(progress, len(examples), "evaluating (packed)")
    out: dict[str, Any] = {}
    try:
        if task.kind == "classification":
            from ..runtime.scoring import score_label_words

            examples = [ex for ex in examples if ex.label is not None]
            if not examples:
                raise BitDistillError(f"task {task.name}: no labelled examples to evaluate")
            tok = load_tokenizer(path)
            preds = []
            for ex in examples:
                scores = score_label_words(engine, tok, ex.prompt, task.label_words, max_length)
                preds.append(int(scores.argmax()))
                bar.update(1)
            gold = [int(ex.label) for ex in examples]  # type: ignore[arg-type]
            out["metrics"] = classification_metrics(preds, gold)
            if keep_predictions:
                out["predictions"] = [{"label": g, "prediction": p} for g, p in zip(gold, preds, strict=True)]
        else:
            if num_beams != 1:
                raise BitDistillError(
                    f"{path}: the packed runtime decodes greedily; use --beams 1, or evaluate the BitNet "
                    "directory it was packed from for beam search"
                )
            from ..model.io import load_tokenizer as load_hf_tokenizer
            from .generate import prompt_ids

            hf_tok = load_hf_tokenizer(path)
            stop = [hf_tok.eos_token_id] if hf_tok.eos_token_id is not None else []
            hyps = []
            for ids in prompt_ids(hf_tok, examples, max_length, max_new_tokens):
                new, _ = engine.generate(ids, max_new_tokens, stop_ids=stop)
                hyps.append(hf_tok.decode(new, skip_special_tokens=True).strip())
                bar.update(1)
            refs = [ex.target.strip() for ex in examples]
            out["metrics"] = summarization_metrics(hyps, refs)
            out["generation"] = {"max_new_tokens": max_new_tokens, "num_beams": 1}
            if keep_predictions:
                out["predictions"] = [
                    {"reference": r, "prediction": h} for r, h in zip(refs, hyps, strict=True)
                ]
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    out["seconds"] = seconds
    out["examples_per_second"] = len(examples) / max(seconds, 1e-9)
    return out


def _bar(progress: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not progress)


def load_for_eval(path: str | os.PathLike, device: str | None = None):
    """(model in eval mode, tokenizer, description dict) for a model directory or model spec (not packed)."""
    from ..model.hub import load_any

    model, tok = load_any(path)
    if tok is None:
        raise BitDistillError(f"{path}: no tokenizer beside the model; save the model with its tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    settings = getattr(model.config, "bitdistill", None)
    params = sum(p.numel() for p in {id(q): q for q in model.parameters()}.values())
    return model, tok, {"format": "bitnet" if settings else "fp", "settings": settings, "parameters": params}


def evaluate_model(
    model,
    tokenizer,
    task: Task,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_length: int = 512,
    max_new_tokens: int = 128,
    num_beams: int = 1,
    progress: bool = False,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Metrics of `model` on labelled `examples` of `task` (see the module docstring)."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if task.kind == "classification":
        from ..data.scoring import check_label_words, score_label_words

        examples = [ex for ex in examples if ex.label is not None]  # unlabeled (test) rows cannot be scored
        if not examples:
            raise BitDistillError(f"task {task.name}: no labelled examples to evaluate")
        check_label_words(tokenizer, task.label_words, examples[0].prompt)
        # Under `accelerate launch` each process scores its slice and all gather the predictions.
        preds = across_ranks(
            lambda part: score_label_words(
                model, tokenizer, part, task.label_words, batch_size=batch_size, max_length=max_length,
                progress=progress and is_main(),
            ).argmax(dim=-1).tolist(),
            examples,
        )  # fmt: skip
        gold = [int(ex.label) for ex in examples]  # type: ignore[arg-type]
        out["metrics"] = classification_metrics(preds, gold)
        if keep_predictions:
            out["predictions"] = [{"label": g, "prediction": p} for g, p in zip(gold, preds, strict=True)]
    else:
        from .generate import generate

        if not examples:
            raise BitDistillError(f"task {task.name}: no examples to evaluate")
        hyps = across_ranks(
            lambda part: generate(
                model, tokenizer, part, max_new_tokens=max_new_tokens, num_beams=num_beams,
                batch_size=batch_size, max_length=max_length, progress=progress and is_main(),
            ),
            examples,
        )  # fmt: skip
        refs = [ex.target.strip() for ex in examples]
        out["metrics"] = summarization_metrics(hyps, refs)
        out["generation"] = {"max_new_tokens": max_new_tokens, "num_beams": num_beams}
        if keep_predictions:
            out["predictions"] = [{"reference": r, "prediction": h} for r, h in zip(refs, hyps, strict=True)]
    seconds = time.perf_counter() - t0
    out["seconds"] = seconds
    out["examples_per_second"] = len(examples) / max(seconds, 1e-9)
    return out


def evaluate_dir(
    model_dir: str | os.PathLike,
    task: str | Task = "sst2",
    data: str | os.PathLike | None = None,
    split: str = "dev",
    limit: int | None = None,
    task_options: dict[str, Any] | None = None,
    device: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Load `model_dir`, read `split` of `task` (from `data`, else the task's hub dataset), evaluate.

    Extra keyword arguments go to `evaluate_model` (batch_size, max_length, max_new_tokens, num_beams,
    progress, keep_predictions).
    """
    task_obj = task if isinstance(task, Task) else get_task(task, **(task_options or {}))
    examples = task_obj.load(split, path=data, limit=limit)
    if is_packed_dir(model_dir):
        info: dict[str, Any] = {"format": "packed"}
        result = evaluate_packed(model_dir, task_obj, examples, **kwargs)
    else:
        model, tok, info = load_for_eval(model_dir, device)
        kwargs.pop("threads", None)
        result = evaluate_model(model, tok, task_obj, examples, **kwargs)
    return {
        "model_dir": str(model_dir),
        "model": info,
        "task": task_obj.name,
        "kind": task_obj.kind,
        "split": split,
        "data": str(data) if data is not None else None,
        "limit": limit,
        **result,
    }
