"""Queries over stores' per-structure indexes, and selections: saved query results.

A query is a conjunction of conditions, each a vectorised test over index columns. A selection
records the query, the structure indices per store and each store's checksum; it is refused when
a store's immutable arrays changed since (adding a split or statistics changes nothing).
"""

from __future__ import annotations

import base64
import datetime
import zlib
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from mfdata.errors import UsageError
from mfdata.index import StructureIndex, elements_mask
from mfdata.levels import UnknownLevelError, resolve_level
from mfdata.schema import QuerySpec, SelectedStore, Selection, label_kind
from mfdata.store.manifest import StoreError, parse_json_object, validated
from mfdata.store.store import Store


def parse_has(items: list[str], stores: list[Store]) -> list[tuple[str, str]]:
    """``LEVEL:LABEL`` items (level by id or alias) as (level id, label) pairs.

    A level none of the stores has is an error that lists the levels they do have.
    """
    available = sorted({level for store in stores for level in store.levels})
    pairs = []
    for item in items:
        level, sep, label = item.rpartition(":")
        if not sep or not level:
            raise UsageError(f"--has {item!r}: expected LEVEL:LABEL, e.g. ccsd(t)_cbs:energy")
        label_kind(label)
        try:
            level_id = resolve_level(level, allowed=available).id
        except UnknownLevelError as exc:
            raise UnknownLevelError(f"--has {item!r}: {exc}") from None
        pairs.append((level_id, label))
    return pairs


def source_ids(store: Store, source: str) -> np.ndarray:
    """Input-file indices of ``store`` that ``source`` names: the store's name (all of them), an
    input's path, or an input's file name."""
    inputs = store.manifest.provenance.inputs
    if source == store.manifest.name:
        return np.arange(max(len(inputs), 1))
    return np.array(
        [k for k, f in enumerate(inputs) if source in (f.path, Path(f.path).name)], dtype=np.int64
    )


def query_mask(
    index: StructureIndex, spec: QuerySpec, sources: np.ndarray | None = None
) -> np.ndarray:
    """Which structures of one index satisfy ``spec`` (``sources``: input ids ``spec.source``
    names in this store)."""
    mask = np.ones(len(index), dtype=bool)
    if sources is not None:
        mask &= np.isin(index.source, sources)
    required = np.uint64(0)
    for level, label in spec.has:
        bit = index.label_bit(level, label)
        if bit is None:
            return np.zeros(len(index), dtype=bool)
        required |= bit
    if required:
        mask &= (index.labels & required) == required
    if spec.elements is not None:
        allowed = elements_mask([atomic_numbers[symbol] for symbol in spec.elements])
        mask &= ((index.elements & ~allowed) == 0).all(axis=1)
    if spec.min_atoms is not None:
        mask &= index.n_atoms >= spec.min_atoms
    if spec.max_atoms is not None:
        mask &= index.n_atoms <= spec.max_atoms
    if spec.charge is not None:
        mask &= index.charge == spec.charge
    return mask


def encode_indices(indices: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(indices.astype("<i8").tobytes(), 6)).decode("ascii")


def decode_indices(text: str, where: str = "selection") -> np.ndarray:
    """The indices :func:`encode_indices` wrote; damaged text is a one-line error."""
    try:
        raw = zlib.decompress(base64.b64decode(text, validate=True))
        return np.frombuffer(raw, dtype="<i8").astype(np.int64)
    except (ValueError, zlib.error) as exc:
        raise StoreError(f"{where}: damaged structure indices: {exc}") from exc


def select(stores: list[Store], spec: QuerySpec) -> Selection:
    """Run ``spec`` on every store and record the result with the stores' checksums."""
    chosen = []
    for store in stores:
        index = StructureIndex.read(store.zarr_path, store.manifest, store.path)
        sources = None if spec.source is None else source_ids(store, spec.source)
        indices = np.flatnonzero(query_mask(index, spec, sources))
        chosen.append(
            SelectedStore(
                name=store.manifest.name,
                path=store.location,
                checksum=store.manifest.checksum,
                n_structures=len(index),
                n_selected=len(indices),
                indices=encode_indices(indices),
            )
        )
    return Selection(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        query=spec,
        stores=chosen,
    )


def load_selection(path: str | Path) -> Selection:
    """The selection saved at ``path``; anything else is a one-line error naming the file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise StoreError(f"{path}: not a readable selection: {exc}") from exc
    return validated(Selection, parse_json_object(raw, path, "selection"), path, "selection")


def selected_indices(selection: Selection, store: Store, where: str = "selection") -> np.ndarray:
    """The indices ``selection`` holds for ``store``; refused if the store is not the same one."""
    for entry in selection.stores:
        if entry.checksum == store.manifest.checksum:
            indices = decode_indices(entry.indices, where)
            n = store.manifest.n_structures
            if len(indices) and (indices.min() < 0 or indices.max() >= n):
                raise StoreError(f"{where}: structure indices outside 0..{n - 1} of {store.path}")
            return indices
    names = ", ".join(f"{e.name} ({e.checksum[:12]})" for e in selection.stores)
    raise StoreError(
        f"{where} was made on {names}, not on {store.path} ({store.manifest.checksum[:12]}): "
        "the store is another one, or its arrays changed since"
    )
