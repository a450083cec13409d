"""Task data (prompt -> target examples), encoding with target-only labels, label-word scoring, and
packed text corpora for continued pre-training."""

from .corpus import PackedCorpus, iter_text
from .encode import IGNORE_INDEX, Collator, TaskDataset, collate, encode_example, pad_token_id
from .scoring import check_label_words, classification_predictions, score_label_words
from .tasks import TASKS, Example, Task, get_task

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "Collator",
    "Example",
    "PackedCorpus",
    "Task",
    "TaskDataset",
    "check_label_words",
    "classification_predictions",
    "collate",
    "encode_example",
    "get_task",
    "iter_text",
    "pad_token_id",
    "score_label_words",
]
