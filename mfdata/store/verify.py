"""``mfdata verify``: one check of a whole store, its Zarr group and its LMDB shards.

Guarantees: every checksum the manifest records is recomputed from the arrays on disk, and the
combined checksum from those; LMDB shards are checked only when the arrays are intact (they are
compared with records re-encoded from the arrays). Nothing is written. A store is intact exactly
when the list of problems is empty.
"""

from __future__ import annotations

from pathlib import Path

from mfdata.schema import DatasetManifest
from mfdata.store.lmdb_store import verify_shards
from mfdata.store.zarr_store import ZARR_DIR, combined_checksum, read_checksums


def verify_arrays(root: Path, manifest: DatasetManifest) -> list[str]:
    """Problems with the Zarr group of the store at ``root``: checksums that do not match."""
    zarr_path = root / ZARR_DIR
    try:
        actual = read_checksums(str(zarr_path), list(manifest.checksums))
    except Exception as exc:  # a missing or corrupt chunk surfaces as many exception types
        return [f"{zarr_path}: cannot read arrays: {exc}"]
    problems = [
        f"{root}: {name}: checksum mismatch (stored {expected[:12]}, found {actual[name][:12]})"
        for name, expected in manifest.checksums.items()
        if actual[name] != expected
    ]
    if combined_checksum(manifest.checksums) != manifest.checksum:
        problems.append(f"{root}: manifest checksum does not match its array checksums")
    return problems


def verify_store(root: Path, manifest: DatasetManifest) -> list[str]:
    """Problems found by recomputing every checksum; empty when the store is intact."""
    return verify_arrays(root, manifest) or verify_shards(root, manifest)
