"""The arguments every study recipe takes, checked in one place.

:class:`StudyArgs` holds what every recipe shares (the store, the study directory, the seeds,
the budget per run, the runs at a time, the test part's size, the base config); a recipe's
arguments extend it with their own fields and their own :attr:`~StudyArgs.RULES`. Building one
checks every rule, so a recipe never sees an argument out of range: a bad one raises
:class:`mfdata.errors.UsageError` naming the command-line option, e.g.
``--n-test 0: must be at least 1``. There is one rule per option for every recipe.

Defaults live with the command line (``mftrain study ...``); here only the ones that mean
"not given" (``data``, ``config``, ``jobs``) and those the command line does not offer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from mfdata.errors import UsageError

Rule = Callable[[Any], str | None]  # what is wrong with a given value, or None


def at_least(low: int) -> Rule:
    def rule(value: int) -> str | None:
        return None if value >= low else f"must be at least {low}"

    return rule


def positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def between(low: float, high: float) -> Rule:
    """Strictly between ``low`` and ``high``."""

    def rule(value: float) -> str | None:
        return None if low < value < high else f"must be in ({low:g}, {high:g})"

    return rule


def each_at_least(low: int) -> Rule:
    """A non-empty list whose every value is at least ``low``."""

    def rule(values: Sequence[int]) -> str | None:
        return None if values and min(values) >= low else f"give values of at least {low}"

    return rule


@dataclass(frozen=True)
class Budget:
    """How long a run trains: ``steps`` optimiser steps and/or ``minutes`` of wall clock,
    whichever ends first. Equal steps make models comparable; wall time depends on the model's
    cost and on the machine's load, so it is reported, not compared."""

    steps: int | None
    minutes: float | None

    def describe(self) -> str:
        parts = [] if self.steps is None else [f"{self.steps} steps"]
        parts += [] if self.minutes is None else [f"{self.minutes:g} min"]
        return " or ".join(parts)

    @classmethod
    def planned(cls, arguments: dict[str, Any], prefix: str = "") -> Budget:
        """The budget a study plan (``results.json`` → ``study.arguments``) states."""
        return cls(arguments.get(f"{prefix}steps"), arguments.get(f"{prefix}budget_minutes"))

    def split(self, share: float) -> tuple[Budget, Budget]:
        """Two stages of one run (pre-training, fine-tuning) sharing this budget, the second
        taking ``share`` of it."""
        steps = None if self.steps is None else max(1, round(self.steps * share))
        minutes = None if self.minutes is None else self.minutes * share
        first = Budget(
            None if self.steps is None else max(1, self.steps - steps),
            None if self.minutes is None else self.minutes - minutes,
        )
        return first, Budget(steps, minutes)


@dataclass(kw_only=True)
class StudyArgs:
    """What every recipe takes; valid once built (see :attr:`RULES`)."""

    # field -> its rule; a recipe adds its own fields' with ``StudyArgs.RULES | {...}``
    RULES: ClassVar[dict[str, Rule]] = {
        "n_test": at_least(1),
        "seeds": at_least(1),
        "steps": at_least(1),
        "budget_minutes": positive,
        "val_fraction": between(0, 0.5),
        "jobs": at_least(1),
    }
    NOT_PLANNED: ClassVar[tuple[str, ...]] = ("out", "jobs")  # may change between reruns

    out: str | Path  # the study directory
    n_test: int  # held-out test structures
    seeds: int  # seeds 0..seeds-1
    steps: int | None = None  # optimiser steps per run, the same for every model
    budget_minutes: float | None = None  # wall-clock minutes per run, if also (or only) limited
    data: str | None = None  # a store (path or registered name); None: the bundled store
    config: str | Path | None = None  # base mftrain config every run shares
    jobs: int | None = None  # runs at a time; None: one per CPU core
    val_fraction: float = 0.1  # of the scarce level's structures outside the test part
    split_seed: int = 0  # draws the test part

    def __post_init__(self) -> None:
        self.out = os.fspath(self.out)
        if self.config is not None:
            self.config = os.fspath(self.config)
        for name, rule in self.RULES.items():
            value = getattr(self, name)
            problem = None if value is None else rule(value)
            if problem is not None:
                raise UsageError(f"--{name.replace('_', '-')} {value}: {problem}")
        if self.steps is None and self.budget_minutes is None:
            raise UsageError("give --steps (the same for every model) or --budget-minutes")

    def budget(self) -> Budget:
        """Every run's budget (a fine-tuning run's, its stage 2)."""
        return Budget(self.steps, self.budget_minutes)

    def plan(self) -> dict[str, Any]:
        """The arguments that define the study: every field but :attr:`NOT_PLANNED`."""
        return {k: v for k, v in asdict(self).items() if k not in self.NOT_PLANNED}
