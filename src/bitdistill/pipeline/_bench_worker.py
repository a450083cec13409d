"""One `bitdistill bench-train` measurement, in its own process: `python -P _bench_worker.py SPEC_JSON`.

It imports `bitdistill` from whatever checkout PYTHONPATH names and uses only functions that exist since
d59aa69 (load_pretrained, get_task, parse_recipe, task_batches, ce_loss, convert, make_distill_loss and the
training loop), so the same driver times an old checkout against this one. `-P` keeps this file's directory
off sys.path. It prints one JSON line: per-step seconds and tokens read from the loop's own log.jsonl
(the loop times each optimizer step from batch fetch to zero_grad), and the peak RSS of the training part.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def _peak_rss():
    """This checkout's _peak_rss.py, loaded by path: `bitdistill` on sys.path may be an older checkout."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_bench_peak_rss", Path(__file__).parents[1] / "_peak_rss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recipe(spec: dict):
    try:
        from bitdistill.config.recipe import BitNetSpec, DistillStage, parse_recipe
    except ImportError:  # checkouts before the config package
        from bitdistill.recipe.schema import BitNetSpec, DistillStage, parse_recipe

    distill = {"student_layer": -1, "teacher_layer": -1}
    # Options added after d59aa69 are set only where this checkout knows them.
    for key in ("kd_positions", "relation", "qkv_source"):
        if spec.get(key) and key in DistillStage.__dataclass_fields__:
            distill[key] = spec[key]
    subln = spec["subln"]
    if "str" not in str(BitNetSpec.__dataclass_fields__["subln"].type):
        subln = subln != "none"  # before the subln modes, true meant o_down (and "all" did not exist)
    spec["subln_used"] = subln
    return parse_recipe(
        {
            "name": "bench-train",
            "model": spec["model"],
            "task": {"name": "sst2", "path": spec["data"], "max_length": spec["max_length"]},
            "bitnet": {"subln": subln},
            "continue_pretrain": {"enabled": False},
            "distill": distill,
        },
        source="bench-train",
    )


def main(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from bitdistill import errors  # any module: its path names the checkout being timed
    from bitdistill.model import load_pretrained
    from bitdistill.train import TrainConfig, loop, make_accelerator

    ce_loss, convert, task_batches, make_distill_loss = _stage_code()

    recipe = _recipe(spec)
    examples = spec.get("examples")
    if examples is None:
        from bitdistill.data.tasks import get_task

        examples = get_task("sst2").load("train", path=spec["data"])
    else:
        from bitdistill.data.tasks import Example

        examples = [Example(**e) for e in examples]
    model, tok = load_pretrained(spec["model"])
    loss_fn = ce_loss
    if spec["variant"] in ("bitnet", "distill"):
        convert(model, recipe)
    if spec["variant"] == "distill":
        teacher, _ = load_pretrained(spec["model"])
        teacher.eval().requires_grad_(False)
        loss_fn, _settings = make_distill_loss(recipe, model, teacher, "classification")
    cfg = TrainConfig(
        steps=spec["warmup"] + spec["steps"], lr=2e-5, batch_size=spec["batch_size"], log_every=1,
        save_every=10**9, progress=False, precision=spec["precision"], seed=spec["seed"],
    )  # fmt: skip
    accelerator = make_accelerator(cfg.precision)
    batches = task_batches(tok, examples, recipe, cfg, accelerator)
    widths = [int(batches.batch(i)["input_ids"].shape[1]) for i in range(cfg.steps)]
    # The final checkpoint (model + AdamW state) is written after the last timed step; skip that disk I/O.
    loop.save_checkpoint = lambda *a, **k: None
    profile = spec.get("profile")
    if profile:
        loss_fn = _profiled(loss_fn, spec["warmup"], profile)
    rss = _peak_rss()
    clean = rss.reset_peak_rss()  # the peak covers training only, not the GGUF load
    t0 = time.perf_counter()
    timed = _CpuTimed(batches)
    with tempfile.TemporaryDirectory() as tmp:
        loop.train(model, timed, loss_fn, cfg, tmp, desc=spec["variant"], accelerator=accelerator)
        records = [json.loads(line) for line in open(os.path.join(tmp, "log.jsonl"))]
    timed.mark()
    wall = time.perf_counter() - t0
    seconds, tokens, prev = [], [], 0
    for r in records:
        if "tokens_per_s" in r:
            n = r["tokens"] - prev
            prev = r["tokens"]
            tokens.append(n)
            seconds.append(n / r["tokens_per_s"])
    return {
        "variant": spec["variant"],
        "code": os.path.dirname(os.path.dirname(errors.__file__)),
        "seconds": seconds,
        "cpu_seconds": [b - a for a, b in zip(timed.cpu, timed.cpu[1:])],
        "tokens": tokens,
        "widths": widths,
        "wall_seconds": wall,
        "peak_rss_mib": rss.peak_rss_mib(),
        "peak_rss_scope": "training" if clean else "process",
        "threads": torch.get_num_threads(),
        "subln": spec["subln_used"],
    }


def _stage_code():
    """(ce_loss, convert, task_batches, make_distill_loss) from this checkout's pipeline, in either layout."""
    try:
        from bitdistill.pipeline.models import convert
        from bitdistill.pipeline.stages.distill import make_distill_loss
        from bitdistill.pipeline.stages.sft import ce_loss
        from bitdistill.pipeline.task_data import task_batches
    except ImportError:  # checkouts before the pipeline package
        from bitdistill.stages.common import ce_loss, convert, task_batches
        from bitdistill.stages.distill import make_distill_loss
    return ce_loss, convert, task_batches, make_distill_loss


class _CpuTimed:
    """The batch source, noting this process's CPU time each time the loop fetches a step's batch.

    On a shared machine the wall time of a step depends on who else runs; the CPU time this process spent
    between two fetches (one optimizer step, grad_accum = 1) hardly does, and with one thread it is the
    wall time an idle machine would show.
    """

    def __init__(self, batches) -> None:
        self.batches = batches
        self.cpu: list[float] = []

    def mark(self) -> None:
        self.cpu.append(time.process_time())

    def iterate(self, start: int):
        for batch in self.batches.iterate(start):
            self.mark()
            yield batch


def _profiled(loss_fn, warmup: int, path: str):
    """loss_fn that drives torch.profiler: steps after `warmup` are recorded (forward, backward, AdamW)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=warmup, warmup=0, active=2),
                   record_shapes=True)  # fmt: skip
    prof.__enter__()
    calls = [0]

    def wrapped(model, batch):
        if calls[0]:
            prof.step()  # the previous optimizer step is complete when the next loss is requested
        calls[0] += 1
        if calls[0] == warmup + 3:
            prof.__exit__(None, None, None)
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
            with open(path, "w") as f:
                f.write(table)
        return loss_fn(model, batch)

    return wrapped


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
