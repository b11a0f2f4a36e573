"""A store at an fsspec URL (``s3://bucket/name``, ``gs://...``, ``memory://...``): read-only.

Guarantees: a store at a URL is read by the same code as a local one: its manifest is checked by
:func:`~mfdata.store.manifest.parse_manifest`, its arrays by the readers of
:mod:`~mfdata.store.zarr_store` given a zarr store object instead of a path, and ``verify``
recomputes the same checksums (LMDB shards and the leftovers of interrupted writes are local
things: a store at a URL has neither). Nothing here writes to the URL; ``mfdata push`` does
(:mod:`mfdata.store.push`), the manifest last, so a URL without a manifest is never a store.

Connection settings are fsspec's (storage options, or its configuration: ``FSSPEC_S3_*``
variables, ``~/.config/fsspec/``) and, for S3, botocore's own (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL_S3``, ``AWS_PROFILE``...).

The chunks of ``data.zarr`` can be read through a local chunk cache (zarr's experimental
``CacheStore``, zarr >= 3.1.4, on local disk, least recently used chunks evicted): each process
stores at most ``cache_bytes`` of a store's chunks there, in a directory under ``$TMPDIR`` that
the processes forked from it (DataLoader workers) share, so a chunk one of them fetched is read
from disk by all; the process that made the directory removes it when it exits.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import fsspec
import zarr
from zarr.abc.store import ByteRequest
from zarr.abc.store import Store as ZarrStore
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.experimental.cache_store import CacheStore
from zarr.storage import FsspecStore, LocalStore

from mfdata.schema import DatasetManifest
from mfdata.store.manifest import MANIFEST, StoreError, parse_manifest
from mfdata.store.store import Store
from mfdata.store.verify import verify_store
from mfdata.store.zarr_store import ZARR_DIR, check_shape, reading_zarr

PUSH_MARK = ".mfkit-push.json"  # at a URL while mfdata push writes it: {"checksum": ...}
DEFAULT_CACHE_BYTES = 4 << 30  # 4 GiB of chunks per process and store

# (pid, url, store checksum) -> the cached zarr store of data.zarr in that process
_CACHED: dict[tuple[int, str, str], _ChunkCache] = {}
# (url, store checksum) -> the keys its data.zarr lacks, as learnt here (or before a fork)
_ABSENT: dict[tuple[str, str], set[str]] = {}
_CACHE_DIR: list[tuple[int, Path]] = []  # (the pid that made it, the directory): at most one


def is_url(location: object) -> bool:
    """An fsspec URL (``protocol://...``), as opposed to a local path or a registered name."""
    return "://" in str(location)


class _ChunkCache(CacheStore):
    """zarr's ``CacheStore`` that also remembers the keys the store lacks: chunks equal to the
    fill value are not written (the cell and periodicity of molecules), and are asked for at
    every read otherwise. The store at a URL is read-only, so an absent key stays absent."""

    def __init__(self, store: ZarrStore, absent: set[str], **kwargs) -> None:
        super().__init__(store, **kwargs)
        self._absent = absent

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if key in self._absent:
            return None
        value = await super().get(key, prototype, byte_range)
        if value is None and byte_range is None:
            self._absent.add(key)
        return value


class RemoteStore(Store):
    """An opened store at an fsspec URL, read-only: its manifest, and its Zarr groups through
    fsspec (``data.zarr`` through the chunk cache when ``cache_bytes`` > 0)."""

    def __init__(self, url: str, storage_options: dict | None = None, cache_bytes: int = 0) -> None:
        self.path = self.url = str(url).rstrip("/")
        self.storage_options = _read_options(self.url, storage_options or {})
        self.cache_bytes = cache_bytes
        # held while the store is: a forked worker that dropped its parent's filesystem would
        # close the parent's connections on its own event loop
        self.fs, self._root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self._stores: dict[int, ZarrStore] = {}  # by process: see zarr_path
        self.manifest = self._read_manifest()
        check_shape(self.zarr_path, self.manifest, self.url)

    @property
    def zarr_path(self) -> ZarrStore:
        """The zarr store of ``data.zarr``: what the readers of local stores open (one per
        process, held as long as the store is)."""
        pid = os.getpid()
        if pid not in self._stores:
            self._stores[pid] = self._cached() if self.cache_bytes > 0 else self._fsspec(ZARR_DIR)
        return self._stores[pid]

    def _cached(self) -> _ChunkCache:
        """This process's chunk cache of the store, shared by every reader of it here."""
        key = (self.url, self.manifest.checksum)
        here = (os.getpid(), *key)
        if here not in _CACHED:
            folder = hashlib.sha256("\n".join(key).encode()).hexdigest()[:24]
            _CACHED[here] = _ChunkCache(
                self._fsspec(ZARR_DIR),
                _ABSENT.setdefault(key, set()),
                cache_store=LocalStore(chunk_cache_dir() / folder),
                max_size=self.cache_bytes,
            )
        return _CACHED[here]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_stores": {}}

    @property
    def location(self) -> str:
        return self.url

    def _fsspec(self, sub: str) -> FsspecStore:
        return FsspecStore.from_url(
            f"{self.url}/{sub}", storage_options=self.storage_options or None, read_only=True
        )

    def open_group(self, sub: str) -> zarr.Group:
        store = self.zarr_path if sub == ZARR_DIR else self._fsspec(sub)
        with reading_zarr(self.url):
            try:
                return zarr.open_group(store, mode="r", zarr_format=3)
            except FileNotFoundError as exc:
                raise StoreError(f"{self.url}/{sub}: no Zarr group there") from exc

    def verify(self) -> list[str]:
        return verify_store(self.url, self.manifest, self.open_group)

    def _read_manifest(self) -> DatasetManifest:
        try:
            raw = self.fs.cat_file(f"{self._root}/{MANIFEST}")
        except FileNotFoundError as exc:
            if self.fs.exists(f"{self._root}/{PUSH_MARK}"):
                raise StoreError(
                    f"{self.url}: an interrupted mfdata push (no {MANIFEST} yet), not a store; "
                    "run the same push again to complete it"
                ) from exc
            raise StoreError(f"{self.url}: not an mfkit store (no {MANIFEST})") from exc
        except OSError as exc:
            raise StoreError(f"{self.url}/{MANIFEST}: unreadable manifest: {exc}") from exc
        return parse_manifest(raw, self.url)


def _read_options(url: str, storage_options: dict) -> dict:
    """``storage_options`` for reading: s3fs asks an object's size (a HEAD request) before each
    whole read, to fetch large objects in concurrent ranges; chunks are small, so one GET each
    (``max_concurrency`` 1) unless the options say otherwise."""
    if url.startswith(("s3://", "s3a://")):
        return {"max_concurrency": 1, **storage_options}
    return dict(storage_options)


def chunk_cache_dir() -> Path:
    """This process tree's chunk-cache directory: made by the first process that needs one,
    inherited by the processes forked from it, removed when its maker exits."""
    if not _CACHE_DIR:
        path = Path(tempfile.mkdtemp(prefix="mfkit-chunks-"))
        _CACHE_DIR.append((os.getpid(), path))
        atexit.register(_remove_cache_dir, os.getpid(), path)
    return _CACHE_DIR[0][1]


def _remove_cache_dir(maker: int, path: Path) -> None:
    if os.getpid() == maker:  # a forked child that runs atexit leaves its parent's cache alone
        shutil.rmtree(path, ignore_errors=True)
