"""A Lightning callback that times training steps, for ``benchmarks/train.py``.

Importable by module name (``step_timer.StepTimes``), so that a ``nequip-train`` config can list
it among its callbacks when ``benchmarks/`` is on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class StepTimes(Callback):
    """Per training batch: the step (``on_train_batch_start`` to ``on_train_batch_end``: forward,
    loss, backward and optimiser step) and the interval from one batch's start to the next's
    (the step plus loading, sampling, logging and every other callback). On a GPU each time is
    taken after ``torch.cuda.synchronize``. With ``path`` the times are written there as JSON when
    training ends."""

    def __init__(self, path: str | None = None):
        super().__init__()
        self.path = path
        self.starts: list[float] = []
        self.steps: list[float] = []

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(self._now())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(self._now() - self.starts[-1])

    @property
    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.starts[:-1], self.starts[1:], strict=True)]

    def on_train_end(self, trainer, pl_module) -> None:
        if self.path is not None:
            times = {"steps": self.steps, "intervals": self.intervals}
            Path(self.path).write_text(json.dumps(times) + "\n", encoding="utf-8")
