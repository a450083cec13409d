"""Evaluation: task metrics, checkpoint and packed-model evaluation, generation, parameter memory."""

from .evaluate import evaluate_dir, evaluate_model, load_for_eval
from .metrics import accuracy, bleu, classification_metrics, macro_f1, rouge, summarization_metrics

__all__ = [
    "accuracy",
    "bleu",
    "classification_metrics",
    "evaluate_dir",
    "evaluate_model",
    "load_for_eval",
    "macro_f1",
    "rouge",
    "summarization_metrics",
]
