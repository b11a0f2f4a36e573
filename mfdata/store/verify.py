"""``mfdata verify``: one check of a whole store: its arrays, its manifest, its splits, its LMDB
shards, and the leftovers of interrupted writes.

Guarantees: every checksum the manifest records is recomputed from the arrays on disk, and the
combined checksum from those; the manifest's derived fields (atom count, elements, label counts
and units, the arrays it lists) are recomputed from the arrays; every listed split is checked
against its checksum and the store; LMDB shards are checked only when the arrays are intact (they
are compared with records re-encoded from the arrays). The manifest's own checksum was checked
when it was read. A store is intact exactly when the list of problems is empty; nothing is
written, except by :func:`repair`, which removes leftovers (and only those) under the store's
lock. A store at a URL gets the same checks of its arrays, manifest and splits (it has no LMDB
shards and no leftovers: ``mfdata push`` writes the manifest last).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import zarr
from ase.data import chemical_symbols

from mfdata.files import remove
from mfdata.schema import LABEL_KINDS, DatasetManifest
from mfdata.store.lmdb_store import lmdb_leftovers, verify_shards
from mfdata.store.lock import store_lock
from mfdata.store.manifest import StoreError, read_manifest
from mfdata.store.split_group import SPLITS_DIR, read_split_group
from mfdata.store.zarr_store import (
    ZARR_DIR,
    CorruptArrayError,
    combined_checksum,
    reading_zarr,
    zarr_checksum,
)

GroupOpener = Callable[[str], zarr.Group]  # a store's Zarr group by path in it: data.zarr...

# what atomic_directory, atomic_file and older packs leave in a store when killed
_LEFTOVER = re.compile(r"^\.(.+\.(partial|old)-[0-9a-f]{8}|manifest\.json\.[a-z0-9_]+\.partial)$")


def group_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """Every array in ``group`` by its path, each one's metadata read once (at a URL, in
    concurrent requests)."""
    return {
        name: node for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)
    }


def verify_arrays(
    root: Path | str, manifest: DatasetManifest, arrays: dict[str, zarr.Array]
) -> list[str]:
    """Problems with the Zarr group of the store at ``root`` (its ``arrays``): checksums that
    do not match."""
    try:
        actual = {name: zarr_checksum(arrays[name]) for name in manifest.checksums}
    except Exception as exc:  # a missing or corrupt chunk surfaces as many exception types
        return [f"{root}/{ZARR_DIR}: cannot read arrays: {exc}"]
    problems = [
        f"{root}: {name}: checksum mismatch (stored {expected[:12]}, found {actual[name][:12]})"
        for name, expected in manifest.checksums.items()
        if actual[name] != expected
    ]
    if combined_checksum(manifest.checksums) != manifest.checksum:
        problems.append(f"{root}: manifest checksum does not match its array checksums")
    return problems


def verify_metadata(
    root: Path | str, manifest: DatasetManifest, arrays: dict[str, zarr.Array]
) -> list[str]:
    """Problems with what the manifest says about the (verified) ``arrays``."""
    problems = []
    if set(arrays) != set(manifest.checksums):
        unlisted = sorted(set(arrays) - set(manifest.checksums))
        problems.append(f"{root}: arrays without a checksum in the manifest: {unlisted}")
    numbers = arrays["atoms/numbers"][...]
    if int(arrays["structures/n_atoms"][...].astype(np.int64).sum()) != manifest.n_atoms:
        problems.append(f"{root}: manifest n_atoms {manifest.n_atoms} is not the atoms' count")
    elements = [
        chemical_symbols[z] if z < len(chemical_symbols) else str(z) for z in np.unique(numbers)
    ]
    if elements != manifest.elements:
        problems.append(f"{root}: manifest elements {manifest.elements} are not {elements}")
    labels = {tuple(name.split("/")[1:3]) for name in arrays if name.startswith("labels/")}
    listed = {(lvl, kind) for lvl, s in manifest.levels.items() for kind in s.labels}
    if labels != listed:
        problems.append(f"{root}: manifest labels {sorted(listed)} are not the arrays' {labels}")
    for level, kind in sorted(labels & listed):
        summary = manifest.levels[level].labels[kind]
        count = int(arrays[f"labels/{level}/{kind}/present"][...].sum())
        if (summary.count, summary.unit) != (count, LABEL_KINDS[kind].unit):
            problems.append(
                f"{root}: manifest says {summary.count} {kind} at {level} in {summary.unit}; the "
                f"arrays hold {count} in {LABEL_KINDS[kind].unit}"
            )
    columns = [tuple(c) for c in arrays["index/labels"].attrs["columns"]]
    if columns != sorted(listed):
        problems.append(f"{root}: index/labels columns {columns} are not the manifest's labels")
    unknown = sorted(set(manifest.statistics.levels) - set(manifest.levels))
    if unknown:
        problems.append(f"{root}: statistics for levels the store does not have: {unknown}")
    return problems


def verify_splits(
    root: Path | str, manifest: DatasetManifest, open_group: GroupOpener
) -> list[str]:
    """Problems with the saved splits: missing, unreadable or corrupted ones."""
    problems = []
    for name in manifest.splits:
        try:
            group = open_group(f"{SPLITS_DIR}/{name}")
            read_split_group(manifest, name, group, root)
        except StoreError as exc:
            problems.append(str(exc))
        except Exception as exc:  # a missing or damaged group: many exception types
            problems.append(f"{root}: split {name!r} is unreadable: {type(exc).__name__}")
    return problems


def _local_group(root: Path, sub: str) -> zarr.Group:
    return zarr.open_group(str(Path(root) / sub), mode="r", zarr_format=3)


def leftovers(root: Path, manifest: DatasetManifest) -> list[Path]:
    """What interrupted writes left in the store: temporary files and directories, splits and
    LMDB packings the manifest does not list (never read: the manifest is the commit point)."""
    found = [p for p in root.iterdir() if _LEFTOVER.match(p.name)]
    splits = root / SPLITS_DIR
    if splits.is_dir():
        found += [p for p in splits.iterdir() if p.name not in manifest.splits]
    return sorted(found + lmdb_leftovers(root, manifest))


def verify_store(
    root: Path | str, manifest: DatasetManifest, open_group: GroupOpener | None = None
) -> list[str]:
    """Problems found by recomputing every checksum and derived field; empty when the store is
    intact.

    ``open_group`` opens the Zarr groups of a store elsewhere (``root`` is then its URL): LMDB
    shards and leftovers of interrupted writes are local things, not looked for there.
    """
    local = open_group is None
    open_group = open_group or partial(_local_group, root)
    try:
        with reading_zarr(root):
            arrays = group_arrays(open_group(ZARR_DIR))
    except (CorruptArrayError, StoreError) as exc:  # no group, metadata that does not parse
        return [str(exc)]
    problems = verify_arrays(root, manifest, arrays)
    if problems:
        return problems
    try:
        with reading_zarr(root):
            problems = verify_metadata(root, manifest, arrays)
    except CorruptArrayError as exc:
        problems = [str(exc)]
    problems += verify_splits(root, manifest, open_group)
    if not local:
        return problems
    problems += verify_shards(root, manifest)
    extra = leftovers(root, manifest)  # no lock: verify is a reader
    if extra:
        shown = ", ".join(str(p.relative_to(root)) for p in extra)
        problems.append(
            f"{root}: leftovers of interrupted writes (or of one in progress): {shown}; remove "
            f"them with `mfdata verify --repair {root}`"
        )
    return problems


def repair(root: Path) -> list[Path]:
    """Remove the leftovers of interrupted writes from the store at ``root``; return them."""
    with store_lock(root):  # a writer's temporary files are not leftovers
        extra = leftovers(root, read_manifest(root))
        for path in extra:
            remove(path)
    return extra
