"""Named, group-aware splits shared by all levels of a store, and nested learning-curve subsets.

A split assigns every structure of a store to one part (train/val/test). Units of assignment are
structures, groups (the molecule a conformer belongs to) or formulas, so that no geometry,
molecule or formula sits in two parts, whatever level it is labelled at. Units are shuffled with
the seed and filled into parts by cumulative structure count (a unit goes to the part its
middle falls in). Subsets of the training part for
learning curves are prefixes of one seeded permutation, so each contains the smaller ones.

On disk: see :mod:`mfdata.store.split_group`. A split is written under the store's lock,
complete, then committed by the manifest, which lists it with its checksum: a directory in
``splits/`` the manifest does not list is the leftover of an interrupted commit, never read, and
replaced by the next split of that name.
"""

from __future__ import annotations

import os

import numpy as np
import zarr

from mfdata.errors import UsageError
from mfdata.files import kill_point, remove
from mfdata.linking import formula_key
from mfdata.schema import SplitInfo, check_name
from mfdata.store.lock import store_lock
from mfdata.store.manifest import StoreError, read_manifest, write_manifest
from mfdata.store.split_group import (
    SPLITS_DIR,
    check_saved,
    part_indices,
    read_split_group,
    split_checksum,
)
from mfdata.store.store import Store, atomic_directory
from mfdata.store.zarr_store import read_verified, reading_zarr

PART_NAMES = {2: ["train", "test"], 3: ["train", "val", "test"]}


def _read(store: Store, names: list[str]) -> dict[str, np.ndarray]:
    return read_verified(store.zarr_path, names, store.manifest, store.path)


def split_units(store: Store, by: str) -> np.ndarray | None:
    """The unit id of every structure: its group or its formula; None when by structure."""
    if by == "structure":
        return None
    if by == "group":
        names = ["structures/group"]
        return _read(store, names)["structures/group"].astype(np.int64)
    if by == "formula":
        a = _read(store, ["atoms/numbers", "structures/n_atoms"])
        composition = formula_key(a["atoms/numbers"], a["structures/n_atoms"])
        return np.unique(composition, return_inverse=True)[1].reshape(-1)
    raise UsageError(f"--by {by!r}: expected structure, group or formula")


def assign_parts(
    units: np.ndarray | None, fractions: list[float], seed: int, n_structures: int
) -> np.ndarray:
    """Part index (int8) of every structure, whole units to one part, by cumulative count.

    ``units`` None: every structure is its own unit; exact part sizes by a partial sort, O(n).
    """
    rng = np.random.default_rng(seed)
    bounds = np.cumsum(fractions)[:-1] * n_structures
    if units is None:
        cuts = np.round(bounds).astype(np.int64)
        kth = np.unique(np.clip(cuts, 0, max(n_structures - 1, 0)))
        ranked = np.argpartition(rng.random(n_structures), kth)
        part = np.empty(n_structures, dtype=np.int8)
        for p, chunk in enumerate(np.split(ranked, cuts)):
            part[chunk] = p
        return part
    n_units = int(units.max()) + 1
    sizes = np.bincount(units, minlength=n_units)
    order = rng.permutation(n_units)
    middle = np.cumsum(sizes[order]) - sizes[order] / 2
    unit_part = np.empty(n_units, dtype=np.int8)
    unit_part[order] = np.searchsorted(bounds, middle, side="right")
    return unit_part[units]


def make_split(
    store: Store,
    name: str,
    by: str = "structure",
    fractions: list[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    parts: list[str] | None = None,
    subsets: list[int] = (),
) -> SplitInfo:
    """Compute and save a split in ``store``; an existing name, bad fractions or an empty part
    are errors and write nothing."""
    check_name(name, "split name")
    fractions = [float(f) for f in fractions]
    if any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UsageError(f"--fractions {fractions}: need positive fractions that sum to 1")
    default_names = [f"part{i}" for i in range(len(fractions))]
    parts = list(parts or PART_NAMES.get(len(fractions), default_names))
    if len(parts) != len(fractions):
        raise UsageError(f"{len(parts)} part names for {len(fractions)} fractions")
    if name in store.manifest.splits:
        raise StoreError(f"{store.path}: a split named {name!r} exists already")
    part = assign_parts(split_units(store, by), fractions, seed, store.manifest.n_structures)
    counts = np.bincount(part, minlength=len(parts))
    empty = [p for p, c in zip(parts, counts, strict=True) if c == 0]
    if empty:
        raise UsageError(
            f"{store.path}: split {name!r} by {by} leaves part(s) {', '.join(empty)} empty "
            f"({store.manifest.n_structures} structures); use other fractions or --by"
        )
    train = np.flatnonzero(part == 0)
    subset_order = train[np.random.default_rng(seed + 1).permutation(len(train))]
    too_big = [k for k in subsets if k > len(train)]
    if too_big:
        raise UsageError(f"--subsets {too_big}: larger than the training part ({len(train)})")
    info = SplitInfo(
        name=name,
        by=by,
        fractions=fractions,
        parts=parts,
        seed=seed,
        sizes={p: int(c) for p, c in zip(parts, counts, strict=True)},
        subsets=sorted(int(k) for k in subsets),
    )
    save_split(store, info, part, subset_order)
    return info


def save_split(store: Store, info: SplitInfo, part: np.ndarray, subset_order: np.ndarray) -> None:
    """Write a split (part index per structure, training-subset order) and commit it in the
    manifest, under the store's lock; for splits made by other rules than :func:`make_split`."""
    part, subset_order = part.astype(np.int8), subset_order.astype(np.int64)
    with store_lock(store.path):
        manifest = read_manifest(store.path)  # inside the lock: what another writer committed
        if info.name in manifest.splits:
            raise StoreError(f"{store.path}: a split named {info.name!r} exists already")
        target = store.path / SPLITS_DIR / info.name
        if os.path.lexists(target):  # never committed (an interrupted split): never read
            remove(target)
        with atomic_directory(target) as tmp:
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            group.create_array("part", data=part)
            group.create_array("subset_order", data=subset_order)
            group.attrs["split"] = info.model_dump()
        kill_point("split:renamed")
        checksum = split_checksum(info, part, subset_order)
        checksums = {**manifest.split_checksums, info.name: checksum}
        update = {"splits": [*manifest.splits, info.name], "split_checksums": checksums}
        store.manifest = write_manifest(store.path, manifest.model_copy(update=update))


def read_split(store: Store, name: str) -> tuple[SplitInfo, np.ndarray, np.ndarray]:
    """A saved split (checked): its info, the part of each structure, the training-subset
    order."""
    check_saved(store.manifest, name, store.path)
    with reading_zarr(store.path, f"split {name!r}"):
        group = zarr.open_group(str(store.path / SPLITS_DIR / name), mode="r", zarr_format=3)
        return read_split_group(store.manifest, name, group, store.path)


def split_indices(store: Store, name: str, part: str, subset: int | None = None) -> np.ndarray:
    """Sorted structure indices of one part (or of a nested training subset of given size)."""
    return part_indices(*read_split(store, name), part, subset)
