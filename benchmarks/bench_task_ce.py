"""The task loss with the LM head at every position vs only where the loss reads (`task_ce`), paired.

One process, one thread by default, the embedded SmolLM2-135M (FP and BitNet) on length-grouped SST-2
training batches of 16: forward + backward of `causal_lm_loss(model(...).logits)` and of `task_ce`,
alternating on the same batch for --rounds rounds, so both see the same machine state. Prints medians per
model and the ratio; writes JSON.

    python benchmarks/bench_task_ce.py --data ../shared/data/sst2 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _verb import RESULTS

from bitdistill.data.encode import TaskDataset, collate, pad_token_id
from bitdistill.data.tasks import get_task
from bitdistill.distill.losses import causal_lm_loss, task_ce
from bitdistill.model import load_pretrained
from bitdistill.model.convert import to_bitnet
from bitdistill.pipeline.bench_train import simd_info


def full_head(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return causal_lm_loss(out.logits, batch["labels"])


def timed_step(loss_fn, model, batch) -> tuple[float, float]:
    """(seconds for forward + backward, loss); gradients are cleared after."""
    t0 = time.perf_counter()
    loss = loss_fn(model, batch)
    loss.backward()
    dt = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return dt, float(loss.detach())


def batches(tokenizer, data: str, count: int, size: int) -> list[dict]:
    """`count` batches of `size` examples of similar length, as the training loop's length grouping makes."""
    examples = get_task("sst2").load("train", path=data)[: count * size * 8]
    ds = TaskDataset(tokenizer, examples, 128)
    order = sorted(range(len(ds)), key=lambda i: len(ds[i]["input_ids"]))
    step = len(order) // count
    pad = pad_token_id(tokenizer)
    return [collate([ds[j] for j in order[k * step : k * step + size]], pad) for k in range(count)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="../shared/data/sst2")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument(
        "--batches", type=int, default=4, help="batches of different widths, each timed every round"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "task-ce-smollm2-135m.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_pretrained(args.model)
    work = batches(tok, args.data, args.batches, 16)
    rows = []
    for name in ("FP", "BitNet (subln all)"):
        if name.startswith("BitNet"):
            model = to_bitnet(model, subln="all")
        times = {"full": [], "task_ce": []}
        for b in work:  # warm-up, and the two losses must agree
            (_, a), (_, c) = timed_step(full_head, model, b), timed_step(task_ce, model, b)
            assert abs(a - c) <= 1e-4 * abs(a), (a, c)
        for _ in range(args.rounds):
            for b in work:
                times["full"].append(timed_step(full_head, model, b)[0])
                times["task_ce"].append(timed_step(task_ce, model, b)[0])
        full, cut = statistics.median(times["full"]), statistics.median(times["task_ce"])
        rows.append(
            {"model": name, "full_head_s": full, "task_ce_s": cut, "speedup": full / cut, "raw": times}
        )
    widths = [int(b["input_ids"].shape[1]) for b in work]
    simd = simd_info()
    print(f"SmolLM2-135M fwd+bwd, batch 16, widths {widths}, {args.threads} thread(s), fp32, {simd['cpu']}, "
          f"torch dispatch {simd['torch_capability']}, flags {' '.join(simd['flags'])}")  # fmt: skip
    print("| model | LM head everywhere (s) | head at targets only (s) | speedup |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['full_head_s']:.3f} | {r['task_ce_s']:.3f} | {r['speedup']:.2f}x |")
    result = {"widths": widths, "threads": args.threads, "rounds": args.rounds, "simd": simd, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
