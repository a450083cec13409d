"""Label-word scoring on the native engine: the same rule as bitdistill.data.scoring, without torch.

score(word) = Σ_t log p(word_t | prompt, word_<t); the prediction is the arg-max over the task's label
words. Target tokens are those of the joined text `prompt + word` when that starts with the prompt's own
tokens (BPE folds the leading space into the word), else the word tokenized alone — as the trainer does.
The prompt is run once; each multi-token word continues from the cached prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import BitDistillError
from .engine import Engine


def encode(tokenizer, text: str, special: bool = True) -> list[int]:
    """Token ids of `text` with a `tokenizers.Tokenizer` (special tokens per its post-processor)."""
    return list(tokenizer.encode(text, add_special_tokens=special).ids)


def target_ids(tokenizer, prompt: str, target: str, prompt_ids: list[int]) -> list[int]:
    joint = encode(tokenizer, prompt + target)
    n = len(prompt_ids)
    if len(joint) > n and joint[:n] == prompt_ids:
        return joint[n:]
    return encode(tokenizer, target, special=False)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _left_cut(ids: list[int], budget: int, bos: int | None) -> list[int]:
    if len(ids) <= budget:
        return ids
    if bos is not None and ids and ids[0] == bos and budget > 1:
        return [bos] + ids[len(ids) - budget + 1 :]
    return ids[len(ids) - budget :]


def score_label_words(
    engine: Engine, tokenizer, prompt: str, label_words: Sequence[str], max_length: int = 1024
) -> np.ndarray:
    """Summed log-likelihood of each label word after `prompt` (float64 [len(label_words)])."""
    ctx = int(engine.arch.get("max_position_embeddings") or 0)
    if ctx:  # prompts are cut from the left to fit: never past the positions the model was trained on
        max_length = min(max_length, ctx)
    p_ids = encode(tokenizer, prompt)
    targets = [target_ids(tokenizer, prompt, w, p_ids) for w in label_words]
    for w, t in zip(label_words, targets, strict=True):
        if not t:
            raise BitDistillError(f"label word {w!r} encodes to no tokens; choose a visible word")
    longest = max(len(t) for t in targets)
    bos = engine.arch.get("bos_token_id")
    p_ids = _left_cut(p_ids, max_length - longest, bos if isinstance(bos, int) else None)
    if not p_ids:
        raise BitDistillError("the prompt encodes to no tokens; scoring needs a prompt")
    engine.reset(len(p_ids) + longest)
    first = _log_softmax(engine.forward(p_ids))
    scores = np.zeros(len(targets))
    for i, t in enumerate(targets):
        s = first[t[0]]
        if len(t) > 1:
            engine.pos = len(p_ids)  # continue from the cached prompt; later cache rows are overwritten
            lp = _log_softmax(engine.forward(t[:-1], all_logits=True))
            s += sum(lp[j, t[j + 1]] for j in range(len(t) - 1))
        scores[i] = s
    if not np.isfinite(scores).all():
        from .sampling import NONFINITE

        raise BitDistillError(NONFINITE)
    return scores
