"""The demo's perplexity: exp of the mean next-token loss over every real (non-pad) token of the sentences,
checked against a token-by-token log-softmax written out here."""

from __future__ import annotations

import math

import torch

from bitdistill.cli.demo import perplexity
from tiny_models import tiny_model, tiny_tokenizer


def naive_perplexity(model, tokenizer, sentences: list[str]) -> float:
    total, count = 0.0, 0
    for s in sentences:  # one sentence at a time: no padding at all
        ids = tokenizer(s, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        for t in range(ids.shape[1] - 1):
            total -= float(logp[t, ids[0, t + 1]])
            count += 1
    return math.exp(total / count)


def test_perplexity_matches_a_token_by_token_reference():
    model, tok = tiny_model("llama", seed=7).eval(), tiny_tokenizer()
    sentences = ["w3 w17 w5 w9", "w40 w2", "w8 w1 w77 w6 w6 w30 w12 w99 w4", "w11"]
    # Batches of 3 sentences of different lengths (padded) and of 1 sentence with no next token at all.
    got = perplexity(model, tok, sentences, batch_size=3)
    assert math.isclose(got, naive_perplexity(model, tok, sentences), rel_tol=1e-4)
