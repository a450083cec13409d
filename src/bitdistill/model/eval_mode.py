"""`with eval_mode(model):` run a model in eval mode and give it back in the mode it came in.

Scoring and generation are called both on a model under training (dev evaluation between steps) and on a
loaded one; switching to eval mode without restoring would silently turn dropout off for the rest of
training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
