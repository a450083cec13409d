"""A training run's log: append-only jsonl (+ TensorBoard when installed), consistent across resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._fs import atomic_write_text


class TrainLog:
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
