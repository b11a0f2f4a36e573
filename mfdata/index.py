"""A per-structure index for queries: one row of small integers per structure, no Python loops.

Columns: atom count, element bitmask (two 64-bit words: bit Z of a 128-bit mask), label presence
bits (bit k is label column k: a (level, label) pair), charge, multiplicity, group, geometry
hash and source (the input file a structure came from). Element masks and label bits are
derived from the immutable arrays and written with them at conversion, under ``index/`` in the
store's Zarr group, so a query never reads positions or atomic numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import StoreLike

from mfdata.records import LabelKey
from mfdata.schema import DatasetManifest
from mfdata.store.zarr_store import (
    INDEX_CHUNK,
    CorruptArrayError,
    StreamChecksum,
    read_verified,
    reading_zarr,
)

MAX_LABEL_COLUMNS = 64
_ARRAYS = {  # field -> array in the store's group
    "n_atoms": "structures/n_atoms",
    "elements": "index/elements",
    "labels": "index/labels",
    "charge": "structures/charge",
    "multiplicity": "structures/multiplicity",
    "group": "structures/group",
    "source": "structures/source",
    "hash": "structures/hash",
}


@dataclass
class StructureIndex:
    n_atoms: np.ndarray  # int32 (n,)
    elements: np.ndarray  # uint64 (n, 2): bit Z of word Z // 64
    labels: np.ndarray  # uint64 (n,): bit k set when label_columns[k] is present
    label_columns: list[LabelKey]
    charge: np.ndarray  # int16 (n,)
    multiplicity: np.ndarray  # int16 (n,)
    group: np.ndarray  # int32 (n,)
    hash: np.ndarray  # uint64 (n,)
    source: np.ndarray  # int16 (n,): index into the store's input files

    def __len__(self) -> int:
        return len(self.n_atoms)

    @classmethod
    def read(cls, zarr_path: StoreLike, manifest: DatasetManifest, where: object) -> StructureIndex:
        """The index of the store at ``where``: its arrays checked against the manifest's
        checksums and its label columns against the manifest's labels, so a query never runs
        on damaged data."""
        arrays = read_verified(zarr_path, list(_ARRAYS.values()), manifest, where)
        with reading_zarr(where):
            root = zarr.open_group(zarr_path, mode="r", zarr_format=3)
            columns = [(str(a), str(b)) for a, b in root["index/labels"].attrs["columns"]]
        labels = sorted((level, kind) for level, s in manifest.levels.items() for kind in s.labels)
        if columns != labels:
            raise CorruptArrayError(
                f"{where}: the index's label columns {columns} are not the manifest's labels; "
                f"run `mfdata verify {where}`"
            )
        return cls(label_columns=columns, **{f: arrays[name] for f, name in _ARRAYS.items()})

    def label_bit(self, level: str, label: str) -> np.uint64 | None:
        """The presence bit of (level, label), or None when no structure has it."""
        try:
            return np.uint64(1) << np.uint64(self.label_columns.index((level, label)))
        except ValueError:
            return None


def write_label_bits(zarr_path: str, columns: list[LabelKey]) -> str:
    """Write ``index/labels`` (bit k: ``columns[k]`` is present) from the presence arrays already
    in the group, a chunk of rows at a time; return its checksum.

    Written once every label is known, since a label first met in a later input file moves the
    bits of those sorted after it.
    """
    root = zarr.open_group(zarr_path, mode="r+", zarr_format=3)
    n = root["structures/n_atoms"].shape[0]
    z = root.create_array(
        "index/labels",
        shape=(n,),
        dtype=np.uint64,
        chunks=(max(1, min(INDEX_CHUNK, n)),),
        compressors=BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"),
    )
    digest = StreamChecksum(np.dtype(np.uint64), (n,))
    for start in range(0, n, INDEX_CHUNK):
        bits = np.zeros(min(INDEX_CHUNK, n - start), dtype=np.uint64)
        for k, (level, kind) in enumerate(columns):
            present = root[f"labels/{level}/{kind}/present"][start : start + len(bits)]
            bits |= present.astype(np.uint64) << np.uint64(k)
        z[start : start + len(bits)] = bits
        digest.update(bits)
    z.attrs["columns"] = [list(c) for c in columns]
    return digest.hexdigest()


def element_masks(numbers: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-structure 128-bit element masks as (n, 2) uint64, vectorised over atoms."""
    masks = np.zeros((len(starts), 2), dtype=np.uint64)
    if len(numbers) == 0:
        return masks
    z = numbers.astype(np.uint64)
    bits = np.uint64(1) << (z & np.uint64(63))
    heavy = z >= 64
    if heavy.any():  # elements from Gd on: the second word
        masks[:, 1] = np.bitwise_or.reduceat(np.where(heavy, bits, np.uint64(0)), starts)
        bits[heavy] = 0
    masks[:, 0] = np.bitwise_or.reduceat(bits, starts)
    return masks


def elements_mask(atomic_numbers: list[int]) -> np.ndarray:
    """The 128-bit mask of a set of elements, as two uint64 words."""
    mask = np.zeros(2, dtype=np.uint64)
    for z in atomic_numbers:
        mask[z // 64] |= np.uint64(1) << np.uint64(z % 64)
    return mask
