"""Tokenize prompt -> target examples for causal-LM training with loss on the target only.

`input_ids = prompt_ids + target_ids (+ EOS for summarization)` and `labels` is -100 on every prompt
position, so cross-entropy and distillation act on the target tokens only (the model shifts labels by
one internally, as every Hugging Face causal LM does).

Target tokens are the ones the tokenizer gives for the *joined* text `prompt + target` whenever that
tokenization starts with the prompt's own tokens (true for BPE tokenizers when the target starts with a
space); otherwise the target is tokenized on its own. Either way the prompt's tokens are the same as when
the prompt is encoded alone, which is what label-word scoring relies on.

Truncation never cuts the target. It shortens the example's source text(s) (the `{text}` / `{text_pair}`
spans of the template, longest first) by dropping tokens from the *end* of the source, so the template's
instruction before and after the text survives (for news articles the lead is what matters). Without spans
it drops prompt tokens from the left, keeping the tokens nearest the target.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..errors import BitDistillError
from .tasks import Example

IGNORE_INDEX = -100


def encode_target(tokenizer, prompt: str, target: str, prompt_ids: list[int]) -> list[int]:
    """Token ids of `target` as it continues `prompt` (see the module docstring)."""
    if not target:
        return []
    joint = tokenizer(prompt + target)["input_ids"]
    n = len(prompt_ids)
    if len(joint) > n and joint[:n] == prompt_ids:
        return list(joint[n:])
    return list(tokenizer(target, add_special_tokens=False)["input_ids"])


def _left_cut(tokenizer, ids: list[int], budget: int) -> list[int]:
    """Keep the last `budget` tokens (and a leading BOS, which the model expects first)."""
    if len(ids) <= budget:
        return ids
    bos = tokenizer.bos_token_id
    if bos is not None and ids and ids[0] == bos and budget > 1:
        return [bos] + ids[len(ids) - budget + 1 :]
    return ids[len(ids) - budget :]


def _prompt_ids(tokenizer, ex: Example, budget: int) -> list[int]:
    """Prompt token ids, shortened to at most `budget` tokens as the module docstring describes."""
    if not ex.spans or not getattr(tokenizer, "is_fast", False):
        return _left_cut(tokenizer, list(tokenizer(ex.prompt)["input_ids"]), budget)
    enc = tokenizer(ex.prompt, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    excess = len(ids) - budget
    if excess <= 0:
        return ids
    # Token indices inside each source span (special tokens have an empty (0, 0) offset).
    members = [
        [i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]
        for start, end in ex.spans
    ]
    drop: set[int] = set()
    while excess > 0 and any(members):
        longest = max(members, key=len)
        drop.add(longest.pop())  # drop from the end of the longest source text
        excess -= 1
    return _left_cut(tokenizer, [t for i, t in enumerate(ids) if i not in drop], budget)


def encode_example(
    tokenizer, ex: Example, max_length: int, add_eos: bool | None = None
) -> dict[str, list[int]]:
    """`{"input_ids", "labels"}` for one example; labels are -100 on the prompt.

    EOS follows the target when `ex.eos` is set (summarization examples); `add_eos` overrides that.
    """
    add_eos = ex.eos if add_eos is None else add_eos
    full_prompt = list(tokenizer(ex.prompt)["input_ids"])
    target = encode_target(tokenizer, ex.prompt, ex.target, full_prompt)
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise BitDistillError("the tokenizer has no eos_token; summarization targets need one to stop")
        target = target + [tokenizer.eos_token_id]
    budget = max_length - len(target)
    if budget < 1:
        raise BitDistillError(
            f"max_length={max_length} leaves no room for the prompt: the target alone is {len(target)} "
            "tokens "
            f"({ex.target[:60]!r}...). Raise max_length (targets are never truncated)"
        )
    prompt = full_prompt if len(full_prompt) <= budget else _prompt_ids(tokenizer, ex, budget)
    return {"input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target}


def pad_batch(seqs: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) long [B, longest] of token sequences padded with `pad_id` on the right, or on
    the left (generation: a decoder continues from every row's last position)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols] = torch.as_tensor(s, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: `input_ids` with `pad_id`, `attention_mask` 1/0, `labels` with -100."""
    if not features:
        raise ValueError("collate needs at least one feature")
    ids, mask = pad_batch([f["input_ids"] for f in features], pad_id)
    labels, _ = pad_batch([f.get("labels", f["input_ids"]) for f in features], IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_token_id(tokenizer) -> int:
    """The id to pad with: the pad token, else EOS (padding is masked, so any id works)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


class TaskDataset(Dataset):
    """Examples encoded on access (cached), for a DataLoader with `collate_fn=Collator(pad_id)`."""

    def __init__(self, tokenizer, examples: list[Example], max_length: int) -> None:
        self.tokenizer = tokenizer
        self.examples = list(examples)
        self.max_length = max_length
        self._cache: dict[int, dict[str, list[int]]] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        item = self._cache.get(index)
        if item is None:
            item = encode_example(self.tokenizer, self.examples[index], self.max_length)
            self._cache[index] = item
        return item


class Collator:
    """Picklable `collate_fn` (DataLoader workers need one): `Collator(pad_id)(features)`."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return collate(features, self.pad_id)
