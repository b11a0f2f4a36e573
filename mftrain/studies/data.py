"""Study stores: what each run of a study may see, written to disk before anything trains.

A recipe compares models on one store. To make the comparison fair and checkable, models never
train on the user's store itself: the runner writes *study stores* derived from it (mfdata's
format, under ``OUT/data``), so that what each run could see is on disk and in its provenance:

- ``test``: the held-out structures, drawn with the split seed from those that have every label
  the recipe scores; all their labels kept. Every model is scored on it.
- ``train-nN-seedK``: every other structure of the store, with the scarce (expensive) level's
  labels kept only on N training structures and on the validation structures, and a saved split
  ``study`` (:data:`SPLIT`) whose validation part is those validation structures.
  ``train-nN-seedK-energy`` (and so on): the same with only the named labels of the scarce level,
  for models that must not train on the others: a label absent from a store cannot reach a
  model, not even through the statistics its heads start from. For seed K,
  the scarce level's structures outside the test part are shuffled once: the first ones
  validate, the next N train, so the N structures of a smaller N are among those of a larger
  one (nested learning curves). Every structure without the scarce level trains.

Guarantees: a study store that exists is reused, never rewritten (its name says what it holds);
:func:`check_held_out` raises :class:`LeakError` when a training store holds a geometry of the
test store (geometry hashes compared); statistics (the heads' reference energies) come from each
study store alone. The checks of levels and sizes against the user's store raise
:class:`mfdata.errors.UsageError` naming the option.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfdata.errors import MfkitError, UsageError
from mfdata.examples import bundled_store
from mfdata.levels import resolve_level
from mfdata.progress import Echo
from mfdata.records import Source, Structures
from mfdata.schema import LABEL_KINDS, SplitInfo
from mfdata.split import save_split
from mfdata.stats import StatisticsWarning, update_statistics
from mfdata.store.lmdb_store import pack
from mfdata.store.store import Store, store_as_source, write_store

SPLIT = "study"  # the split saved in every training store


class LeakError(MfkitError):
    """A geometry of the test store is in a training store (e.g. duplicates in the source)."""


def default_store() -> str:
    """The bundled methanol store (a writable copy): every study's data when none is given."""
    return str(bundled_store())


def require_level(store: Store, name: str, option: str, labels: Sequence[str] = ("energy",)) -> str:
    """The id of level ``name`` (given with ``option``), which must be in ``store`` with
    ``labels``."""
    level = resolve_level(name).id
    known = store.manifest.levels
    if level not in known:
        raise UsageError(
            f"{store.path}: {option} {level} is not in the store (it has {', '.join(known)})"
        )
    missing = [kind for kind in labels if kind not in known[level].labels]
    if missing:
        raise UsageError(
            f"{store.path}: {option} {level} has no {' or '.join(missing)} in the store (the "
            f"study needs its {' and '.join(labels)})"
        )
    return level


def require_levels(store: Store, names: Sequence[str] | None, option: str) -> list[str]:
    """The ids of levels ``names`` (default: every level of ``store``), two or more, each in the
    store with energies."""
    given = list(store.manifest.levels) if names is None else names
    levels = list(dict.fromkeys(require_level(store, name, option) for name in given))
    if len(levels) < 2:
        raise UsageError(f"{option} {', '.join(levels)}: the study needs two levels or more")
    return levels


@dataclass
class StudyData:
    """The user's store read once, the test store, and the scarce level's other structures."""

    root: Path
    source: Source  # the user's store as an mfdata source (its structures and units)
    info: dict[str, Any]  # path, name, checksum of the user's store
    scarce: str
    test: Path
    test_index: np.ndarray  # structure indices in the user's store
    pool: np.ndarray  # structures with a scarce label outside the test part


@dataclass
class Draw:
    """One seed's choice among the pool: validation structures and the training order."""

    seed: int
    val: np.ndarray  # structure indices in the user's store
    order: np.ndarray  # the other pool structures, shuffled: a run with N takes the first N

    def train(self, n: int | None) -> np.ndarray:
        return np.sort(self.order if n is None else self.order[:n])


def has_label(s: Structures, level: str, kind: str | None = None) -> np.ndarray:
    """Which structures have ``kind`` (any kind when None) at ``level``."""
    found = np.zeros(s.n_structures, dtype=bool)
    for (lvl, k), label in s.labels.items():
        if lvl == level and kind in (None, k):
            found |= label.present
    return found


def keep_labels(
    s: Structures, level: str, keep: np.ndarray, kinds: Sequence[str] | None = None
) -> Structures:
    """``s`` with ``level``'s labels removed (NaN, not present) where ``keep`` is False, and
    entirely for a kind not in ``kinds`` (None: keep every kind); a label left on no structure is
    dropped, so that the store does not list it."""
    labels = {}
    for key, label in s.labels.items():
        if key[0] == level and kinds is not None and key[1] not in kinds:
            continue
        if key[0] == level:
            present = label.present & keep
            values = label.values.copy()
            rows = s.atom_mask(~present) if LABEL_KINDS[key[1]].per == "atom" else ~present
            values[rows] = np.nan
            label = type(label)(values, present)
        if label.present.any():
            labels[key] = label
    s.labels = labels
    return s


def _write_derived(
    source: Source, index: np.ndarray, out: Path, description: str, keep: tuple | None = None
) -> Store:
    """A store of ``source``'s structures at ``index`` (optionally with one level's labels kept
    only where a mask says), packed and with statistics."""
    structures = source.structures.select(index)
    structures.source = np.zeros(len(index), dtype=np.int16)  # one input: the user's store
    if keep is not None:
        structures = keep_labels(structures, *keep)
    write_store(out, structures, [source], name=out.name, description=description)
    pack(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StatisticsWarning)  # e.g. one molecule: rank 1
        update_statistics(out)
    return Store(out)


def prepare_study_data(
    store: Store,
    scarce: str,
    scored: Sequence[tuple[str, str]],
    n_test: int,
    root: Path,
    split_seed: int,
    echo: Echo,
) -> StudyData:
    """Draw the test part and write ``ROOT/test`` (or reuse it).

    ``scored``: (level, label) pairs every test structure has. Raises UsageError when the store
    lacks them or has too few structures for ``n_test`` plus training and validation.
    """
    info = {
        "path": str(store.path.resolve()),
        "name": store.manifest.name,
        "checksum": store.manifest.checksum,
    }
    levels = store.manifest.levels
    for level, kind in scored:
        if level not in levels or kind not in levels[level].labels:
            have = "; ".join(f"{lvl}: {', '.join(s.labels)}" for lvl, s in levels.items())
            raise UsageError(
                f"{store.path}: the study scores {level} {kind}, but the store has no {kind} at "
                f"{level} (it has {have})"
            )
    source = store_as_source(store)
    s = source.structures
    candidates = np.ones(s.n_structures, dtype=bool)
    for level, kind in scored:
        candidates &= has_label(s, level, kind)
    candidates = np.flatnonzero(candidates)
    scarce_rows = np.flatnonzero(has_label(s, scarce))
    if len(candidates) < n_test or len(scarce_rows) - n_test < 2:
        raise UsageError(
            f"{store.path}: {len(candidates)} structures have every scored label and "
            f"{len(scarce_rows)} have {scarce}: too few for a test part of {n_test} plus "
            "training and validation structures (use a smaller --n-test)"
        )
    test = np.sort(np.random.default_rng(split_seed).permutation(candidates)[:n_test])
    path = root / "test"
    if not path.exists():
        echo(f"writing study store {path} ({len(test)} held-out structures)")
        where = f"{info['name']} ({info['path']}, checksum {info['checksum'][:16]})"
        _write_derived(source, test, path, f"study test part of {where}")
    pool = np.setdiff1d(scarce_rows, test)
    return StudyData(root, source, info, scarce, path, test, pool)


def draw(data: StudyData, seed: int, val_fraction: float) -> Draw:
    """Seed ``seed``'s validation structures and training order among the pool."""
    order = np.random.default_rng(seed).permutation(data.pool)
    n_val = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    return Draw(seed, np.sort(order[:n_val]), order[n_val:])


def training_store(
    data: StudyData, chosen: Draw, n: int | None, echo: Echo, kept: Sequence[str] | None = None
) -> Path:
    """``ROOT/train-nN-seedK[-KINDS]``: every structure but the test ones, the scarce level's
    labels (of the kinds ``kept``; None: all) on ``n`` training structures (all: ``None``) and
    the validation ones, and the split ``study``."""
    if n is not None and n > len(chosen.order):
        raise UsageError(
            f"N = {n}: only {len(chosen.order)} {data.scarce} structures are left for training "
            f"({len(data.test_index)} held out for testing, {len(chosen.val)} for validation)"
        )
    only = "" if kept is None else "-" + "-".join(kept)
    path = data.root / f"train-n{'all' if n is None else n}-seed{chosen.seed}{only}"
    if path.exists():
        return path
    index = np.setdiff1d(np.arange(data.source.structures.n_structures), data.test_index)
    keep = np.isin(index, np.union1d(chosen.train(n), chosen.val))
    echo(f"writing study store {path} ({len(chosen.train(n))} {data.scarce} training structures)")
    store = _write_derived(
        data.source,
        index,
        path,
        f"study training store of {data.info['name']} (checksum {data.info['checksum'][:16]}): "
        f"no test structure; {data.scarce} {'labels' if kept is None else ', '.join(kept)} on "
        f"{len(chosen.train(n))} training and {len(chosen.val)} validation structures "
        f"(seed {chosen.seed})",
        keep=(data.scarce, keep, kept),
    )
    part = np.isin(index, chosen.val).astype(np.int8)  # 0 train, 1 val
    counts = np.bincount(part, minlength=2)
    info = SplitInfo(
        name=SPLIT,
        by="structure",
        fractions=(counts / counts.sum()).tolist(),
        parts=["train", "val"],
        sizes={"train": int(counts[0]), "val": int(counts[1])},
        seed=chosen.seed,
    )
    save_split(store, info, part, np.flatnonzero(part == 0))
    return path


def check_held_out(test: str | Path, training: Sequence[str | Path]) -> None:
    """Raise :class:`LeakError` if a geometry of the ``test`` store is in a ``training`` store."""
    _, test_hashes = Store(test).read()
    for path in training:
        _, hashes = Store(path).read()
        shared = np.intersect1d(test_hashes, hashes)
        if len(shared):
            raise LeakError(f"{path} holds {len(shared)} test geometries of {test}")
