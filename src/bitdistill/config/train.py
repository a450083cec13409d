"""TrainConfig: the optimisation knobs of one stage, settable from a recipe's `train:` section.

Plain data (no torch): a recipe is parsed and checked before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BitDistillError, require_finite

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULES = ("cosine", "linear", "constant")


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
