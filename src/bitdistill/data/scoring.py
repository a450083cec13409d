"""Classification by label-word log-likelihood: no free generation.

For each example and each label word w, score(w) = Σ_t log p(w_t | prompt, w_<t), the summed
log-likelihood of w's tokens after the prompt; the prediction is the arg-max. When every label word of
an example is a single token, one forward pass over the prompt gives all scores (the next-token
distribution at the prompt's last position); otherwise each label word is scored in its own sequence.
Batches are right-padded, so causal attention never lets a real token see padding, and positions
0..n-1 of every row are the same as for the example alone: scores match one-at-a-time scoring.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence

import torch

from ..errors import BitDistillError
from ..model.eval_mode import eval_mode
from .encode import _prompt_ids, encode_target, pad_batch, pad_token_id
from .tasks import Example


def check_label_words(tokenizer, label_words: Sequence[str], prompt: str = "") -> list[list[int]]:
    """Token ids of each label word after `prompt`; error when two words tokenize identically, warn when
    two share a first token (scores still work, summed over the words' tokens, but less sharply)."""
    prompt_ids = list(tokenizer(prompt)["input_ids"]) if prompt else []
    ids = [encode_target(tokenizer, prompt, w, prompt_ids) if prompt else
           list(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in label_words]  # fmt: skip
    unk = getattr(tokenizer, "unk_token_id", None)
    for i, a in enumerate(ids):
        if not a:
            raise BitDistillError(
                f"label word {label_words[i]!r} encodes to no tokens; choose a visible word"
            )
        if unk is not None and unk in a:
            raise BitDistillError(
                f"label word {label_words[i]!r} encodes to the unknown token {tokenizer.unk_token!r}: the "
                "model cannot tell it from any other unknown word; choose a word in its vocabulary"
            )
        for j in range(i):
            if a == ids[j]:
                raise BitDistillError(
                    f"label words {label_words[j]!r} and {label_words[i]!r} encode to the same tokens {a}; "
                    "choose words that differ"
                )
            if a[0] == ids[j][0]:
                warnings.warn(
                    f"label words {label_words[j]!r} and {label_words[i]!r} share their first token {a[0]}; "
                    "prefer words whose first tokens differ (e.g. with a leading space: ' positive')",
                    stacklevel=2,
                )
    return ids


def _jobs(tokenizer, examples: Sequence[Example], label_words: Sequence[str], max_length: int):
    """One (example, sequence, [(label, first target position, target ids)]) per forward row."""
    jobs = []
    for n, ex in enumerate(examples):
        full = list(tokenizer(ex.prompt)["input_ids"])
        targets = [encode_target(tokenizer, ex.prompt, w, full) for w in label_words]
        if any(not t for t in targets):
            raise BitDistillError(f"a label word of {list(label_words)!r} encodes to no tokens")
        budget = max_length - max(len(t) for t in targets)
        if budget < 1:
            raise BitDistillError(f"max_length={max_length} is too short for the label words; raise it")
        prompt = full if len(full) <= budget else _prompt_ids(tokenizer, ex, budget)
        p = len(prompt)
        if p == 0:
            raise BitDistillError(f"example {n}: the prompt encodes to no tokens; scoring needs a prompt")
        if all(len(t) == 1 for t in targets):
            jobs.append((n, prompt, [(label, p, t) for label, t in enumerate(targets)]))
        else:
            jobs.extend((n, prompt + t, [(label, p, t)]) for label, t in enumerate(targets))
    return jobs


@torch.no_grad()  # not inference_mode: BitLinear caches built here may be reused with autograd
def score_label_words(
    model,
    tokenizer,
    examples: Sequence[Example],
    label_words: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
) -> torch.Tensor:
    """[N, num_labels] float32 summed log-likelihood of each label word after each example's prompt."""
    jobs = _jobs(tokenizer, examples, label_words, max_length)
    scores = [[0.0] * len(label_words) for _ in examples]
    pad = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    order = sorted(range(len(jobs)), key=lambda i: len(jobs[i][1]))  # similar lengths pad less
    keep_supported = "logits_to_keep" in inspect.signature(model.forward).parameters
    from tqdm.auto import tqdm

    with eval_mode(model), tqdm(total=len(jobs), desc="scoring", unit="seq", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            batch = [jobs[i] for i in order[start : start + batch_size]]
            ids, mask = pad_batch([seq for _, seq, _ in batch], pad)
            rows, cols, toks, owners = [], [], [], []
            for r, (n, _, targets) in enumerate(batch):
                for label, p, t in targets:
                    # Token t[j] sits at position p + j and is predicted by the logits at p + j - 1.
                    for j, tok in enumerate(t):
                        rows.append(r)
                        cols.append(p + j - 1)
                        toks.append(tok)
                        owners.append((n, label))
            kwargs = {}
            if keep_supported:
                # Project only the positions some row needs onto the vocabulary (B x T x V floats is
                # gigabytes for a 150k vocabulary); the batch is length-sorted, so the union is small.
                needed = sorted(set(cols))
                where = {c: i for i, c in enumerate(needed)}
                cols = [where[c] for c in cols]
                kwargs["logits_to_keep"] = torch.tensor(needed, device=device)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
            picked = logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)].float()
            logp = torch.log_softmax(picked, dim=-1)
            values = logp[torch.arange(len(toks), device=device), torch.tensor(toks, device=device)].cpu()
            for (n, label), v in zip(owners, values.tolist(), strict=True):
                scores[n][label] += v
            bar.update(len(batch))
    return torch.tensor(scores, dtype=torch.float32).reshape(len(examples), len(label_words))


def classification_predictions(
    model,
    tokenizer,
    examples: Sequence[Example],
    label_words: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = False,
) -> list[int]:
    """Predicted label id per example: the label word with the highest log-likelihood."""
    if not examples:
        return []
    scores = score_label_words(model, tokenizer, examples, label_words, batch_size, max_length, progress)
    return scores.argmax(dim=-1).tolist()
