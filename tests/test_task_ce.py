"""`task_ce` (the LM head only at the positions the task loss reads) against a hand-written loop."""

from __future__ import annotations

import math

import pytest
import torch

from bitdistill.data.encode import IGNORE_INDEX
from bitdistill.distill import target_positions, task_ce
from bitdistill.model.convert import to_bitnet
from tiny_models import FAMILIES, tiny_model


def right_padded_batch(vocab: int) -> dict[str, torch.Tensor]:
    """Three rows of different lengths, targets at different columns (one row has a two-token target)."""
    g = torch.Generator().manual_seed(0)
    lengths, target_lengths = [9, 7, 11], [1, 2, 1]
    width = max(lengths)
    ids = torch.randint(0, vocab, (3, width), generator=g)
    mask = torch.zeros(3, width, dtype=torch.long)
    labels = torch.full((3, width), IGNORE_INDEX)
    for b, (n, k) in enumerate(zip(lengths, target_lengths, strict=True)):
        mask[b, :n] = 1
        labels[b, n - k : n] = ids[b, n - k : n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def naive_ce(model, batch) -> float:
    """Mean over target tokens of -log softmax(full logits at t)[label at t+1], as Python floats."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            y = int(batch["labels"][b, t + 1])
            if y != IGNORE_INDEX:
                row = logits[b, t].double().tolist()
                m = max(row)
                total += m + math.log(sum(math.exp(x - m) for x in row)) - row[y]
                count += 1
    return total / count


def test_target_positions_are_the_columns_before_any_target():
    batch = right_padded_batch(128)
    # row 0 targets column 8 (read at 7), row 1 columns 5-6 (read at 4-5), row 2 column 10 (read at 9)
    assert target_positions(batch["labels"]).tolist() == [4, 5, 7, 9]


@pytest.mark.parametrize("family", FAMILIES)
def test_task_ce_equals_the_loss_over_full_logits(family):
    model = tiny_model(family).eval()
    batch = right_padded_batch(model.config.vocab_size)
    with torch.no_grad():
        assert float(task_ce(model, batch)) == pytest.approx(naive_ce(model, batch), rel=1e-5)


def test_task_ce_gradients_match_the_full_head_and_reach_a_bitnet_model():
    model = to_bitnet(tiny_model("qwen3"))
    batch = right_padded_batch(model.config.vocab_size)
    task_ce(model, batch).backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift, labels = logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1)
    torch.nn.functional.cross_entropy(shift, labels, ignore_index=IGNORE_INDEX).backward()
    assert fast.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


class FullLogitsOnly(torch.nn.Module):
    """A causal LM whose forward has no `logits_to_keep` (as remote-code models may): the full path runs."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_task_ce_falls_back_to_full_logits_without_logits_to_keep():
    model = FullLogitsOnly(tiny_model("llama").eval())
    batch = right_padded_batch(128)
    with torch.no_grad():
        assert float(task_ce(model, batch)) == pytest.approx(naive_ce(model, batch), rel=1e-5)
