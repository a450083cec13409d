"""Task metrics: accuracy and macro-F1 for classification, ROUGE and BLEU for summarization.

All metrics are returned as fractions in [0, 1] (BLEU is sacrebleu's score / 100), so a results file holds
one scale everywhere; reports print them as percentage points.

ROUGE comes from Google's `rouge-score` (the package the CNN/DailyMail literature uses), with the Porter
stemmer and F-measures averaged over examples. ROUGE-Lsum is the summary-level LCS over *sentences*
separated by newlines; CNN/DailyMail highlights are already one sentence per line, and text without
newlines is split after sentence-final punctuation first (the `evaluate`/`datasets` convention does the
same with nltk, which needs a download we cannot assume offline). BLEU is sacrebleu's corpus BLEU with its
default 13a tokenizer and exponential smoothing, as its signature states.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..errors import BitDistillError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _check_lengths(a: Sequence, b: Sequence, what: str) -> None:
    if len(a) != len(b):
        raise BitDistillError(f"{what}: {len(a)} predictions for {len(b)} references; pass one each")
    if not a:
        raise BitDistillError(f"{what}: no examples to score")


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of predictions equal to their label."""
    _check_lengths(predictions, labels, "accuracy")
    return sum(int(p == y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


def per_class_f1(predictions: Sequence[int], labels: Sequence[int]) -> dict[int, float]:
    """F1 = 2·TP / (2·TP + FP + FN) of every class that occurs among the labels or the predictions."""
    _check_lengths(predictions, labels, "macro-F1")
    classes = sorted(set(labels) | set(predictions))
    out: dict[int, float] = {}
    for c in classes:
        tp = sum(1 for p, y in zip(predictions, labels, strict=True) if p == c and y == c)
        fp = sum(1 for p, y in zip(predictions, labels, strict=True) if p == c and y != c)
        fn = sum(1 for p, y in zip(predictions, labels, strict=True) if p != c and y == c)
        out[c] = 2 * tp / (2 * tp + fp + fn)  # the class occurs, so the denominator is > 0
    return out


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean of the per-class F1 (scikit-learn's `f1_score(average="macro")` convention:
    the classes are those present among labels or predictions)."""
    scores = per_class_f1(predictions, labels)
    return sum(scores.values()) / len(scores)


BOOTSTRAP_RESAMPLES = 2000


def bootstrap_interval(
    correct: Sequence[bool], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the accuracy: resample the examples with replacement `resamples`
    times (a fixed seed, so a report is reproducible) and take the (1 ± level)/2 quantiles of the means."""
    import numpy as np

    if not correct:
        raise BitDistillError("bootstrap interval: no examples to resample")
    hits = np.asarray(correct, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(hits), size=(resamples, len(hits)))
    means = hits[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def classification_metrics(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, Any]:
    """{"accuracy", "accuracy_ci95" ([low, high], percentile bootstrap), "macro_f1", "n"} of label-id
    predictions."""
    acc = accuracy(predictions, labels)
    return {
        "accuracy": acc,
        "accuracy_ci95": list(bootstrap_interval([p == y for p, y in zip(predictions, labels, strict=True)])),
        "macro_f1": macro_f1(predictions, labels),
        "n": len(labels),
    }


def sentences_per_line(text: str) -> str:
    """`text` with one sentence per line (kept as is when it already has line breaks), for ROUGE-Lsum."""
    text = text.strip()
    if "\n" in text:
        return "\n".join(line.strip() for line in text.splitlines() if line.strip())
    return "\n".join(s for s in _SENTENCE_END.split(text) if s)


def rouge(predictions: Sequence[str], references: Sequence[str], stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure over example pairs (rouge-score)."""
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references, "ROUGE")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(sentences_per_line(ref), sentences_per_line(pred))  # (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: total / len(predictions) for name, total in totals.items()}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults) as a fraction in [0, 1]; one reference per prediction."""
    import sacrebleu

    _check_lengths(predictions, references, "BLEU")
    flat = [" ".join(p.split()) for p in predictions]  # line breaks inside a summary are just spaces
    refs = [" ".join(r.split()) for r in references]
    return sacrebleu.corpus_bleu(flat, [refs]).score / 100.0


def summarization_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "n"}."""
    return {**rouge(predictions, references), "bleu": bleu(predictions, references), "n": len(references)}
