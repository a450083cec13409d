"""The one training loop every stage uses (teacher SFT, BitNet-SFT, continued pre-training, distillation).

A stage hands it a model, a batch source, a loss function `loss_fn(model, batch) -> (loss, parts)` and
optionally an evaluation function; the loop owns everything else: AdamW, warmup + cosine/linear schedule,
gradient accumulation, mixed precision, clipping, progress, logs, evaluation, checkpoints and resume.
It runs on `accelerate`, so `accelerate launch` / torchrun run it on many GPUs unchanged; under an FSDP
launch it shards the model itself (sharding.py) and gathers full state dicts for every file it writes.

Resume contract: the state after optimizer step `s` is a function of (seed, s) only. The data order is a
function of the micro-step (see batches.py), and a checkpoint stores the model, optimizer, scheduler and
RNG state, so a run killed at any moment and restarted ends with the same weights as one never stopped.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._fs import atomic_file
from ..config.train import TrainConfig
from ..env import read_env
from ..errors import BitDistillError
from . import eta
from .checkpoint import (
    clean_stale,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .distributed import mean_across_ranks
from .log import TrainLog
from .optim import _lr_lambda, make_optimizer
from .sharding import fsdp_plan, gather_optimizer, gradient_sync_off, shard, shards_here, weights_for_saving
from .state import LogWindow, StepOutcome, TrainResult, TrainState

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[nn.Module], dict[str, float]]


def resolve_precision(precision: str) -> str:
    """The accelerate mixed-precision mode for a config value ('no' means fp32)."""
    if precision == "auto":
        return "bf16" if native_bf16() else "no"
    return {"fp32": "no"}.get(precision, precision)


def native_bf16() -> bool:
    """Whether bf16 autocast runs natively here: a CUDA GPU with bf16, else a CPU with AVX512-BF16 (or
    AMX), where it trains ~1.4x faster than fp32. On AVX2-only CPUs bf16 is emulated and slower."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private, so guarded
    return bool(probe and probe())


def make_accelerator(precision: str = "auto"):
    from .distributed import accelerator_for

    return accelerator_for(resolve_precision(precision))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


FaultHook = Callable[[str], None]


def kill_at(points: frozenset[str]) -> FaultHook:
    """A fault hook that SIGKILLs this process at any of `points` (crash tests; BITDISTILL_FAULT).

    Points: "<desc>:step:<n>" right after optimizer step n, "<desc>:save:<n>" inside the write of
    checkpoint n, after its files are written and before it is published.
    """

    def hook(point: str) -> None:
        if point in points:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

    return hook


class Trainer:
    """One stage's training run: resume, steps, log lines, evaluation and best-weight selection, checkpoints.

    `train()` below is the entry point; the class exists so each of those concerns is one short method
    over one `TrainState`, instead of closures sharing a string-keyed dict.
    """

    def __init__(
        self, model: nn.Module, batches: Any, loss_fn: LossFn, cfg: TrainConfig, train_dir: Path,
        eval_fn: EvalFn | None, metric: str, greater_is_better: bool, desc: str, accelerator: Any,
        fault: FaultHook,
    ) -> None:  # fmt: skip
        self.cfg, self.train_dir, self.desc, self.fault = cfg, train_dir, desc, fault
        self.batches, self.loss_fn, self.eval_fn = batches, loss_fn, eval_fn
        self.metric, self.greater_is_better = metric, greater_is_better
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.best_path = train_dir / "best.safetensors"
        if self.main:
            train_dir.mkdir(parents=True, exist_ok=True)
            clean_stale(train_dir)
        seed_everything(cfg.seed)
        model.train()
        plan = fsdp_plan()
        self.sharded = shards_here(plan)
        if self.sharded:
            if resolve_precision(cfg.precision) == "fp16":
                raise BitDistillError(
                    f"[{desc}] train.precision: fp16 needs a gradient scaler, which the FSDP launch does not "
                    "run; use bf16 or fp32"
                )
            model = shard(model, accelerator.device, plan)  # before the optimizer: it holds the shards
            if self.main:
                print(f"[{desc}] FSDP: the model is sharded over {accelerator.num_processes} processes, "
                      "one unit per decoder layer", file=sys.stderr)  # fmt: skip
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg, cfg.steps))
        # The scheduler stays outside prepare(): accelerate would step it once per process. A sharded model
        # stays outside too (sharding.py says why); the Accelerator still does autocast, backward, clipping.
        if not self.sharded:
            model, self.optimizer = accelerator.prepare(model, self.optimizer)
        self.model = model
        self.raw_model = accelerator.unwrap_model(self.model)
        self.state = TrainState()
        self.last_ckpt = self._resume()
        self.log = TrainLog(train_dir, self.state.step, enabled=self.main)
        self.window = LogWindow()
        self.bar = None

    def _resume(self) -> Path | None:
        ckpt = latest_checkpoint(self.train_dir)
        if ckpt is not None:
            rank = self.accelerator.process_index
            restored = load_checkpoint(ckpt, self.raw_model, self.optimizer, self.scheduler, rank=rank)
            self.state = TrainState.from_dict(restored)
            if self.main:
                print(f"[{self.desc}] resuming from {ckpt} (step {self.state.step}/{self.cfg.steps})",
                      file=sys.stderr)  # fmt: skip
        return ckpt

    def run(self) -> TrainResult:
        micro_batches = self.batches.iterate(self.state.step * self.cfg.grad_accum)
        self.bar = self._progress_bar()
        try:
            while self.state.step < self.cfg.steps:
                t0 = time.perf_counter()
                step, exhausted = self._accumulate(micro_batches)
                if step is None:
                    break
                self._optimizer_step()
                self.fault(f"{self.desc}:step:{self.state.step + 1}")
                self._record_step(step, time.perf_counter() - t0)
                done = self.state.step >= self.cfg.steps or exhausted
                self._after_step(done)
                if exhausted:
                    break
        finally:
            if self.bar is not None:
                self.bar.close()
            self.log.close()
        return self._finish()

    def _progress_bar(self):
        if not (self.main and self.cfg.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.cfg.steps, initial=self.state.step, desc=self.desc, dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
        )  # fmt: skip

    def _accumulate(self, micro_batches: Iterator[dict[str, torch.Tensor]]) -> tuple[StepOutcome | None, bool]:
        """Forward and backward over one step's micro-batches: (the step, whether the batches ran out);
        the step is None when they ran out before its first micro-batch."""
        step = StepOutcome()
        accum = self.cfg.grad_accum
        for micro in range(accum):
            try:
                batch = next(micro_batches)
            except StopIteration:
                return (step if step.tokens else None), True
            batch = {k: v.to(self.accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            sync = micro == accum - 1
            ctx = nullcontext() if sync else self._no_sync()
            with ctx, self.accelerator.autocast():
                loss, parts = self.loss_fn(self.model, batch)
            # The mean over processes: rank 0 logs the global loss, and a non-finite loss on any rank
            # stops every rank (one rank raising alone would leave the others waiting in all-reduce).
            value, *part_values = mean_across_ranks([float(loss.detach()), *map(float, parts.values())])
            parts = dict(zip(parts, part_values, strict=True))
            self._require_finite(value, parts)
            self.accelerator.backward(loss / accum)
            step.loss += value / accum
            step.tokens += _batch_tokens(batch)
            for k, v in parts.items():
                step.parts[k] = step.parts.get(k, 0.0) + float(v) / accum
        return step, False

    def _no_sync(self):
        """Skip this micro-step's gradient all-reduce (reduce-scatter when sharded) until the last one."""
        return gradient_sync_off(self.model) if self.sharded else self.accelerator.no_sync(self.model)

    def _require_finite(self, value: float, parts: dict[str, float]) -> None:
        if math.isfinite(value):
            return
        kept = f"the last good checkpoint {self.last_ckpt} is kept" if self.last_ckpt else "no checkpoint yet"
        raise BitDistillError(
            f"[{self.desc}] step {self.state.step + 1}: the loss is {value} (parts: {parts}); training "
            f"stopped, {kept}. Lower train.lr, enable train.max_grad_norm or train.precision: fp32, or check "
            "the data; re-running resumes from the checkpoint."
        )

    def _optimizer_step(self) -> None:
        if self.cfg.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _record_step(self, step: StepOutcome, seconds: float) -> None:
        tokens = step.tokens * self.accelerator.num_processes
        self.state.add_step(step.loss, tokens, seconds)
        self.window.add(step, tokens, seconds)
        if self.bar is not None:
            self.bar.update(1)
            run_left = eta.step(self.desc, tokens, seconds)  # the whole run's time left, when one is tracked
            self.bar.set_postfix(loss=f"{step.loss:.4f}", tok_s=f"{tokens / max(seconds, 1e-9):.0f}", **run_left)

    def _after_step(self, done: bool) -> None:
        """The log line, evaluation (and best-weight selection) and checkpoint that fall on this step."""
        at, cfg = self.state.step, self.cfg
        if at % cfg.log_every == 0 or done or at == 1:
            record = self.window.record(at, self.scheduler.get_last_lr()[0], self.state.tokens)
            self.state.history.append({"step": at, "loss": record["loss"]})
            self.log.log(record)
            self.window = LogWindow()
        if self.eval_fn is not None and ((cfg.eval_every and at % cfg.eval_every == 0) or done):
            metrics = self._evaluate()
            self.state.eval = metrics
            self.log.log({"step": at, **{f"eval_{k}": v for k, v in metrics.items()}})
            if self.bar is not None:
                self.bar.write(f"[{self.desc}] step {at}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            self._keep_if_best(metrics)
        if at % cfg.save_every == 0 or done:
            self.last_ckpt = self._checkpoint()

    def _evaluate(self) -> dict[str, float]:
        # Evaluation must not perturb the training RNG stream, or resumed and uninterrupted runs diverge.
        saved = rng_state()
        self.raw_model.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                result = self.eval_fn(self.raw_model) if self.eval_fn is not None else {}
        finally:
            self.raw_model.train()
            set_rng_state(saved)
        # Numbers only: a metric's confidence interval (a list) is for reports, not for the log or selection.
        return {k: float(v) for k, v in result.items() if isinstance(v, int | float)}

    def _keep_if_best(self, metrics: dict[str, float]) -> None:
        # Every rank holds the same gathered metrics, so all decide alike (a sharded model gathers on all).
        if self.metric not in metrics:
            return
        value = metrics[self.metric]
        if self.state.improves(value, self.greater_is_better):
            self.state.best_metric, self.state.best_step = value, self.state.step
            weights = weights_for_saving(self.raw_model)
            if self.main:
                from ..model.io import write_weights

                with atomic_file(self.best_path) as tmp:
                    write_weights(weights, tmp)

    def _checkpoint(self) -> Path:
        # The main process publishes the directory first; the other ranks then add their RNG state. A sharded
        # model's weights and optimizer state are gathered first, by every rank, onto rank 0.
        at, acc = self.state.step, self.accelerator
        weights = weights_for_saving(self.raw_model)
        if self.sharded:
            optim = gather_optimizer(self.raw_model, self.optimizer)
        else:
            optim = self.optimizer.state_dict() if self.main else {}
        args = (self.train_dir, at, weights, optim, self.scheduler, self.state.to_dict())
        kwargs = dict(keep=self.cfg.keep_checkpoints, rank=acc.process_index)
        if self.main:
            path = save_checkpoint(
                *args, is_main=True, before_publish=lambda: self.fault(f"{self.desc}:save:{at}"), **kwargs
            )
        acc.wait_for_everyone()
        if not self.main:
            path = save_checkpoint(*args, is_main=False, **kwargs)
        acc.wait_for_everyone()
        return path

    def _finish(self) -> TrainResult:
        if self.state.step >= self.cfg.steps and self.eval_fn is not None and not self.state.eval:
            # Resumed after the final checkpoint of a run whose eval was lost: evaluate once more.
            self.state.eval = self._evaluate()
        if self.cfg.select == "best" and self.best_path.is_file():
            load_weights(self.raw_model, self.best_path)
            if hasattr(self.raw_model, "tie_weights") and not self.sharded:  # sharding keeps the tie
                self.raw_model.tie_weights()
        self.raw_model.eval()
        return self.state.result()


def train(
    model: nn.Module,
    batches: Any,
    loss_fn: LossFn,
    cfg: TrainConfig,
    train_dir: str | os.PathLike,
    eval_fn: EvalFn | None = None,
    metric: str = "accuracy",
    greater_is_better: bool = True,
    desc: str = "train",
    accelerator: Any = None,
    fault: FaultHook | None = None,
) -> TrainResult:
    """Train `model` in place for `cfg.steps` optimizer steps, resuming from `train_dir` when possible.

    `batches.iterate(start_micro_step)` yields micro-batches (dicts of tensors); the loop moves them to
    the device. Returns the statistics of the whole stage (resumed parts included); on return `model`
    holds the selected weights (`cfg.select`). `fault(point)` is called at each step and checkpoint write
    (crash tests); by default it kills at the points BITDISTILL_FAULT lists, read once here. Under an FSDP
    launch `model` is sharded in place and stays so: save it with `weights_for_saving` (train/sharding.py).
    """
    cfg.validate()
    fault = fault or kill_at(read_env().fault_points)
    accelerator = accelerator or make_accelerator(cfg.precision)
    trainer = Trainer(
        model, batches, loss_fn, cfg, Path(train_dir), eval_fn, metric, greater_is_better, desc, accelerator, fault
    )
    return trainer.run()


def result_dict(result: TrainResult) -> dict[str, Any]:
    out = asdict(result)
    out.pop("history")
    return out
