"""A training run's state as plain data: what a checkpoint stores, a log window's sums, one step's outcome."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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


@dataclass
class TrainState:
    """The run's progress, stored in every checkpoint (trainer_state.json) and restored on resume."""

    step: int = 0  # optimizer steps done
    tokens: int = 0
    train_seconds: float = 0.0
    first_loss: float | None = None
    last_loss: float | None = None
    best_metric: float | None = None
    best_step: int | None = None
    eval: dict[str, float] = field(default_factory=dict)  # the last evaluation's metrics
    history: list[dict[str, Any]] = field(default_factory=list)  # {step, loss} of every log line

    def to_dict(self) -> dict[str, Any]:
        """What the checkpoint stores; save_checkpoint adds the step itself."""
        out = asdict(self)
        out.pop("step")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def add_step(self, loss: float, tokens: int, seconds: float) -> None:
        self.step += 1
        self.tokens += tokens
        self.train_seconds += seconds
        if self.first_loss is None:
            self.first_loss = loss
        self.last_loss = loss

    def improves(self, value: float, greater_is_better: bool) -> bool:
        best = self.best_metric
        return best is None or (value > best if greater_is_better else value < best)

    def result(self) -> TrainResult:
        return TrainResult(
            steps=self.step,
            tokens=int(self.tokens),
            train_seconds=float(self.train_seconds),
            tokens_per_second=self.tokens / max(self.train_seconds, 1e-9),
            first_loss=self.first_loss,
            last_loss=self.last_loss,
            best_metric=self.best_metric,
            eval=dict(self.eval),
            history=list(self.history),
        )


@dataclass
class LogWindow:
    """Sums over the optimizer steps since the last log line; a log line reports their means."""

    loss: float = 0.0
    tokens: int = 0
    seconds: float = 0.0
    steps: int = 0
    parts: dict[str, float] = field(default_factory=dict)

    def add(self, step: StepOutcome, tokens: int, seconds: float) -> None:
        self.loss += step.loss
        self.tokens += tokens
        self.seconds += seconds
        self.steps += 1
        for k, v in step.parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v

    def record(self, step: int, lr: float, total_tokens: int) -> dict[str, Any]:
        return {
            "step": step,
            "loss": self.loss / self.steps,
            "lr": lr,
            "tokens": total_tokens,
            "tokens_per_s": self.tokens / max(self.seconds, 1e-9),
            **{k: v / self.steps for k, v in self.parts.items()},
        }


@dataclass
class StepOutcome:
    """One optimizer step's gradient-accumulated loss, its parts and its non-pad tokens (this process)."""

    loss: float = 0.0
    tokens: int = 0
    parts: dict[str, float] = field(default_factory=dict)
