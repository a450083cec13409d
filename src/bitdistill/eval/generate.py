"""Batched greedy / beam-search generation of task targets (summaries) with a Hugging Face causal LM.

Prompts are encoded exactly as training encodes them (`encode_example` with an empty target, so a long
article is shortened the same way, keeping the instruction), leaving room for `max_new_tokens`. Batches are
*left*-padded: a decoder-only model continues from the last position of every row, and `generate` derives
position ids from the attention mask, so a padded row produces the same tokens as the prompt alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ..data.encode import encode_example, pad_batch, pad_token_id
from ..data.tasks import Example
from ..errors import BitDistillError
from ..model.eval_mode import eval_mode


def prompt_ids(
    tokenizer, examples: Sequence[Example], max_length: int, max_new_tokens: int
) -> list[list[int]]:
    """Token ids of each example's prompt, shortened so that prompt + max_new_tokens fit in max_length."""
    budget = max_length - max_new_tokens
    if budget < 1:
        raise BitDistillError(
            f"max_length={max_length} leaves no room for a prompt with max_new_tokens={max_new_tokens}; "
            "raise --max-length or lower --max-new-tokens"
        )
    return [
        encode_example(tokenizer, dataclasses.replace(ex, target="", eos=False), budget)["input_ids"]
        for ex in examples
    ]


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    examples: Sequence[Example],
    max_new_tokens: int = 128,
    num_beams: int = 1,
    batch_size: int = 8,
    max_length: int = 1024,
    progress: bool = False,
) -> list[str]:
    """The decoded continuation of every example's prompt (greedy when num_beams == 1), in input order."""
    if max_new_tokens < 1 or num_beams < 1 or batch_size < 1:
        raise BitDistillError(
            f"generation needs max_new_tokens, num_beams and batch_size >= 1 (got {max_new_tokens}, "
            f"{num_beams}, {batch_size})"
        )
    prompts = prompt_ids(tokenizer, examples, max_length, max_new_tokens)
    pad = pad_token_id(tokenizer)
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    outputs: list[str] = [""] * len(prompts)
    from tqdm.auto import tqdm

    with eval_mode(model), tqdm(total=len(prompts), desc="generating", unit="ex", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = pad_batch([prompts[i] for i in idx], pad, left=True)
            width = ids.shape[1]
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            )
            for r, i in enumerate(idx):
                outputs[i] = tokenizer.decode(out[r, width:], skip_special_tokens=True).strip()
            bar.update(len(idx))
    return outputs
