"""``mfdata push``: a local store copied to an fsspec URL (``s3://bucket/name``), manifest last.

Guarantees: only a store that verifies is pushed. Its Zarr group and saved splits are uploaded
(:data:`PUSH_BATCH` objects at a time), then its manifest, last (without the LMDB shards, which
stay local, so the manifest pushed lists none): a reader of the URL sees no store until the
upload is complete (:class:`~mfdata.store.remote.RemoteStore` refuses a URL without a manifest).
While a push writes, the URL holds a mark naming the store's checksum; a rerun of the same push
completes an interrupted one (every object is written again), and anything else at the URL is
refused: another store's manifest, another store's interrupted push, or objects mfkit did not
write. A URL that already holds this store (same checksum, same manifest) is left alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import fsspec

from mfdata.files import kill_point
from mfdata.progress import progress
from mfdata.schema import DatasetManifest
from mfdata.store.manifest import (
    MANIFEST,
    StoreError,
    manifest_text,
    parse_json_object,
    parse_manifest,
    sealed,
)
from mfdata.store.remote import PUSH_MARK
from mfdata.store.split_group import SPLITS_DIR
from mfdata.store.store import Store
from mfdata.store.zarr_store import ZARR_DIR

PUSH_BATCH = 32  # objects uploaded at once (concurrently, where the filesystem can)


@dataclass
class Pushed:
    """What a push did: objects and bytes written (none when the URL held the store)."""

    url: str
    objects: int
    bytes: int


def push(store: Store, url: str, storage_options: dict | None = None) -> Pushed:
    """Copy the verified local ``store`` to ``url``, its manifest last."""
    url = url.rstrip("/")
    problems = store.verify()
    if problems:
        raise StoreError(
            f"{store.path}: not pushed: it does not verify ({len(problems)} problem(s), the "
            f"first: {problems[0]}); run `mfdata verify {store.path}`"
        )
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    checksum = store.manifest.checksum
    manifest = sealed(store.manifest.model_copy(update={"lmdb": None}))
    mark = f"{root}/{PUSH_MARK}"
    if _holds_store(fs, root, url, manifest):
        if fs.exists(mark):  # killed after its manifest: the push was complete
            fs.rm_file(mark)
        return Pushed(url, 0, 0)
    _check_resumable(fs, root, url, checksum)
    files = _store_files(store)
    fs.pipe_file(mark, json.dumps({"checksum": checksum}).encode())
    batches = [files[i : i + PUSH_BATCH] for i in range(0, len(files), PUSH_BATCH)]
    for batch in progress(batches, f"pushing {store.path} to {url}", " batches"):
        for key, _ in batch:
            kill_point(f"push:{key}")
        fs.put([str(path) for _, path in batch], [f"{root}/{key}" for key, _ in batch])
    size = sum(path.stat().st_size for _, path in files)
    text = manifest_text(manifest)
    kill_point(f"push:{MANIFEST}")
    fs.pipe_file(f"{root}/{MANIFEST}", text.encode())
    fs.rm_file(mark)
    return Pushed(url, len(files) + 1, size + len(text.encode()))


def _store_files(store: Store) -> list[tuple[str, Path]]:
    """(key, local file) of the Zarr group and the saved splits the manifest lists."""
    folders = [store.path / ZARR_DIR, *(store.path / SPLITS_DIR / n for n in store.manifest.splits)]
    return [
        (path.relative_to(store.path).as_posix(), path)
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]


def _holds_store(
    fs: fsspec.AbstractFileSystem, root: str, url: str, manifest: DatasetManifest
) -> bool:
    """Whether ``url`` holds this store already, with this manifest; another store there, or
    this one with other splits or statistics, is refused. An unreadable manifest is the last
    object of an interrupted push, or refused as foreign."""
    if not fs.exists(f"{root}/{MANIFEST}"):
        return False
    try:
        there = parse_manifest(fs.cat_file(f"{root}/{MANIFEST}"), url)
    except StoreError:
        return False
    if there.checksum != manifest.checksum:
        raise StoreError(
            f"{url}: holds another store (checksum {there.checksum[:12]}, this one's is "
            f"{manifest.checksum[:12]}); push to another URL"
        )
    if there.manifest_checksum != manifest.manifest_checksum:
        raise StoreError(
            f"{url}: holds this store (same checksum) with another manifest (splits there: "
            f"{', '.join(there.splits) or 'none'}; here: {', '.join(manifest.splits) or 'none'}; "
            "statistics may differ too); push to another URL"
        )
    return True


def _check_resumable(fs: fsspec.AbstractFileSystem, root: str, url: str, checksum: str) -> None:
    """Refuse a URL that holds anything but an interrupted push of this store."""
    if not fs.exists(root) or not fs.ls(root):
        return
    mark = f"{root}/{PUSH_MARK}"
    if not fs.exists(mark):
        raise StoreError(
            f"{url}: not empty, and not an interrupted mfdata push; push to an empty URL"
        )
    started = parse_json_object(fs.cat_file(mark), f"{url}/{PUSH_MARK}", "push mark")
    if started.get("checksum") != checksum:
        raise StoreError(
            f"{url}: holds an interrupted push of another store (checksum "
            f"{str(started.get('checksum'))[:12]}); push to another URL"
        )
