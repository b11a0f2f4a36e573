"""A saved split on disk, read and checked; what :mod:`mfdata.split` writes.

``STORE/splits/NAME/`` is a Zarr v3 group with ``part`` (int8, per structure) and
``subset_order`` (int64 indices of the training part), attributes holding the SplitInfo; outside
the store's identity. The manifest lists each split with its checksum (:func:`split_checksum`).
Reading a part (:func:`check_saved`, :func:`read_split_group`, :func:`part_indices`) needs only
the manifest and the split's group, so a store read through fsspec follows the same rules, and
every read checks the split against the manifest (:func:`check_split`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import zarr

from mfdata.schema import DatasetManifest, SplitInfo
from mfdata.store.manifest import StoreError
from mfdata.store.zarr_store import array_checksum

SPLITS_DIR = "splits"  # STORE/splits/NAME: one Zarr group per saved split


def split_checksum(info: SplitInfo, part: np.ndarray, subset_order: np.ndarray) -> str:
    """sha256 of a split's info and arrays: what the manifest records and readers check."""
    digest = hashlib.sha256(info.model_dump_json().encode())
    digest.update(array_checksum(part).encode())
    digest.update(array_checksum(subset_order).encode())
    return digest.hexdigest()


def check_split(
    manifest: DatasetManifest,
    name: str,
    split: tuple[SplitInfo, np.ndarray, np.ndarray],
    where: str | Path,
) -> None:
    """Refuse a saved split that does not match the manifest's checksum, or that does not fit
    the store (splits saved before mfkit 1.1 have no checksum: those checks still apply)."""
    info, part, order = split
    n, k = manifest.n_structures, len(info.parts)
    problem = None
    recorded = manifest.split_checksums.get(name)
    if recorded is not None and recorded != split_checksum(info, part, order):
        problem = "does not match the checksum in the manifest (corrupted)"
    elif info.name != name or part.shape != (n,) or part.dtype != np.int8 or order.ndim != 1:
        problem = f"does not fit a store of {n} structures"
    elif part.size and (part.min() < 0 or part.max() >= k):
        problem = f"assigns structures to parts outside 0..{k - 1}"
    elif order.size and (order.min() < 0 or order.max() >= n or (part[order] != 0).any()):
        problem = "has a training-subset order outside its training part"
    elif info.sizes != dict(zip(info.parts, np.bincount(part, minlength=k).tolist(), strict=True)):
        problem = "has part sizes that disagree with its parts"
    if problem:
        raise StoreError(f"{where}: split {name!r} {problem}; make it again under another name")


def check_saved(manifest: DatasetManifest, name: str, where: str | Path) -> None:
    """Refuse a split name the store at ``where`` (a path or URL) has not saved."""
    if name not in manifest.splits:
        known = ", ".join(manifest.splits) or "none"
        raise StoreError(f"{where}: no split named {name!r} (saved splits: {known})")


def read_split_group(
    manifest: DatasetManifest, name: str, group: zarr.Group, where: str | Path
) -> tuple[SplitInfo, np.ndarray, np.ndarray]:
    """The saved split ``name`` from its Zarr group, checked by :func:`check_split`: its info,
    the part of each structure, and the training-subset order."""
    try:
        info = SplitInfo.model_validate(group.attrs["split"])
        split = info, group["part"][...], group["subset_order"][...]
    except Exception as exc:  # damaged attributes or chunks surface as many exception types
        raise StoreError(f"{where}: split {name!r} is unreadable: {type(exc).__name__}") from exc
    check_split(manifest, name, split, where)
    return split


def part_indices(
    info: SplitInfo,
    parts: np.ndarray,
    subset_order: np.ndarray,
    part: str,
    subset: int | None = None,
) -> np.ndarray:
    """Sorted structure indices of one part (or of a nested training subset of given size)."""
    if part not in info.parts:
        raise StoreError(f"split {info.name!r} has parts {', '.join(info.parts)}, not {part!r}")
    if subset is not None:
        if part != info.parts[0] or subset > len(subset_order):
            raise StoreError(f"a subset of {subset} must come from the training part")
        return np.sort(subset_order[:subset])
    return np.flatnonzero(parts == info.parts.index(part))
