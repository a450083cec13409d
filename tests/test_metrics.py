"""Metric wrappers against hand-computed values, and batched generation against a naive greedy loop."""

from __future__ import annotations

import math

import pytest
import torch

from bitdistill.errors import BitDistillError
from bitdistill.eval.metrics import (
    accuracy,
    bleu,
    classification_metrics,
    macro_f1,
    per_class_f1,
    rouge,
    sentences_per_line,
    summarization_metrics,
)


def test_accuracy_and_macro_f1_by_hand():
    preds = [0, 1, 1, 2, 0, 2, 1]
    gold = [0, 1, 2, 2, 1, 2, 0]
    # correct at 0, 1, 3, 5
    assert accuracy(preds, gold) == pytest.approx(4 / 7)
    # class 0: tp=1 (i0), fp=1 (i4), fn=1 (i6) -> 2/(2+1+1); class 1: tp=1, fp=2 (i2, i6), fn=1 (i4)
    # -> 2/(2+2+1); class 2: tp=2 (i3, i5), fp=0, fn=1 (i2) -> 4/5
    f = {0: 2 / 4, 1: 2 / 5, 2: 4 / 5}
    assert per_class_f1(preds, gold) == pytest.approx(f)
    assert macro_f1(preds, gold) == pytest.approx((0.5 + 0.4 + 0.8) / 3)
    m = classification_metrics(preds, gold)
    ci = m.pop("accuracy_ci95")
    assert m == {"accuracy": pytest.approx(4 / 7), "macro_f1": pytest.approx(1.7 / 3), "n": 7}
    assert ci[0] <= 4 / 7 <= ci[1]


def test_bootstrap_interval_matches_the_normal_approximation():
    from bitdistill.eval.metrics import bootstrap_interval

    # 700 of 872 right: the binomial standard error is sqrt(p(1-p)/n); a 95 % interval is ±1.96 of it.
    p, n = 700 / 872, 872
    lo, hi = bootstrap_interval([True] * 700 + [False] * 172)
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    assert lo == pytest.approx(p - half, abs=0.004) and hi == pytest.approx(p + half, abs=0.004)
    assert bootstrap_interval([True] * 10) == (1.0, 1.0)  # nothing to vary
    assert bootstrap_interval([True, False] * 50) == bootstrap_interval([True, False] * 50)  # fixed seed
    with pytest.raises(BitDistillError, match="no examples"):
        bootstrap_interval([])


def test_macro_f1_counts_classes_only_predicted():
    # class 1 never occurs in the labels but is predicted once: its F1 is 0 and it is averaged in
    # (scikit-learn's average="macro" convention); class 0: tp=2, fp=0, fn=1 -> 4/5.
    assert macro_f1([0, 0, 1], [0, 0, 0]) == pytest.approx((4 / 5 + 0.0) / 2)
    assert macro_f1([1, 1], [1, 1]) == 1.0


def test_metric_errors():
    with pytest.raises(BitDistillError, match="2 predictions for 3"):
        accuracy([0, 1], [0, 1, 1])
    with pytest.raises(BitDistillError, match="no examples"):
        rouge([], [])


def _f(p: float, r: float) -> float:
    return 2 * p * r / (p + r)


def test_rouge_by_hand():
    pred1, ref1 = "the cat sat on the red mat", "the cat sat on the mat"
    pred2, ref2 = "a dog barked", "the dog barked loudly"
    # pair 1: unigram overlap 6 (the x2, cat, sat, on, mat) of 7 predicted / 6 reference tokens
    r1_1 = _f(6 / 7, 6 / 6)
    # bigram overlap 4 (the cat, cat sat, sat on, on the) of 6 / 5
    r2_1 = _f(4 / 6, 4 / 5)
    # LCS "the cat sat on the mat" = 6
    rl_1 = _f(6 / 7, 6 / 6)
    # pair 2: unigrams dog, barked: 2 of 3 / 4; bigram "dog barked": 1 of 2 / 3; LCS 2
    r1_2, r2_2, rl_2 = _f(2 / 3, 2 / 4), _f(1 / 2, 1 / 3), _f(2 / 3, 2 / 4)
    got = rouge([pred1, pred2], [ref1, ref2])
    assert got["rouge1"] == pytest.approx((r1_1 + r1_2) / 2)
    assert got["rouge2"] == pytest.approx((r2_1 + r2_2) / 2)
    assert got["rougeL"] == pytest.approx((rl_1 + rl_2) / 2)
    assert got["rougeLsum"] == pytest.approx((rl_1 + rl_2) / 2)  # one sentence each: Lsum == L


def test_rouge_lsum_is_summary_level():
    # Sentences swapped: the whole-text LCS is 3 of 6 tokens (F = 0.5), but each reference sentence is
    # matched in full by one predicted sentence, so the summary-level LCS gives F = 1.
    pred, ref = "the cat sat. the dog ran.", "the dog ran. the cat sat."
    assert sentences_per_line(pred) == "the cat sat.\nthe dog ran."
    got = rouge([pred], [ref])
    assert got["rougeL"] == pytest.approx(0.5)
    assert got["rougeLsum"] == pytest.approx(1.0)


def _bleu(precisions: list[float], c: int, r: int) -> float:
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(sum(math.log(p) for p in precisions) / 4)


def test_bleu_by_hand():
    hyp1, ref1 = "the cat sat on the red mat", "the cat sat on the mat"
    # clipped n-gram matches: 6/7, 4/6, 3/5, 2/4; hypothesis longer than reference: BP = 1
    assert bleu([hyp1], [ref1]) == pytest.approx(_bleu([6 / 7, 4 / 6, 3 / 5, 2 / 4], 7, 6))
    hyp2, ref2 = "the cat sat on the", "the cat sat on the mat"
    # every n-gram matches; c=5 < r=6: BP = exp(1 - 6/5)
    assert bleu([hyp2], [ref2]) == pytest.approx(math.exp(-0.2))
    # corpus BLEU sums the counts of both pairs (not an average of sentence scores)
    corpus = _bleu([11 / 12, 8 / 10, 6 / 8, 4 / 6], 12, 12)
    assert bleu([hyp1, hyp2], [ref1, ref2]) == pytest.approx(corpus)
    assert corpus != pytest.approx((bleu([hyp1], [ref1]) + bleu([hyp2], [ref2])) / 2)


def test_summarization_metrics_keys():
    m = summarization_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert m == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0,
                 "bleu": pytest.approx(1.0), "n": 1}  # fmt: skip


# -- generation ------------------------------------------------------------------------------------------


def _naive_greedy(model, tokenizer, ids: list[int], max_new_tokens: int) -> str:
    """Greedy decoding without a cache or padding: argmax of the full forward, one token at a time."""
    seq = list(ids)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            seq.append(nxt)
            new.append(nxt)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_batched_generation_matches_naive_greedy():
    from bitdistill.data.tasks import Example
    from bitdistill.eval.generate import generate, prompt_ids
    from tiny_models import tiny_model, tiny_tokenizer

    model, tok = tiny_model("llama", seed=3).eval(), tiny_tokenizer()
    texts = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10", "w11 w12", "w13 w14 w15"]
    examples = [Example(prompt=f"{t} w0", target=" w9", spans=((0, len(t)),), eos=True) for t in texts]
    got = generate(model, tok, examples, max_new_tokens=6, num_beams=1, batch_size=3, max_length=64)
    ids = prompt_ids(tok, examples, 64, 6)
    want = [_naive_greedy(model, tok, i, 6) for i in ids]
    assert got == want
    assert all(g for g in got)  # a random model does not stop at once
    # beam search runs batched too, and a beam of 1 is greedy
    assert generate(model, tok, examples[:2], max_new_tokens=4, num_beams=3, batch_size=2, max_length=64)
    with pytest.raises(BitDistillError, match="leaves no room"):
        generate(model, tok, examples, max_new_tokens=64, max_length=64)


def test_prompt_shortened_to_leave_room_for_generation():
    from bitdistill.data.tasks import Example
    from bitdistill.eval.generate import prompt_ids
    from tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    text = " ".join(f"w{i}" for i in range(1, 40))
    prompt = f"{text} w0"
    ex = Example(prompt=prompt, target=" w3", spans=((0, len(text)),), eos=True)
    (ids,) = prompt_ids(tok, [ex], max_length=20, max_new_tokens=8)
    assert len(ids) == 12
    # the source text is cut from its end; the instruction after it (w0) survives
    assert tok.convert_ids_to_tokens(ids)[-1] == "w0"
    assert tok.convert_ids_to_tokens(ids)[:3] == ["w1", "w2", "w3"]
