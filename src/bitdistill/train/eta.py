"""Time left of a whole multi-stage run (the demo), estimated from its first training steps.

Each training stage's tqdm bar shows that stage's own time left. For the run as a whole the work of every
stage is counted up front in *cost units*: tokens x a per-stage cost factor (a BitNet step costs a bit more
than an FP step per token, a distillation step adds the teacher's forward, evaluation is forward-only).
The seconds per unit are measured on the steps done so far, so the estimate is there from the first
step and follows the machine's real speed (fp32 vs bf16, a busy core). The factors are ratios measured on
this project's CPU runs (docs/results.md); they are estimates, the measured rate carries the rest.

`Tracker` is installed for a run with `track(tracker)`; the training loop reports each step through
`step(desc, tokens, seconds)`, which returns the postfix its progress bar shows (empty when no run is
tracked). A stage's first step also prints one line with the overall estimate.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..config.choices import STAGES

# Cost per token relative to an FP fine-tuning step's token (forward + backward + AdamW).
FACTORS = {"teacher": 1.0, "bitnet_sft": 1.1, "continue_pretrain": 1.0, "distill": 1.6}
EVAL_FACTOR = {"fp": 0.3, "bitnet": 0.45}  # forward only; BitLinear's eval path quantizes every input
OVERHEAD_S = 15.0  # per stage or evaluated model: loading, converting and saving a ~135M model


@dataclass
class Item:
    name: str
    steps: int = 0  # optimizer steps (training), 0 for an evaluation
    per_step: float = 0.0  # examples per step (task stages) or tokens per step (pretraining)
    per_example_tokens: bool = True  # per_step counts examples, whose length is measured on the fly
    factor: float = 1.0
    done_steps: int = 0
    finished: bool = False

    def units(self, tokens_per_example: float, steps: int) -> float:
        per = self.per_step * (tokens_per_example if self.per_example_tokens else 1.0)
        return steps * per * self.factor


@dataclass
class Tracker:
    items: list[Item]
    tokens_per_example: float = 24.0  # SST-2 prompt + label with a BPE tokenizer; replaced once measured
    seconds: float = 0.0  # training seconds so far
    units: float = 0.0  # cost units those seconds did
    _started: float = field(default_factory=time.perf_counter)
    _announced: set = field(default_factory=set)

    def _item(self, name: str) -> Item | None:
        return next((i for i in self.items if i.name == name), None)

    def remaining_seconds(self) -> float | None:
        if self.units <= 0:
            return None
        rate = self.seconds / self.units
        left = 0.0
        for item in self.items:
            if item.finished:
                continue
            left += rate * item.units(self.tokens_per_example, max(item.steps - item.done_steps, 0))
            left += OVERHEAD_S if item.done_steps == 0 else 0.0
        return left

    def step(self, desc: str, tokens: int, seconds: float) -> dict[str, str]:
        item = self._item(desc)
        if item is None:
            return {}
        if item.per_example_tokens and item.per_step > 0 and tokens > 0 and item.done_steps == 0:
            self.tokens_per_example = tokens / item.per_step  # this task's real lengths
        item.done_steps += 1
        for earlier in self.items[: self.items.index(item)]:
            if earlier.steps:  # training stages before this one are over (done, or skipped as done)
                earlier.finished = True
        self.seconds += seconds
        self.units += item.units(self.tokens_per_example, 1) if item.per_example_tokens else tokens * item.factor
        left = self.remaining_seconds()
        if left is None:
            return {}
        if desc not in self._announced:
            self._announced.add(desc)
            stages = ", ".join(i.name for i in self.items if not i.finished)
            from tqdm.auto import tqdm

            tqdm.write(  # above the stage's progress bar, not through it
                f"[bitdistill] {desc}: step 1 took {seconds:.1f}s; whole run: ~{_clock(left)} left "
                f"({stages}; estimated from the steps so far)",
                file=sys.stderr,
            )  # fmt: skip
        return {"run_left": _clock(left)}


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def plan(recipe, eval_examples: int) -> Tracker:
    """A tracker for `recipe`'s enabled training stages and its evaluations of `eval_examples` each."""
    items = []
    for name in STAGES:
        stage = getattr(recipe, name)
        if not stage.enabled or (name == "teacher" and getattr(stage, "path", None)):
            continue
        cfg = recipe.train_config(name)
        batch = cfg.batch_size * cfg.grad_accum
        if name == "continue_pretrain":  # the token budget sets the steps; an explicit train.steps caps them
            block = stage.corpus.block_size
            steps = -(-int(stage.corpus.tokens) // (block * batch))
            if "steps" in {**recipe.train, **stage.train}:
                steps = min(steps, cfg.steps)
            items.append(Item(name, steps, batch * block, per_example_tokens=False, factor=FACTORS[name]))
        else:
            items.append(Item(name, cfg.steps, batch, factor=FACTORS[name]))
    if recipe.eval.enabled:
        for name in recipe.eval.stages:
            kind = "fp" if name == "teacher" else "bitnet"
            items.append(Item(f"eval:{name}", 1, eval_examples, factor=EVAL_FACTOR[kind]))
    return Tracker(items)


_ACTIVE: Tracker | None = None


@contextmanager
def track(tracker: Tracker) -> Iterator[Tracker]:
    global _ACTIVE
    _ACTIVE = tracker
    try:
        yield tracker
    finally:
        _ACTIVE = None


def step(desc: str, tokens: int, seconds: float) -> dict[str, str]:
    """Report one optimizer step of stage `desc`; the overall-ETA postfix for its progress bar."""
    return _ACTIVE.step(desc, tokens, seconds) if _ACTIVE is not None else {}
