"""`bitdistill demo`: the BitDistill pipeline on the embedded SmolLM2-135M and SST-2, within 15 minutes.

It runs the packaged demo recipe (`bitdistill/pipeline/demo.yaml`: teacher, BitNet-SFT, a short continued
pre-training, BitDistill, evaluation on the first 500 SST-2 dev sentences) with budgets sized for a 2-core CPU,
prints the comparison table and writes `report.md` with plots. The budgets are a demonstration, not the
quality benchmark (configs/smollm2-sst2-full.yaml, docs/results.md).

`--convert-only` keeps the one-minute check of what stage 1 alone does to a pretrained model (perplexity
and a greedy continuation before and after conversion): the ternary gap that stages 2-3 exist to close.
"""

from __future__ import annotations

import argparse
import math
import time
from importlib import resources
from pathlib import Path

FALLBACK_SENTENCES = [
    "The film is a charming and often affecting journey.",
    "It is a gorgeously made film, but the story never comes alive.",
    "An utterly unwatchable mess from start to finish.",
    "The performances are uniformly excellent and the script is sharp.",
]
PROMPT = "The capital of France is"
DEFAULT_DATA = "builtin:sst2"  # the copy shipped in the package (bitdistill/data/builtin)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="teacher, BitNet-SFT and BitDistill on SST-2 with the embedded SmolLM2-135M (within 15 min on 2 cores)",
    )
    p.add_argument("--model", default="smollm2-135m", help="base model (default: the embedded SmolLM2)")
    p.add_argument("--data", default=DEFAULT_DATA, help="SST-2 directory with train and dev files (GLUE TSV); default: the packaged copy")
    p.add_argument("--out", default="runs/demo", help="run directory (finished stages are reused)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a field of the demo recipe, e.g. --set distill.train.steps=200 (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--convert-only", action="store_true",
        help="only convert (stage 1) and report perplexity and a continuation before and after",
    )  # fmt: skip
    p.add_argument(
        "--restart", metavar="STAGE[,STAGE]|all",
        help="retrain these stages of an earlier demo run from scratch (all: every stage), e.g. after --set",
    )  # fmt: skip
    p.add_argument("--sentences", type=int, default=64, help="--convert-only: sentences to score")
    p.set_defaults(func=run)


def demo_recipe_path() -> Path:
    return Path(str(resources.files("bitdistill.pipeline") / "demo.yaml"))


def run(args: argparse.Namespace) -> int:
    if args.convert_only:
        return convert_only(args)
    from ..config import load_recipe
    from ..data.tasks import get_task
    from ..errors import BitDistillError
    from ..pipeline.run import parse_restart
    from ..report import run_recipe
    from ..train import eta

    data = args.data
    task = get_task("sst2")
    try:
        for split in ("train", "dev"):
            task.split_file(data, split)
    except BitDistillError as err:
        raise BitDistillError(f"the demo needs SST-2 train and dev files (GLUE TSV): {err}; pass --data DIR") from None
    overrides = [f"model={args.model}", f"task.path={data}", f"output_dir={args.out}", *args.set]
    recipe = load_recipe(demo_recipe_path(), overrides)
    restart = parse_restart(args.restart)
    start = time.perf_counter()
    n_eval = recipe.task.eval_limit or len(task.load(recipe.task.eval_split, data))
    with eta.track(eta.plan(recipe, n_eval)):  # the whole run's time left beside each stage's progress bar
        run_recipe(recipe, restart=restart)
    report = Path(recipe.out) / "report.md"
    if report.is_file():
        print()
        print(comparison_section(report.read_text()))
        print(f"\nreport: {report} (plots beside it); {time.perf_counter() - start:.0f}s")
    return 0


def comparison_section(markdown: str) -> str:
    """The '## Comparison' section of a report.md, up to the next heading."""
    lines = markdown.splitlines()
    if "## Comparison" not in lines:
        return markdown
    body = lines[lines.index("## Comparison") + 1 :]
    end = next((i for i, line in enumerate(body) if line.startswith("## ")), len(body))
    return "\n".join(body[:end]).strip()


def _sentences(data: str, limit: int) -> list[str]:
    """The first `limit` SST-2 dev sentences under `data`, or built-in sentences when there are none."""
    from ..data.tasks import get_task
    from ..errors import BitDistillError

    try:
        return [ex.prompt[slice(*ex.spans[0])] for ex in get_task("sst2").load("dev", data, limit=limit)]
    except BitDistillError:
        return FALLBACK_SENTENCES


def perplexity(model, tokenizer, sentences: list[str], batch_size: int = 16) -> float:
    """exp(mean next-token loss) over the sentences' tokens (padding excluded)."""
    import torch

    from ..data.encode import IGNORE_INDEX
    from ..distill.losses import causal_lm_loss

    total, count = 0.0, 0
    for i in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[i : i + batch_size], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        if n:  # the mean over a batch's tokens, weighted by their count: the sum over all tokens
            with torch.no_grad():
                total += float(causal_lm_loss(model(**batch).logits, labels)) * n
            count += n
    return math.exp(total / max(count, 1))


def continuation(model, tokenizer, prompt: str, new_tokens: int = 12) -> str:
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(
        **ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def convert_only(args: argparse.Namespace) -> int:
    from ..model import load_pretrained, save, to_bitnet
    from ..model.summary import format_summary, summarize

    start = time.perf_counter()
    model, tokenizer = load_pretrained(args.model)
    model.eval()
    sentences = _sentences(args.data, args.sentences)
    fp_ppl = perplexity(model, tokenizer, sentences)
    fp_text = continuation(model, tokenizer, PROMPT)
    to_bitnet(model).eval()
    save(model, Path(args.out) / "model", tokenizer=tokenizer)
    bit_ppl = perplexity(model, tokenizer, sentences)
    bit_text = continuation(model, tokenizer, PROMPT)
    print(format_summary(summarize(model, Path(args.out) / "model")))
    print()
    source = args.data if sentences is not FALLBACK_SENTENCES else "built-in sentences"
    print(f"perplexity on {len(sentences)} sentences of {source}")
    print(f"  full precision        {fp_ppl:10.1f}")
    print(f"  BitNet (stage 1 only) {bit_ppl:10.1f}")
    print(f"greedy continuation of {PROMPT!r}")
    print(f"  full precision        {fp_text!r}")
    print(f"  BitNet (stage 1 only) {bit_text!r}")
    print(
        "\nConversion alone loses the model's knowledge; continued pre-training and distillation "
        f"(bitdistill demo without --convert-only) recover it. Saved to {args.out}/model in "
        f"{time.perf_counter() - start:.0f}s."
    )
    return 0
