"""Label-word scoring on the native engine: the same rule as bitdistill.data.scoring, without torch.

score(word) = Σ_t log p(word_t | prompt, word_<t); the prediction is the arg-max over the task's label
words. Target tokens are those of the joined text `prompt + word` when that starts with the prompt's own
tokens (BPE folds the leading space into the word), else the word tokenized alone — as the trainer does.
The prompt is run once; each multi-token word continues from the cached prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import BitDistillError
from .engine import Engine


def encode(tokenizer, text: str, special: bool = True) -> list[int]:
    """Token ids of `text` with a `tokenizers.Tokenizer` (special tokens per its post-processor)."""
    return list(tokenizer.encode(text, add_special_tokens=special).ids)


def check_words(tok, words: list[str]) -> None:
    """Label words must encode to distinct token sequences without the unknown token."""
    unk_token = getattr(tok.model, "unk_token", None)
    unk = tok.token_to_id(unk_token) if unk_token else None
    seen: dict[tuple[int, ...], str] = {}
    for w in words:
        ids = tuple(encode(tok, w, special=False))
        if unk is not None and unk in ids:
            raise BitDistillError(
                f"label word {w!r} encodes to the unknown token {unk_token!r}; choose a word in the model's "
                "vocabulary"
            )
        if ids in seen:
            raise BitDistillError(
                f"label words {seen[ids]!r} and {w!r} encode to the same tokens {list(ids)}; choose words "
                "that differ"
            )
        seen[ids] = w


def target_ids(tokenizer, prompt: str, target: str, prompt_ids: list[int]) -> list[int]:
    joint = encode(tokenizer, prompt + target)
    n = len(prompt_ids)
    if len(joint) > n and joint[:n] == prompt_ids:
        return joint[n:]
    return encode(tokenizer, target, special=False)


def _log_norm(x: np.ndarray) -> np.ndarray:
    """log Σ exp(x) over the last axis in float64, so log p(token) = x[token] - _log_norm(x): only the label
    words' log-probabilities are read, not the whole vocabulary's. exp runs in float32 (numpy's SIMD path, a
    few times the float64 one; ~1e-7 relative), the sum and the log in float64."""
    m = x.max(axis=-1, keepdims=True)
    return m[..., 0].astype(np.float64) + np.log(np.exp(x - m).sum(axis=-1, dtype=np.float64))


def _left_cut(ids: list[int], budget: int, bos: int | None) -> list[int]:
    if len(ids) <= budget:
        return ids
    if bos is not None and ids and ids[0] == bos and budget > 1:
        return [bos] + ids[len(ids) - budget + 1 :]
    return ids[len(ids) - budget :]


def _prepare(engine: Engine, tokenizer, prompt: str, label_words: Sequence[str], max_length: int):
    """(prompt ids cut from the left to fit, target ids of each label word) for one prompt."""
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
    return p_ids, targets


def _checked(scores: np.ndarray) -> np.ndarray:
    if not np.isfinite(scores).all():
        from .sampling import NONFINITE

        raise BitDistillError(NONFINITE)
    return scores


def score_label_words(
    engine: Engine, tokenizer, prompt: str, label_words: Sequence[str], max_length: int = 1024
) -> np.ndarray:
    """Summed log-likelihood of each label word after `prompt` (float64 [len(label_words)])."""
    p_ids, targets = _prepare(engine, tokenizer, prompt, label_words, max_length)
    longest = max(len(t) for t in targets)
    engine.reset(len(p_ids) + longest)
    first = engine.forward(p_ids)
    norm = _log_norm(first)
    scores = np.zeros(len(targets))
    for i, t in enumerate(targets):
        s = first[t[0]] - norm
        if len(t) > 1:
            engine.pos = len(p_ids)  # continue from the cached prompt; later cache rows are overwritten
            lg = engine.forward(t[:-1], all_logits=True)
            z = _log_norm(lg)
            s += sum(lg[j, t[j + 1]] - z[j] for j in range(len(t) - 1))
        scores[i] = s
    return _checked(scores)


BATCH_TOKENS = 512
# a shared prompt prefix is computed once when that saves at least this many tokens: its own call streams
# every weight once (~3-5 tokens' time on SmolLM2) and copies its rows to each prompt
MIN_SHARED_TOKENS = 32


def _slots(item) -> int:
    """Cache slots one prepared prompt takes: its tokens + its longest label word but that word's last token."""
    p_ids, targets = item
    return len(p_ids) + max(len(t) for t in targets) - 1


def _batches(prepared: list, budget: int) -> Iterator[list[int]]:
    """Consecutive prompt indices whose cache slots (_slots) fit `budget`; a prompt longer than the budget
    gets a batch of its own."""
    batch, used = [], 0
    for i, item in enumerate(prepared):
        need = _slots(item)
        if batch and used + need > budget:
            yield batch
            batch, used = [], 0
        batch.append(i)
        used += need
    if batch:
        yield batch


def shared_prefix(ids: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one of its own (its last logits come from it)."""
    if not ids:
        return 0
    n = min(len(p) for p in ids) - 1
    first = ids[0]
    for p in ids[1:]:
        n = min(n, next((i for i in range(n) if p[i] != first[i]), n))
    return max(n, 0)


def iter_label_word_scores(
    engine: Engine,
    tokenizer,
    prompts: Sequence[str],
    label_words: Sequence[str],
    max_length: int = 1024,
    batch_tokens: int = BATCH_TOKENS,
    share_prefix: bool = True,
) -> Iterator[np.ndarray]:
    """score_label_words for many prompts, yielded in order, with many prompts per native forward.

    Padding-free: a batch's prompts lie side by side in the KV cache, each at its own positions 0..n-1 and
    attending only to itself, so every prompt is computed as it would be alone. One forward prefills the
    whole batch and returns each prompt's last logits (every label word's first token); each label word
    with more tokens then runs one more forward for the whole batch, its tokens continuing every prompt's
    cached rows (slots reserved after each prompt), as the per-prompt scorer does.

    share_prefix: the tokens all prompts start with (a template's head, e.g. SST-2's "Sentence:") are
    computed once for the whole call and their cached keys/values copied to the start of each prompt
    (Engine.copy_kv); a row's keys and values depend only on the rows before it, so the scores are the same
    bits either way. The prefix stays in the engine's cache from batch to batch: nothing else may use the
    engine until the iterator is exhausted (its callers consume it in one loop).
    """
    if batch_tokens < 1:
        raise BitDistillError(f"batch_tokens={batch_tokens}: must be at least 1")
    prepared = [_prepare(engine, tokenizer, p, label_words, max_length) for p in prompts]
    P = shared_prefix([p for p, _ in prepared]) if share_prefix else 0
    if (len(prepared) - 1) * P < MIN_SHARED_TOKENS:  # what it saves would not pay for its own native call
        P = 0
    batches = list(_batches(prepared, batch_tokens))
    # one cache for every batch, so the prefix in slots [0, P) is computed once for the whole run
    need = [sum(_slots(prepared[i]) for i in idx) for idx in batches]
    own_max = max((sum(len(prepared[i][0]) - P for i in idx) for idx in batches), default=1)
    engine.reset(max(P + max(need, default=1), batch_tokens), max_batch=max(own_max, P, batch_tokens))
    if P:
        engine.forward_seqs(prepared[0][0][:P], np.arange(P), np.zeros(P), [])  # the cache only, no head
    for idx in batches:
        items = [prepared[i] for i in idx]
        lens = np.array([len(p) for p, _ in items])
        slots = np.array([_slots(item) for item in items])
        base = P + np.concatenate([[0], np.cumsum(slots)[:-1]])  # slots [0, P): the shared prefix
        own = lens - P  # the tokens each prompt computes itself
        for b in base if P else ():
            engine.copy_kv(0, int(b), P)
        tokens = np.concatenate([p[P:] for p, _ in items])
        pos = np.concatenate([np.arange(P, n) for n in lens])
        first = engine.forward_seqs(tokens, pos, np.repeat(base, own), np.cumsum(own) - 1)
        norm = _log_norm(first)
        scores = np.array([[first[s, t[0]] - norm[s] for t in ts] for s, (_, ts) in enumerate(items)])
        for w in range(len(label_words)):
            conts = [(s, ts[w]) for s, (_, ts) in enumerate(items) if len(ts[w]) > 1]
            if not conts:
                continue
            n = np.array([len(t) - 1 for _, t in conts])
            who = np.array([s for s, _ in conts])
            tokens = np.concatenate([t[:-1] for _, t in conts])
            pos = np.concatenate([lens[s] + np.arange(k) for s, k in zip(who, n, strict=True)])
            lg = engine.forward_seqs(tokens, pos, np.repeat(base[who], n), np.arange(n.sum()))
            z = _log_norm(lg)
            row = 0
            for s, t in conts:
                scores[s, w] += sum(lg[row + j, t[j + 1]] - z[row + j] for j in range(len(t) - 1))
                row += len(t) - 1
        for s in range(len(items)):
            yield _checked(scores[s])


def score_label_words_batch(
    engine: Engine,
    tokenizer,
    prompts: Sequence[str],
    label_words: Sequence[str],
    max_length: int = 1024,
    batch_tokens: int = BATCH_TOKENS,
    share_prefix: bool = True,
) -> list[np.ndarray]:
    """Summed log-likelihood of each label word after each prompt ([len(label_words)] float64 per prompt),
    equal to score_label_words prompt by prompt but with many prompts per forward (iter_label_word_scores)."""
    return list(
        iter_label_word_scores(
            engine, tokenizer, prompts, label_words, max_length, batch_tokens, share_prefix
        )
    )
