"""One training loop for every stage, with atomic, resumable checkpoints."""

from .batches import ShuffledBatches, StreamBatches
from .checkpoint import latest_checkpoint
from .loop import TrainConfig, TrainResult, make_accelerator, resolve_precision, train

__all__ = [
    "ShuffledBatches",
    "StreamBatches",
    "TrainConfig",
    "TrainResult",
    "latest_checkpoint",
    "make_accelerator",
    "resolve_precision",
    "train",
]
