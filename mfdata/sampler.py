"""Samplers: mixing levels of theory by ratio, batching by count or atom budget, sharding by rank.

Training samples are (structure, level) label sets, gathered in one pool per level. An epoch is
built in three deterministic steps from (seed, epoch):

1. **Mixing**: how many samples each level contributes (``natural``: every sample once;
   ``explicit`` ratios; ``balanced``; ``temperature``: p ∝ n^(1/T); ``schedule``: ratios that
   change with the epoch). A level drawn more often than its pool size repeats its pool in fresh
   permutations, so every sample is seen before any is seen twice.
2. **Batching**: a fixed number of samples per batch, or batches filled up to an atom budget.
3. **Sharding**: batches are dealt round-robin to ranks, padded so every rank gets the same
   number of batches (unequal counts hang DDP).

The sampler's state (epoch and batches already yielded) can be saved and restored mid-epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator


class ScheduleStep(BaseModel):
    """From ``epoch`` on, mix levels with these ratios (until the next step)."""

    model_config = ConfigDict(extra="forbid")
    epoch: int = Field(ge=0)
    ratios: dict[str, float]


class LevelMixing(BaseModel):
    """How levels are mixed in an epoch; ratios are keyed by level id and need not sum to 1."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["natural", "explicit", "balanced", "temperature", "schedule"] = "natural"
    ratios: dict[str, float] | None = None
    temperature: float | None = Field(None, gt=0)
    schedule: list[ScheduleStep] | None = None

    @model_validator(mode="after")
    def _needs(self) -> LevelMixing:
        needed = {
            "explicit": self.ratios,
            "temperature": self.temperature,
            "schedule": self.schedule,
        }
        if self.mode in needed and needed[self.mode] is None:
            field = {"explicit": "ratios", "temperature": "temperature", "schedule": "schedule"}[
                self.mode
            ]
            raise ValueError(f"mixing mode {self.mode!r} needs {field!r}")
        if self.schedule is not None and self.schedule[0].epoch != 0:
            raise ValueError("a mixing schedule starts at epoch 0")
        return self

    def weights(self, sizes: dict[str, int], epoch: int) -> dict[str, float]:
        """Fraction of an epoch's samples drawn from each level."""
        if self.mode == "natural":
            raw = {level: float(n) for level, n in sizes.items()}
        elif self.mode == "balanced":
            raw = {level: 1.0 for level, n in sizes.items() if n}
        elif self.mode == "temperature":
            raw = {level: float(n) ** (1.0 / self.temperature) for level, n in sizes.items()}
        else:
            ratios = self.ratios
            if self.mode == "schedule":
                ratios = next(s.ratios for s in reversed(self.schedule) if s.epoch <= epoch)
            unknown = set(ratios) - set(sizes)
            if unknown:
                raise ValueError(f"mixing ratios name levels not in the data: {sorted(unknown)}")
            raw = {level: float(ratios.get(level, 0.0)) for level in sizes}
        empty = [level for level, w in raw.items() if w > 0 and sizes.get(level, 0) == 0]
        if empty:
            raise ValueError(f"mixing asks for levels with no training samples: {empty}")
        total = sum(raw.values())
        if total <= 0:
            raise ValueError("mixing weights are all zero")
        return {level: raw.get(level, 0.0) / total for level in sizes}


def _counts(weights: list[float], total: int) -> np.ndarray:
    """Integer counts proportional to ``weights`` summing to ``total`` (largest remainder)."""
    exact = np.asarray(weights) * total
    counts = np.floor(exact).astype(np.int64)
    remainder = total - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
    return counts


def epoch_samples(
    pools: list[np.ndarray], weights: list[float], epoch_size: int, seed: int, epoch: int
) -> np.ndarray:
    """The sample ids of one epoch, shuffled; deterministic for (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    chosen = []
    for pool, count in zip(pools, _counts(weights, epoch_size), strict=True):
        repeats = -(-count // len(pool)) if len(pool) else 0
        drawn = np.concatenate([rng.permutation(pool) for _ in range(repeats)] or [pool[:0]])
        chosen.append(drawn[:count])
    samples = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    return samples[rng.permutation(len(samples))]


def make_batches(
    samples: np.ndarray,
    n_atoms: np.ndarray,
    batch_size: int | None = None,
    max_atoms: int | None = None,
) -> list[np.ndarray]:
    """Split ``samples`` into batches of ``batch_size`` samples, or of at most ``max_atoms`` atoms.

    Atom-budget batches are filled greedily in order, so the epoch's shuffle is kept.
    """
    if (batch_size is None) == (max_atoms is None):
        raise ValueError("give exactly one of batch_size and max_atoms")
    if batch_size is not None:
        return [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    sizes = n_atoms[samples]
    too_big = np.flatnonzero(sizes > max_atoms)
    if len(too_big):
        raise ValueError(
            f"sample {samples[too_big[0]]} has {sizes[too_big[0]]} atoms, more than the atom "
            f"budget of {max_atoms} per batch"
        )
    batches, start, filled = [], 0, 0
    for i, size in enumerate(sizes.tolist()):
        if filled + size > max_atoms:
            batches.append(samples[start:i])
            start, filled = i, 0
        filled += size
    if start < len(samples):
        batches.append(samples[start:])
    return batches


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class FidelityBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of sample ids mixing levels, for one rank; a DataLoader ``batch_sampler``.

    ``pools`` maps level id -> sample ids of that level (in head order); ``n_atoms`` gives the
    atom count of every sample id. ``epoch_size`` (samples per epoch, all ranks together)
    defaults to the total number of samples. ``shuffle=False`` keeps the pools' order and
    repeats nothing (for validation).
    """

    def __init__(
        self,
        pools: dict[str, np.ndarray],
        n_atoms: np.ndarray,
        *,
        mixing: LevelMixing | None = None,
        epoch_size: int | None = None,
        batch_size: int | None = None,
        max_atoms: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.pools = {level: np.asarray(ids, dtype=np.int64) for level, ids in pools.items()}
        self.n_atoms = np.asarray(n_atoms)
        self.mixing = mixing or LevelMixing()
        total = sum(len(p) for p in self.pools.values())
        self.epoch_size = total if epoch_size is None else int(epoch_size)
        self.batch_size, self.max_atoms = batch_size, max_atoms
        self.seed, self.shuffle = seed, shuffle
        default_rank, default_world = _distributed()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.epoch, self.position = 0, 0
        self._cache: tuple[int, list[np.ndarray]] | None = None
        make_batches(np.zeros(0, np.int64), self.n_atoms, batch_size, max_atoms)  # checks args
        if max_atoms is not None and total:
            largest = int(self.n_atoms[np.concatenate(list(self.pools.values()))].max())
            if largest > max_atoms:
                raise ValueError(f"a sample has {largest} atoms, more than max_atoms={max_atoms}")

    def level_weights(self, epoch: int | None = None) -> dict[str, float]:
        sizes = {level: len(ids) for level, ids in self.pools.items()}
        return self.mixing.weights(sizes, self.epoch if epoch is None else epoch)

    def _rank_batches(self) -> list[np.ndarray]:
        """This rank's batches of the current epoch (computed once per epoch)."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._compute_rank_batches())
        return self._cache[1]

    def _compute_rank_batches(self) -> list[np.ndarray]:
        if self.shuffle:
            weights = list(self.level_weights().values())
            samples = epoch_samples(
                list(self.pools.values()), weights, self.epoch_size, self.seed, self.epoch
            )
        else:
            samples = np.concatenate(list(self.pools.values()) or [np.zeros(0, np.int64)])
        batches = make_batches(samples, self.n_atoms, self.batch_size, self.max_atoms)
        if not batches:
            return []
        per_rank = -(-len(batches) // self.world_size)
        padded = [batches[i % len(batches)] for i in range(per_rank * self.world_size)]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        start, self.position = self.position, 0
        for i in range(start, len(batches)):
            self.position = i + 1
            yield batches[i].tolist()
        self.position = 0

    def __len__(self) -> int:
        return len(self._rank_batches())

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state is for seed {state['seed']}, not {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
