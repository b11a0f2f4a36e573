"""What a study recipe states, and what the runner hands back to it.

A recipe (one module per ``mftrain study`` command) is a :class:`Recipe`: built from its
arguments and the user's store (its checks against the store run then, before anything is
written), it says which level is scarce and which labels it scores, which training stores each
seed needs (:attr:`Recipe.sizes`), which runs each seed trains (:meth:`Recipe.jobs`, as
:class:`Job`), what results.json holds once every run is scored (:meth:`Recipe.results`, from the
:class:`Scored` runs), its report, and its terminal table. Everything else (study stores, the
plan check, running, resuming, scoring, results.json and report.md) is the runner's
(:mod:`mftrain.studies.runner`), the same for every recipe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from mfdata.progress import Echo
from mfdata.store.store import Store
from mftrain.studies.args import Budget, StudyArgs
from mftrain.studies.data import Draw, StudyData
from mftrain.studies.tables import summarise

A = TypeVar("A", bound=StudyArgs)
Kept = tuple[str, ...] | None  # the scarce level's labels a training store keeps (None: all)


@dataclass
class Seed:
    """One seed of a study: its draw among the scarce level's structures, its training stores
    and its runs' directory."""

    seed: int
    draw: Draw
    stores: dict[tuple[int | None, Kept], list[str]]  # (N, scarce labels kept) -> data.stores
    root: Path  # OUT/runs/seed-K

    def training(self, n: int | None = None, kept: Kept = None) -> list[str]:
        """The training stores (a run's ``data.stores``) with the scarce level on ``n``
        structures (of :attr:`Recipe.sizes`), keeping its labels ``kept`` (of
        :attr:`Recipe.kept`; None: all)."""
        return self.stores[n, kept]


@dataclass
class Job:
    """One run: model ``name`` for ``seed``, trained on ``stores`` for ``budget`` in directory
    ``run`` with the ``model``'s settings over the base config (see
    :func:`mftrain.studies.configs.run_config`). ``n``: the training size it belongs to, if the
    recipe has several. Phase 2 runs start once every phase 1 run has finished (fine-tuning
    from a pre-trained checkpoint)."""

    name: str
    seed: int
    run: Path
    stores: list[str]
    model: dict[str, Any]
    budget: Budget
    n: int | None = None
    phase: int = 1


@dataclass
class Scored:
    """A finished run, scored on the test store: per head, metrics and parity arrays."""

    job: Job
    metrics: dict[str, dict[str, Any]]
    parity: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    steps: int  # the step its final checkpoint's run reached (fine-tuning: stage 2's)
    seconds: float  # wall time of its ``mftrain fit``
    checkpoint: Path  # its final checkpoint


@dataclass
class Results:
    """What a recipe makes of its scored runs: results.json's entries (before ``study``), its
    own entries in ``study``, and arrays its report plots that results.json leaves out."""

    entries: dict[str, Any]
    study: dict[str, Any]
    arrays: dict[str, Any] = field(default_factory=dict)


class Recipe(ABC, Generic[A]):
    """One comparison on one store. Subclasses set :attr:`name` and, when built, :attr:`scarce`,
    :attr:`scored` and (if not every structure) :attr:`sizes`; :attr:`kept` when some models
    must not see some of the scarce level's labels (not even through statistics)."""

    name: ClassVar[str]  # the command's name; results.json's ``study.recipe``
    scarce: str  # the level whose labels the training stores keep on N structures only
    scored: list[tuple[str, str]]  # (level, label) pairs every test structure has
    sizes: list[int | None]  # the training stores each seed needs (None: every structure)
    kept: list[Kept]  # per size, stores keeping these scarce labels (None: all of them)

    def __init__(self, args: A, store: Store) -> None:
        self.args = args
        self.sizes = [None]
        self.kept = [None]

    def plan(self) -> dict[str, Any]:
        """The recipe's entries in the study plan (beside the arguments): resolved levels..."""
        return {}

    @abstractmethod
    def jobs(self, seed: Seed) -> list[Job]:
        """The runs of one seed."""

    @abstractmethod
    def results(
        self, data: StudyData, seeds: list[Seed], runs: list[Scored], echo: Echo
    ) -> Results:
        """results.json's numbers from every run (in job order) and any further analysis."""

    @abstractmethod
    def report(self, out: Path, summary: dict[str, Any], arrays: dict[str, Any]) -> str:
        """report.md's text; its figures written under ``OUT/figures``."""

    @staticmethod
    @abstractmethod
    def table(summary: dict[str, Any]) -> str:
        """The comparison table printed at the end."""


def over_seeds(runs: list[Scored], name: str, level: str, n: int | None = None) -> dict[str, Any]:
    """Head ``level``'s metrics of model ``name`` (size ``n``), per seed, mean and spread."""
    per_seed = [
        {"seed": r.job.seed, **r.metrics[level], "steps": r.steps}
        for r in sorted(runs, key=lambda r: r.job.seed)
        if r.job.name == name and r.job.n == n and level in r.metrics
    ]
    return {**summarise(per_seed), "per_seed": per_seed}
