"""Samplers: mixing levels of theory by ratio, batching by count or atom budget, sharding by rank.

Training samples are (structure, level) label sets, gathered in one pool per level. An epoch is
built in three deterministic steps from (seed, epoch):

1. **Mixing**: how many samples each level contributes (``natural``: every sample once;
   ``explicit`` ratios; ``balanced``; ``temperature``: p ∝ n^(1/T); ``schedule``: ratios that
   change with the epoch). A level drawn more often than its pool size repeats its pool in fresh
   permutations, so every sample is seen before any is seen twice.
2. **Batching**: a fixed number of samples per batch, or batches filled up to an atom budget.
3. **Sharding**: batches are dealt round-robin to ranks, padded so every rank gets the same
   number of batches (unequal counts hang DDP): the batch list is repeated from its start until
   its length is a multiple of the world size, so at most one batch per rank is a repeat.

**Block shuffling** (``blocks``: a block id per sample, e.g. ``ZarrFidelityDataset.sample_block``,
runs of structures aligned to the Zarr chunks): the epoch's samples, chosen as above, are
ordered block by block (blocks in a random order, samples in a random order within a block), so a
reader with a small chunk cache fetches and decompresses each chunk once per epoch. Ranks then get
contiguous runs of batches instead of every W-th batch, and with ``num_workers`` DataLoader
workers a rank's batches are split into that many contiguous runs and interleaved, so that the
DataLoader's round-robin hands each worker its own run of blocks.

The sampler's state (epoch and batches already yielded) can be saved and restored mid-epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    pools: list[np.ndarray],
    weights: list[float],
    epoch_size: int,
    seed: int,
    epoch: int,
    blocks: np.ndarray | None = None,
) -> np.ndarray:
    """The sample ids of one epoch, shuffled; deterministic for (seed, epoch).

    With ``blocks`` (block id of every sample id) the shuffle is by block: blocks in a random
    order, and a random order within each block.
    """
    rng = np.random.default_rng([seed, epoch])
    chosen = []
    for pool, count in zip(pools, _counts(weights, epoch_size), strict=True):
        repeats = -(-count // len(pool)) if len(pool) else 0
        drawn = np.concatenate([rng.permutation(pool) for _ in range(repeats)] or [pool[:0]])
        chosen.append(drawn[:count])
    samples = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    samples = samples[rng.permutation(len(samples))]
    if blocks is not None and len(samples):
        # a second stream, so the plain shuffle above is the same with or without blocks
        block_rank = np.random.default_rng([seed, epoch, 1]).permutation(int(blocks.max()) + 1)
        samples = samples[np.argsort(block_rank[blocks[samples]], kind="stable")]
    return samples


def batch_bounds(
    samples: np.ndarray,
    n_atoms: np.ndarray,
    batch_size: int | None = None,
    max_atoms: int | None = None,
) -> np.ndarray:
    """Where each batch of ``samples`` starts, and the end: batches of ``batch_size`` samples,
    or of at most ``max_atoms`` atoms, filled greedily in order so the epoch's shuffle is kept.

    Batch ``j`` is ``samples[bounds[j]:bounds[j + 1]]``; one array for an epoch's batches keeps
    the plan at 8 bytes per sample.
    """
    if (batch_size is None) == (max_atoms is None):
        raise ValueError("give exactly one of batch_size and max_atoms")
    n = len(samples)
    if batch_size is not None:
        return np.append(np.arange(0, n, batch_size, dtype=np.int64), n)
    sizes = n_atoms[samples]
    too_big = np.flatnonzero(sizes > max_atoms)
    if len(too_big):
        raise ValueError(
            f"sample {samples[too_big[0]]} has {sizes[too_big[0]]} atoms, more than the atom "
            f"budget of {max_atoms} per batch"
        )
    starts, filled = [0], 0
    for i, size in enumerate(sizes.tolist()):
        if filled + size > max_atoms:
            starts.append(i)
            filled = 0
        filled += size
    if n == 0:
        return np.zeros(1, np.int64)
    return np.asarray([*starts, n], dtype=np.int64)


def make_batches(
    samples: np.ndarray,
    n_atoms: np.ndarray,
    batch_size: int | None = None,
    max_atoms: int | None = None,
) -> list[np.ndarray]:
    """Split ``samples`` into batches of ``batch_size`` samples, or of at most ``max_atoms`` atoms.

    Atom-budget batches are filled greedily in order, so the epoch's shuffle is kept.
    """
    bounds = batch_bounds(samples, n_atoms, batch_size, max_atoms)
    return [samples[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]


def interleave(batches: Sequence, lanes: int) -> list:
    """Split ``batches`` into ``lanes`` contiguous runs and interleave them, so that a
    round-robin over ``lanes`` consumers (a DataLoader's workers) gives consumer ``w`` run ``w``.

    Runs differ in length by at most one, longer runs first, so the last, partial round still
    goes to consumers 0, 1, ... in order.
    """
    if lanes <= 1 or len(batches) <= 1:
        return list(batches)
    q, r = divmod(len(batches), lanes)
    bounds = np.cumsum([0] + [q + (w < r) for w in range(lanes)])
    runs = [batches[bounds[w] : bounds[w + 1]] for w in range(lanes)]
    return [run[j] for j in range(q + (r > 0)) for run in runs if j < len(run)]


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class FidelityBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of sample ids mixing levels, for one rank; a DataLoader ``batch_sampler``.

    ``pools`` maps level id -> sample ids of that level (in head order); ``n_atoms`` gives the
    atom count of every sample id. ``epoch_size`` (samples per epoch, all ranks together)
    defaults to the total number of samples. ``shuffle=False`` keeps the pools' order and
    repeats nothing (for validation). ``blocks`` (block id of every sample id) turns on block
    shuffling (module docstring); ``num_workers`` then names the DataLoader workers that read
    this rank's batches. ``rank`` and ``world_size`` default to torch.distributed's.
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
        blocks: np.ndarray | None = None,
        num_workers: int = 0,
    ):
        self.pools = {level: np.asarray(ids, dtype=np.int64) for level, ids in pools.items()}
        self.n_atoms = np.asarray(n_atoms)
        self.blocks = None if blocks is None else np.asarray(blocks, dtype=np.int64)
        if self.blocks is not None and self.blocks.shape != self.n_atoms.shape:
            raise ValueError(
                f"blocks has {len(self.blocks)} entries; n_atoms has {len(self.n_atoms)}"
            )
        if self.blocks is not None and len(self.blocks) and self.blocks.min() < 0:
            raise ValueError("block ids must be >= 0")
        self.num_workers = int(num_workers)
        self.mixing = mixing or LevelMixing()
        total = sum(len(p) for p in self.pools.values())
        self.epoch_size = total if epoch_size is None else int(epoch_size)
        self.batch_size, self.max_atoms = batch_size, max_atoms
        self.seed, self.shuffle = seed, shuffle
        default_rank, default_world = _distributed()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        self.epoch, self.position = 0, 0
        self._cache: tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        batch_bounds(np.zeros(0, np.int64), self.n_atoms, batch_size, max_atoms)  # checks args
        if max_atoms is not None and total:
            largest = int(self.n_atoms[np.concatenate(list(self.pools.values()))].max())
            if largest > max_atoms:
                raise ValueError(f"a sample has {largest} atoms, more than max_atoms={max_atoms}")

    def level_weights(self, epoch: int | None = None) -> dict[str, float]:
        sizes = {level: len(ids) for level, ids in self.pools.items()}
        return self.mixing.weights(sizes, self.epoch if epoch is None else epoch)

    def _rank_plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The epoch's samples, its batch bounds, and the batches of this rank in the order it
        reads them (computed once per epoch)."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._compute_rank_plan())
        return self._cache[1]

    def _compute_rank_plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.shuffle:
            weights = list(self.level_weights().values())
            samples = epoch_samples(
                list(self.pools.values()),
                weights,
                self.epoch_size,
                self.seed,
                self.epoch,
                self.blocks,
            )
        else:
            samples = np.concatenate(list(self.pools.values()) or [np.zeros(0, np.int64)])
            if self.blocks is not None:
                samples = samples[np.argsort(self.blocks[samples], kind="stable")]
        bounds = batch_bounds(samples, self.n_atoms, self.batch_size, self.max_atoms)
        n_batches = len(bounds) - 1
        if not n_batches:
            return samples, bounds, np.zeros(0, np.int64)
        per_rank = -(-n_batches // self.world_size)
        padded = np.arange(per_rank * self.world_size, dtype=np.int64) % n_batches
        if self.blocks is None:
            return samples, bounds, padded[self.rank :: self.world_size]
        mine = padded[self.rank * per_rank : (self.rank + 1) * per_rank]
        return samples, bounds, np.asarray(interleave(mine, self.num_workers), dtype=np.int64)

    def __iter__(self) -> Iterator[list[int]]:
        samples, bounds, order = self._rank_plan()
        start, self.position = self.position, 0
        if start >= len(order):
            start = 0  # the last pass ended on its final batch (consumers stop at len())
        for i in range(start, len(order)):
            self.position = i + 1
            j = order[i]
            yield samples[bounds[j] : bounds[j + 1]].tolist()
        self.position = 0

    def __len__(self) -> int:
        return len(self._rank_plan()[2])

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
