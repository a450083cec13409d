"""The one training loop every stage uses (teacher SFT, BitNet-SFT, continued pre-training, distillation).

A stage hands it a model, a batch source, a loss function `loss_fn(model, batch) -> (loss, parts)` and
optionally an evaluation function; the loop owns everything else: AdamW, warmup + cosine/linear schedule,
gradient accumulation, mixed precision, clipping, progress, logs, evaluation, checkpoints and resume.
It runs on `accelerate`, so `accelerate launch` / torchrun run it on many GPUs unchanged.

Resume contract: the state after optimizer step `s` is a function of (seed, s) only. The data order is a
function of the micro-step (see batches.py), and a checkpoint stores the model, optimizer, scheduler and
RNG state, so a run killed at any moment and restarted ends with the same weights as one never stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BitDistillError, require_finite
from . import eta
from .checkpoint import (
    atomic_write_text,
    clean_stale,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .distributed import mean_across_ranks

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULES = ("cosine", "linear", "constant")

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class TrainConfig:
    """Optimisation knobs of one stage (every field is settable from a recipe's `train:` section)."""

    steps: int = 100  # optimizer steps; a streamed corpus may end the stage earlier
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    batch_size: int = 8  # per process, per micro-step
    group_by_length: bool = True  # batch task examples of similar length together (less padding)
    grad_accum: int = 1
    max_grad_norm: float = 1.0  # 0 disables clipping
    precision: str = "auto"  # auto = bf16 where the hardware computes it natively (see resolve_precision)
    log_every: int = 10
    eval_every: int = 0  # 0 = evaluate only at the end
    save_every: int = 50  # resumable checkpoint every N steps (and at the end)
    keep_checkpoints: int = 1
    seed: int = 42
    select: str = "last"  # the stage's output weights: last | best (by the eval metric)
    progress: bool = True

    def validate(self, where: str = "train") -> None:
        def bad(name: str, why: str) -> BitDistillError:
            return BitDistillError(f"{where}.{name}: {why}")

        if self.steps < 1:
            raise bad("steps", f"must be >= 1, got {self.steps}")
        require_finite(self.lr, f"{where}.lr", strict=True)
        for name in ("weight_decay", "max_grad_norm", "warmup_ratio"):
            require_finite(getattr(self, name), f"{where}.{name}")
        for name in ("keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise bad("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.grad_accum < 1:
            raise bad("grad_accum", f"must be >= 1, got {self.grad_accum}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"{self.schedule!r} is not one of {SCHEDULES}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"{self.precision!r} is not one of {PRECISIONS}")
        if self.select not in ("last", "best"):
            raise bad("select", f"{self.select!r} is not 'last' or 'best'")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise bad("betas", f"must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.save_every < 1:
            raise bad("save_every", f"must be >= 1, got {self.save_every}")


@dataclass
class TrainResult:
    steps: int
    tokens: int
    train_seconds: float
    tokens_per_second: float
    first_loss: float | None
    last_loss: float | None
    best_metric: float | None
    eval: dict[str, float]
    history: list[dict[str, Any]]


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
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from .distributed import accelerator_kwargs

    mode = resolve_precision(precision)
    try:
        return Accelerator(mixed_precision=mode, **accelerator_kwargs())
    except ValueError:
        # accelerate keeps one mixed-precision setting per process; a recipe whose stages use different
        # precisions runs them in one process, so drop that setting (not the distributed state) and retry.
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(mixed_precision=mode, **accelerator_kwargs())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _lr_lambda(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(1.0, progress)
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decay matrices only: norms (incl. SubLN) and biases are not weights to shrink.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


FUSED_DEVICES = ("cpu", "cuda")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `_param_groups`, fused where torch has a fused kernel for the parameters' device.

    The default for-loop AdamW runs ~8 elementwise kernels per parameter, each a full pass over the tensor:
    0.6-0.8 s per step for SmolLM2-135M's parameters on one CPU thread, 0.13 s fused (docs/pipeline.md,
    performance notes). Same update formula; rounding may differ in the last bit.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(
        p.device.type in FUSED_DEVICES and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
        for p in params
    )
    return torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay,
        fused=fused or None,
    )


def _batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


class _Logger:
    """Append-only jsonl log (+ TensorBoard when installed) that forgets steps undone by a resume."""

    def __init__(self, train_dir: Path, resume_step: int, enabled: bool) -> None:
        self.path = train_dir / "log.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        keep.append(line)
                except json.JSONDecodeError:
                    pass  # a line cut by a kill
            atomic_write_text(self.path, "".join(k + "\n" for k in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(train_dir / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:
            self.tb = None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


FAULT_ENV = "BITDISTILL_FAULT"


def _fault(point: str) -> None:
    """Kill this process with SIGKILL at `point` when BITDISTILL_FAULT lists it (crash tests only).

    Points: "<desc>:step:<n>" right after optimizer step n, "<desc>:save:<n>" inside the write of
    checkpoint n, after its files are written and before it is published.
    """
    wanted = os.environ.get(FAULT_ENV)
    if wanted and point in wanted.split(","):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


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
) -> TrainResult:
    """Train `model` in place for `cfg.steps` optimizer steps, resuming from `train_dir` when possible.

    `batches.iterate(start_micro_step)` yields micro-batches (dicts of tensors); the loop moves them to
    the device. Returns the statistics of the whole stage (resumed parts included); on return `model`
    holds the selected weights (`cfg.select`).
    """
    cfg.validate()
    train_dir = Path(train_dir)
    accelerator = accelerator or make_accelerator(cfg.precision)
    main = accelerator.is_main_process
    if main:
        train_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(train_dir)
    seed_everything(cfg.seed)

    model.train()
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, cfg.steps))
    # The scheduler stays outside prepare(): accelerate would step it once per process.
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    state: dict[str, Any] = {
        "tokens": 0,
        "train_seconds": 0.0,
        "first_loss": None,
        "last_loss": None,
        "best_metric": None,
        "best_step": None,
        "eval": {},
        "history": [],
    }
    step = 0
    ckpt = latest_checkpoint(train_dir)
    if ckpt is not None:
        state.update(load_checkpoint(ckpt, raw_model, optimizer, scheduler, rank=accelerator.process_index))
        step = int(state.pop("step"))
        if main:
            print(f"[{desc}] resuming from {ckpt} (step {step}/{cfg.steps})", file=sys.stderr)
    logger = _Logger(train_dir, step, enabled=main)
    best_path = train_dir / "best.safetensors"

    def evaluate() -> dict[str, float]:
        # Evaluation must not perturb the training RNG stream, or resumed and uninterrupted runs diverge.
        saved = rng_state()
        raw_model.eval()
        try:
            with torch.no_grad(), accelerator.autocast():
                result = eval_fn(raw_model) if eval_fn is not None else {}
        finally:
            raw_model.train()
            set_rng_state(saved)
        return {k: float(v) for k, v in result.items()}

    def checkpoint(at: int) -> Path:
        # The main process publishes the directory first; the other ranks then add their RNG state.
        kwargs = dict(keep=cfg.keep_checkpoints, rank=accelerator.process_index)
        if main:
            path = save_checkpoint(
                train_dir, at, raw_model, optimizer, scheduler, state, is_main=True,
                before_publish=lambda: _fault(f"{desc}:save:{at}"), **kwargs,
            )  # fmt: skip
        accelerator.wait_for_everyone()
        if not main:
            path = save_checkpoint(
                train_dir, at, raw_model, optimizer, scheduler, state, is_main=False, **kwargs
            )
        accelerator.wait_for_everyone()
        return path

    def maybe_best(metrics: dict[str, float], at: int) -> None:
        if metric not in metrics or not main:
            return
        value = metrics[metric]
        best = state["best_metric"]
        if best is None or (value > best if greater_is_better else value < best):
            state["best_metric"], state["best_step"] = value, at
            from safetensors.torch import save_model

            tmp = best_path.with_name(f".{best_path.name}.tmp")
            save_model(raw_model, str(tmp))
            os.replace(tmp, best_path)

    last_ckpt: Path | None = ckpt
    micro_iter: Iterator[dict[str, torch.Tensor]] = batches.iterate(step * cfg.grad_accum)
    bar = None
    if main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.steps, initial=step, desc=desc, dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
        )  # fmt: skip
    exhausted = False
    window_loss, window_tokens, window_time, window_steps = 0.0, 0, 0.0, 0
    parts_acc: dict[str, float] = {}
    try:
        while step < cfg.steps and not exhausted:
            t0 = time.perf_counter()
            step_loss, step_tokens = 0.0, 0
            for micro in range(cfg.grad_accum):
                try:
                    batch = next(micro_iter)
                except StopIteration:
                    exhausted = True
                    break
                batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                sync = micro == cfg.grad_accum - 1
                ctx = accelerator.no_sync(model) if not sync else nullcontext()
                with ctx, accelerator.autocast():
                    loss, parts = loss_fn(model, batch)
                # The mean over processes: rank 0 logs the global loss, and a non-finite loss on any rank
                # stops every rank (one rank raising alone would leave the others waiting in all-reduce).
                value, *part_values = mean_across_ranks([float(loss.detach()), *map(float, parts.values())])
                parts = dict(zip(parts, part_values, strict=True))
                if not math.isfinite(value):
                    where = (
                        f"the last good checkpoint {last_ckpt} is kept" if last_ckpt else "no checkpoint yet"
                    )
                    raise BitDistillError(
                        f"[{desc}] step {step + 1}: the loss is {value} (parts: {parts}); training stopped, "
                        f"{where}. Lower train.lr, enable train.max_grad_norm or train.precision: fp32, "
                        "or check the data; re-running resumes from the checkpoint."
                    )
                accelerator.backward(loss / cfg.grad_accum)
                step_loss += value / cfg.grad_accum
                step_tokens += _batch_tokens(batch)
                for k, v in parts.items():
                    parts_acc[k] = parts_acc.get(k, 0.0) + float(v) / cfg.grad_accum
            if exhausted and step_tokens == 0:
                break
            if cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            _fault(f"{desc}:step:{step}")
            dt = time.perf_counter() - t0
            tokens = step_tokens * accelerator.num_processes
            state["tokens"] += tokens
            state["train_seconds"] += dt
            if state["first_loss"] is None:
                state["first_loss"] = step_loss
            state["last_loss"] = step_loss
            window_loss += step_loss
            window_tokens += tokens
            window_time += dt
            window_steps += 1
            if bar is not None:
                bar.update(1)
                run_left = eta.step(desc, tokens, dt)  # the whole run's time left, when one is tracked
                bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens / max(dt, 1e-9):.0f}", **run_left)
            done = step >= cfg.steps or exhausted
            if step % cfg.log_every == 0 or done or step == 1:
                record = {
                    "step": step,
                    "loss": window_loss / window_steps,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens": state["tokens"],
                    "tokens_per_s": window_tokens / max(window_time, 1e-9),
                    **{k: v / window_steps for k, v in parts_acc.items()},
                }
                state["history"].append({"step": step, "loss": record["loss"]})
                logger.log(record)
                window_loss, window_tokens, window_time, window_steps = 0.0, 0, 0.0, 0
                parts_acc = {}
            if eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or done):
                metrics = evaluate()
                state["eval"] = metrics
                logger.log({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})
                if bar is not None:
                    bar.write(
                        f"[{desc}] step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                    )
                maybe_best(metrics, step)
            if step % cfg.save_every == 0 or done:
                last_ckpt = checkpoint(step)
    finally:
        if bar is not None:
            bar.close()
        logger.close()

    if step >= cfg.steps and eval_fn is not None and not state["eval"]:
        # Resumed after the final checkpoint of a run whose eval was lost: evaluate once more.
        state["eval"] = evaluate()
    if cfg.select == "best" and best_path.is_file():
        from safetensors.torch import load_model

        load_model(raw_model, str(best_path), strict=False)
        if hasattr(raw_model, "tie_weights"):
            raw_model.tie_weights()
    raw_model.eval()
    return TrainResult(
        steps=step,
        tokens=int(state["tokens"]),
        train_seconds=float(state["train_seconds"]),
        tokens_per_second=state["tokens"] / max(state["train_seconds"], 1e-9),
        first_loss=state["first_loss"],
        last_loss=state["last_loss"],
        best_metric=state["best_metric"],
        eval=dict(state["eval"]),
        history=list(state["history"]),
    )


def result_dict(result: TrainResult) -> dict[str, Any]:
    out = asdict(result)
    out.pop("history")
    return out
