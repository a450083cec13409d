"""`bitdistill demo`: stage 1 on the embedded SmolLM2-135M, with a before/after sanity report.

It shows what conversion alone does to a pretrained model (the ternary gap that continued pre-training and
distillation exist to close): perplexity on real sentences and a greedy continuation, before and after.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

FALLBACK_SENTENCES = [
    "The film is a charming and often affecting journey.",
    "It is a gorgeously made film, but the story never comes alive.",
    "An utterly unwatchable mess from start to finish.",
    "The performances are uniformly excellent and the script is sharp.",
]
PROMPT = "The capital of France is"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="convert the embedded SmolLM2-135M and report what conversion does")
    p.add_argument("--model", default="smollm2-135m", help="model to convert (default: embedded SmolLM2)")
    p.add_argument("--out", default="runs/demo", help="directory for the converted model")
    p.add_argument("--data", default="../shared/data/sst2/dev.tsv", help="sentences for the perplexity check")
    p.add_argument("--sentences", type=int, default=64, help="how many sentences to score")
    p.set_defaults(func=run)


def _sentences(path: str, limit: int) -> list[str]:
    p = Path(path)
    if not p.is_file():
        return FALLBACK_SENTENCES
    with p.open(newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [row["sentence"] for _, row in zip(range(limit), rows)]


def perplexity(model, tokenizer, sentences: list[str], batch_size: int = 16) -> float:
    """exp(mean next-token loss) over the sentences' tokens (padding excluded)."""
    import torch

    total, count = 0.0, 0
    for i in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[i : i + batch_size], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with torch.no_grad():
            logits = model(**batch).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="sum")
        total += loss.item()
        count += int((target != -100).sum())
    return math.exp(total / max(count, 1))


def continuation(model, tokenizer, prompt: str, new_tokens: int = 12) -> str:
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(
        **ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def run(args: argparse.Namespace) -> int:
    from ..model import load_pretrained, save, to_bitnet
    from ..model.summary import format_summary, summarize

    start = time.perf_counter()
    model, tokenizer = load_pretrained(args.model)
    model.eval()
    sentences = _sentences(args.data, args.sentences)
    fp_ppl = perplexity(model, tokenizer, sentences)
    fp_text = continuation(model, tokenizer, PROMPT)
    to_bitnet(model).eval()
    save(model, args.out, tokenizer=tokenizer)
    bit_ppl = perplexity(model, tokenizer, sentences)
    bit_text = continuation(model, tokenizer, PROMPT)
    print(format_summary(summarize(model, args.out)))
    print()
    print(
        f"perplexity on {len(sentences)} sentences of {args.data if Path(args.data).is_file() else 'built-ins'}"
    )
    print(f"  full precision        {fp_ppl:10.1f}")
    print(f"  BitNet (stage 1 only) {bit_ppl:10.1f}")
    print(f"greedy continuation of {PROMPT!r}")
    print(f"  full precision        {fp_text!r}")
    print(f"  BitNet (stage 1 only) {bit_text!r}")
    print(
        "\nConversion alone loses the model's knowledge; continued pre-training and distillation "
        f"(bitdistill run configs/...) recover it. Saved to {args.out} in {time.perf_counter() - start:.0f}s."
    )
    return 0
