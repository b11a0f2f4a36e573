"""Where a store is read from: a local directory or an fsspec URL, behind one protocol.

Guarantees: a remote store's manifest is checked by ``mfdata.store.manifest.parse_manifest`` and
its saved splits are read by ``mfdata.split``'s functions, exactly as a local store's; nothing
here re-implements either. Every failure to find or read a store is a ``StoreError``. Readers
check every array they read against the manifest's checksums first (:func:`verified_root`),
once per process and array.
"""

from __future__ import annotations

from typing import Any, Protocol

import fsspec
import numpy as np
import zarr

from mfdata.registry import open_store
from mfdata.schema import DatasetManifest
from mfdata.split import SPLITS_DIR, check_saved, part_indices, read_split_group
from mfdata.store.manifest import MANIFEST, StoreError, parse_manifest
from mfdata.store.store import Store
from mfdata.store.zarr_store import ZARR_DIR, check_checksums, reading_zarr, zarr_checksum

# (store, store checksum, array) whose values this process checked against the manifest
_VERIFIED: set[tuple[str, str, str]] = set()


class StoreSource(Protocol):
    """What the sample table needs from a store, wherever it lives (a path or an fsspec URL)."""

    path: Any  # where the store is, for messages
    manifest: DatasetManifest

    def open_group(self, sub: str) -> zarr.Group:
        """The Zarr group at ``sub`` in the store (``data.zarr``, ``splits/NAME``), read-only."""
        ...


class LocalSource:
    """A store on the local filesystem, as a :class:`StoreSource`."""

    def __init__(self, store: Store):
        self.store, self.path, self.manifest = store, store.path, store.manifest

    def open_group(self, sub: str) -> zarr.Group:
        with reading_zarr(self.path):
            try:
                return zarr.open_group(str(self.path / sub), mode="r", zarr_format=3)
            except FileNotFoundError as exc:
                raise StoreError(f"{self.path}/{sub}: no Zarr group there") from exc


class RemoteSource:
    """A store at an fsspec URL: its manifest and Zarr groups read through fsspec."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.path = self.url = str(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        where = f"{self.url}/{MANIFEST}"
        try:
            with fsspec.open(where, "rb", **self.storage_options) as handle:
                raw = handle.read()
        except FileNotFoundError as exc:
            raise StoreError(f"{self.url}: not an mfkit store (no {MANIFEST})") from exc
        except OSError as exc:
            raise StoreError(f"{where}: unreadable manifest: {exc}") from exc
        self.manifest = parse_manifest(raw, self.url)

    def open_group(self, sub: str) -> zarr.Group:
        store = zarr.storage.FsspecStore.from_url(
            f"{self.url}/{sub}", storage_options=self.storage_options or None, read_only=True
        )
        with reading_zarr(self.url):
            try:
                return zarr.open_group(store, mode="r", zarr_format=3)
            except FileNotFoundError as exc:
                raise StoreError(f"{self.url}/{sub}: no Zarr group there") from exc


def is_url(store: str) -> bool:
    """An fsspec URL (``protocol://...``), as opposed to a local path or a registered name."""
    return "://" in str(store)


def open_source(store: str, storage_options: dict | None = None) -> StoreSource:
    """A store by fsspec URL, local path or registered name."""
    if is_url(store):
        return RemoteSource(store, storage_options)
    return LocalSource(open_store(store))


def as_source(store: Store | StoreSource) -> StoreSource:
    """An opened local store as a source; a source as it is."""
    return LocalSource(store) if isinstance(store, Store) else store


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
