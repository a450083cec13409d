"""Token sampling from one logits row: greedy, temperature, top-k, top-p (nucleus)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BitDistillError

_NUCLEUS_PREFILTER = 1024
NONFINITE = (
    "the model produced NaN/inf logits: its weights hold NaN/inf (a diverged training run?); re-pack it from "
    "a healthy checkpoint"
)


@dataclass(frozen=True)
class SamplingParams:
    """temperature <= 0 means greedy; top_k <= 0 and top_p >= 1 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id drawn from `logits` (1-D) under `params` (top-k first, then top-p, like transformers)."""
    if not np.isfinite(logits).all():
        raise BitDistillError(NONFINITE)
    if params.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / params.temperature
    zmax, v = z.max(), z.shape[0]
    if 0 < params.top_k < v:
        idx = np.argpartition(-z, params.top_k - 1)[: params.top_k]
        norm = np.exp(z[idx] - zmax).sum()
    else:
        norm = np.exp(z - zmax).sum()
        idx = np.arange(v)
        if params.top_p < 1.0 and v > _NUCLEUS_PREFILTER:
            # The nucleus lies inside the top-1024 whenever their mass reaches top_p: sort only those.
            cand = np.argpartition(-z, _NUCLEUS_PREFILTER - 1)[:_NUCLEUS_PREFILTER]
            if np.exp(z[cand] - zmax).sum() / norm >= params.top_p:
                idx = cand
    idx = idx[np.argsort(-z[idx], kind="stable")]
    p = np.exp(z[idx] - zmax)
    if params.top_p < 1.0:
        keep = min(int(np.searchsorted(np.cumsum(p) / norm, params.top_p)) + 1, len(idx))
        idx, p = idx[:keep], p[:keep]
    return int(rng.choice(idx, p=p / p.sum()))
