"""The pipeline's end-of-run evaluation of a summarization task: target loss plus ROUGE/BLEU of generations."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bitdistill.eval.generate import prompt_ids
from bitdistill.eval.metrics import summarization_metrics
from bitdistill.pipeline import parse_recipe
from bitdistill.pipeline.dev_eval import dev_metrics as evaluate_model
from bitdistill.pipeline.task_data import load_task_data
from test_metrics import _naive_greedy
from tiny_models import tiny_model, tiny_tokenizer

ROWS = [{"doc": "w5 w6 w7 w8", "sum": "w6 w7"}, {"doc": "w9 w10", "sum": "w10 w11 w12"},
        {"doc": "w13 w14 w15", "sum": "w13"}]  # fmt: skip


def recipe_for(tmp_path, **task):
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    options = dict(kind="summarization", text_column="doc", target_column="sum", template="{text} w0")
    spec = dict(name="custom", path=str(tmp_path), options=options, max_length=64, eval_batch_size=2)
    return parse_recipe(
        {"model": "unused", "task": {**spec, **task}, "continue_pretrain": {"enabled": False}}
    )


def naive_target_loss(model, tok, recipe, data) -> float:
    """Teacher-forced CE of the target tokens, one example at a time, summed by hand."""
    from bitdistill.data.encode import encode_example

    total, count = 0.0, 0
    for ex in data.eval:
        enc = encode_example(tok, ex, recipe.task.max_length)
        ids, labels = torch.tensor([enc["input_ids"]]), enc["labels"]
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
        for t in range(1, len(labels)):
            if labels[t] != -100:
                total -= float(logp[t - 1, labels[t]])
                count += 1
    return total / count


@pytest.mark.parametrize("limit", [None, 2])
def test_summarization_eval_reports_loss_and_rouge_of_greedy_outputs(tmp_path, limit):
    recipe = recipe_for(tmp_path, generate_limit=limit, max_new_tokens=5)
    data = load_task_data(recipe, need_train=False)
    model, tok = tiny_model("llama", seed=4).eval(), tiny_tokenizer()
    got = evaluate_model(model, tok, data, recipe)
    assert got["eval_loss"] == pytest.approx(naive_target_loss(model, tok, recipe, data), rel=1e-4)
    examples = data.eval[:limit] if limit else data.eval
    hyps = [_naive_greedy(model, tok, ids, 5) for ids in prompt_ids(tok, examples, 64, 5)]
    want = summarization_metrics(hyps, [ex.target.strip() for ex in examples])
    want.pop("n")  # the generated count; "n" counts every row (the loss's)
    assert {k: got[k] for k in want} == pytest.approx(want)
    assert got["generated"] == len(examples) and got["n"] == len(ROWS)


def test_generation_can_be_switched_off(tmp_path):
    recipe = recipe_for(tmp_path, generate_limit=0)
    data = load_task_data(recipe, need_train=False)
    got = evaluate_model(tiny_model("llama", seed=4).eval(), tiny_tokenizer(), data, recipe)
    assert set(got) == {"eval_loss", "n"} and math.isfinite(got["eval_loss"])
