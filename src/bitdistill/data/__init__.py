"""Task data (prompt -> target examples), encoding with target-only labels, label-word scoring, and
packed text corpora for continued pre-training.

Names import on first use: `tasks` and `readers` need no torch, so the packed runtime's users (`classify`,
`bitdistill serve`) can build prompts without loading it; corpus/encode/scoring bring torch when used.
"""

from .._lazy import lazy_getattr

_LAZY = {
    "IGNORE_INDEX": ".encode",
    "TASKS": ".tasks",
    "Collator": ".encode",
    "Example": ".tasks",
    "PackedCorpus": ".corpus",
    "Task": ".tasks",
    "TaskDataset": ".encode",
    "check_label_words": ".scoring",
    "classification_predictions": ".scoring",
    "collate": ".encode",
    "encode_example": ".encode",
    "get_task": ".tasks",
    "iter_text": ".corpus",
    "pad_token_id": ".encode",
    "score_label_words": ".scoring",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
