"""Where a store is read from: a local directory or an fsspec URL, behind one protocol.

Guarantees: a store at a URL is a :class:`~mfdata.store.remote.RemoteStore`, read by the same
code as a local :class:`~mfdata.store.store.Store` (its manifest checked by
``parse_manifest``, its saved splits read by ``mfdata.split``'s functions); nothing here
re-implements either. Every failure to find or read a store is a ``StoreError``. Readers
check every array they read against the manifest's checksums first (:func:`verified_root`),
once per process and array.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import zarr

from mfdata.registry import open_store
from mfdata.schema import DatasetManifest
from mfdata.split import SPLITS_DIR, check_saved, part_indices, read_split_group
from mfdata.store.remote import RemoteStore, is_url
from mfdata.store.store import Store
from mfdata.store.zarr_store import ZARR_DIR, check_checksums, reading_zarr, zarr_checksum

# (store, store checksum, array) whose values this process checked against the manifest
_VERIFIED: set[tuple[str, str, str]] = set()


class StoreSource(Protocol):
    """What the sample table needs from a store, wherever it lives (a path or an fsspec URL):
    :class:`~mfdata.store.store.Store` and :class:`~mfdata.store.remote.RemoteStore` are ones."""

    path: Any  # where the store is, for messages
    manifest: DatasetManifest

    def open_group(self, sub: str) -> zarr.Group:
        """The Zarr group at ``sub`` in the store (``data.zarr``, ``splits/NAME``), read-only."""
        ...


def open_source(store: str, storage_options: dict | None = None, cache_bytes: int = 0) -> Store:
    """A store by fsspec URL (read-only; ``cache_bytes`` of its chunks cached on local disk per
    process: :mod:`mfdata.store.remote`), local path or registered name."""
    if is_url(store):
        return RemoteStore(store, storage_options, cache_bytes)
    return open_store(store)


def zarr_root(source: StoreSource) -> zarr.Group:
    """The store's Zarr group, read-only."""
    return source.open_group(ZARR_DIR)


def verified_root(source: StoreSource, names: list[str]) -> zarr.Group:
    """The store's Zarr group, once the arrays ``names`` it has are checked against the
    manifest's checksums (a chunk at a time; once per process: forked workers inherit it)."""
    root = zarr_root(source)
    keys = {name: (str(source.path), source.manifest.checksum, name) for name in names}
    with reading_zarr(source.path):
        todo = [name for name, key in keys.items() if key not in _VERIFIED and name in root]
        actual = {name: zarr_checksum(root[name]) for name in todo}
    check_checksums(source.path, source.manifest, actual)
    _VERIFIED.update(keys[name] for name in todo)
    return root


def split_part(source: StoreSource, name: str, part: str, subset: int | None) -> np.ndarray:
    """Sorted structure indices of one part of a saved split (or a training subset)."""
    check_saved(source.manifest, name, source.path)
    group = source.open_group(f"{SPLITS_DIR}/{name}")
    return part_indices(*read_split_group(source.manifest, name, group, source.path), part, subset)
