"""The Zarr v3 group of a store: columnar, chunked, compressed; the canonical archival form.

Layout inside ``STORE/data.zarr``::

    structures/n_atoms       int32   (n_structures,)
    structures/cell          float64 (n_structures, 3, 3)   Å; zeros for molecules
    structures/pbc           bool    (n_structures, 3)
    structures/charge        int16   (n_structures,)
    structures/multiplicity  int16   (n_structures,)         0 where the source does not say
    structures/group         int32   (n_structures,)         attribute ``names``: group names
    structures/source        int16   (n_structures,)         index into the manifest's inputs
    structures/hash          uint64  (n_structures,)         geometry hash (see mfdata.linking)
    atoms/numbers            uint8   (n_atoms_total,)
    atoms/positions          float   (n_atoms_total, 3)      Å
    labels/LEVEL/LABEL/values  float (rows, *shape)  canonical unit; NaN where absent
    labels/LEVEL/LABEL/present bool  (n_structures,)

Per-atom arrays hold the atoms of all structures back to back; structure i owns the atoms from
``cumsum(n_atoms)[i - 1]``. Everything above is immutable once written and covered by the store's
checksum; splits and statistics live elsewhere and do not change it.

The readers take the group as a path or as a zarr store object (a store at a URL, through
fsspec: :mod:`mfdata.store.remote`): one reader for both.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import zarr
from numcodecs import BitRound
from zarr.codecs import BloscCodec
from zarr.storage import StoreLike

from mfdata.errors import MfkitError
from mfdata.records import Label, Structures
from mfdata.schema import LABEL_KINDS, DatasetManifest

ZARR_DIR = "data.zarr"  # the group's directory inside a store
STRUCTURE_CHUNK = 1 << 16
ATOM_CHUNK = 1 << 18
INDEX_CHUNK = 1 << 18

STRUCTURE_FIELDS = ("n_atoms", "cell", "pbc", "charge", "multiplicity", "group", "source", "hash")

Precision = Literal["lossless", "compact"]
# With ``compact``, per-atom float labels (forces, charges) keep this many mantissa bits:
# a relative error of at most 2**-(COMPACT_KEEPBITS + 1), about 1e-4 (0.01 %).
COMPACT_KEEPBITS = 12


def _compressor(dtype: np.dtype) -> BloscCodec:
    """zstd with byte shuffle; floats in 512 KiB Blosc blocks.

    The low mantissa bits of QM floats are noise: byte shuffle (sign and exponent bytes
    together) compresses them better than bitshuffle, and larger blocks give zstd a longer
    window; on ANI-like data 3 % smaller lossless, 4 % smaller compact (benchmarks/README.md).
    """
    if np.dtype(dtype).kind == "f":
        return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", blocksize=1 << 19)
    return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


class CorruptArrayError(MfkitError, ValueError):
    """An array whose values do not match the checksum its store's manifest records."""


@contextmanager
def reading_zarr(where: object, what: str = "the Zarr group") -> Iterator[None]:
    """Report a damaged Zarr group read in the block (an unparsable ``zarr.json``, an
    undecodable chunk: they surface as many exception types) as a one-line
    :class:`CorruptArrayError` naming the store, never a traceback."""
    try:
        yield
    except MfkitError:
        raise
    except Exception as exc:
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise CorruptArrayError(
            f"{where}: {what} is unreadable (corrupted metadata or chunk): "
            f"{type(exc).__name__}: {detail}; run `mfdata verify {where}`"
        ) from exc


def _little(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array


class StreamChecksum:
    """:func:`array_checksum` of an array given as consecutive blocks of rows."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...]):
        text = f"{np.dtype(dtype).newbyteorder('<').str}{tuple(shape)}"
        self._sha = hashlib.sha256(text.encode())

    def update(self, block: np.ndarray) -> None:
        self._sha.update(memoryview(_little(block)).cast("B"))

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def array_checksum(array: np.ndarray) -> str:
    """sha256 of an array's values in C order, little-endian, with its dtype and shape."""
    digest = StreamChecksum(array.dtype, array.shape)
    digest.update(array)
    return digest.hexdigest()


def zarr_checksum(array: zarr.Array) -> str:
    """:func:`array_checksum` of a Zarr array, read one chunk of rows at a time (bounded memory)."""
    digest = StreamChecksum(array.dtype, array.shape)
    if array.ndim == 0:
        digest.update(np.asarray(array[...]))
        return digest.hexdigest()
    rows = max(1, int(array.chunks[0]))
    for start in range(0, int(array.shape[0]), rows):
        digest.update(np.asarray(array[start : start + rows]))
    return digest.hexdigest()


def check_checksums(where: object, manifest: DatasetManifest, actual: dict[str, str]) -> None:
    """Refuse arrays (name -> recomputed checksum) that differ from the manifest's record.

    Every reader of array values calls this (once per command) before it uses them, so a
    corrupted store never reaches an export, a merged store, statistics or training.
    """
    bad = [name for name, value in actual.items() if manifest.checksums.get(name) != value]
    if combined_checksum(manifest.checksums) != manifest.checksum:
        bad.append("(the manifest's combined checksum)")
    if bad:
        raise CorruptArrayError(
            f"{where}: array(s) {', '.join(bad)} do not match the checksum in the manifest "
            f"(corrupted data); run `mfdata verify {where}`"
        )


def check_shape(path: StoreLike, manifest: DatasetManifest, where: object) -> None:
    """Refuse a manifest whose counts disagree with the group's array shapes (metadata only):
    sizes that code allocates from are checked before anything is allocated."""
    try:
        root = zarr.open_group(path, mode="r", zarr_format=3)
        n_structures = root["structures/n_atoms"].shape[0]
        n_atoms = root["atoms/numbers"].shape[0]
    except Exception as exc:  # a missing or damaged group: many exception types
        raise CorruptArrayError(f"{where}: cannot read the Zarr group: {exc}") from exc
    if (manifest.n_structures, manifest.n_atoms) != (n_structures, n_atoms):
        raise CorruptArrayError(
            f"{where}: the manifest says {manifest.n_structures} structures and "
            f"{manifest.n_atoms} atoms, the arrays hold {n_structures} and {n_atoms}"
        )


def combined_checksum(checksums: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(checksums):
        digest.update(f"{path}={checksums[path]}\n".encode())
    return digest.hexdigest()


def structure_arrays(s: Structures, hashes: np.ndarray) -> dict[str, np.ndarray]:
    """Every immutable array of the store, by its path in the group."""
    arrays = {
        "structures/n_atoms": s.n_atoms.astype(np.int32),
        "structures/cell": s.cell.astype(np.float64),
        "structures/pbc": s.pbc.astype(bool),
        "structures/charge": s.charge.astype(np.int16),
        "structures/multiplicity": s.multiplicity.astype(np.int16),
        "structures/group": s.group.astype(np.int32),
        "structures/source": s.source.astype(np.int16),
        "structures/hash": hashes.astype(np.uint64),
        "atoms/numbers": s.numbers.astype(np.uint8),
        "atoms/positions": s.positions,
    }
    for (level, kind), label in sorted(s.labels.items()):
        values = label.values
        if kind == "energy":
            values = values.astype(np.float64)
        arrays[f"labels/{level}/{kind}/values"] = values
        arrays[f"labels/{level}/{kind}/present"] = label.present.astype(bool)
    return arrays


def is_per_atom(name: str) -> bool:
    """Whether the array at ``name`` in the group has one row per atom (else per structure)."""
    if name.startswith("atoms/"):
        return True
    parts = name.split("/")
    return parts[0] == "labels" and parts[3] == "values" and LABEL_KINDS[parts[2]].per == "atom"


class _Column:
    """One array of a group being appended to: rows wait in memory until they fill a chunk, so
    every chunk is written once, whole; rows before ``start`` are never written (fill value)."""

    def __init__(self, root: zarr.Group, name: str, block: np.ndarray, start: int, chunk: int):
        self.root, self.name = root, name
        self.chunk = max(1, chunk)
        self.array = root.create_array(
            name,
            shape=(start, *block.shape[1:]),
            dtype=block.dtype,
            chunks=(self.chunk, *block.shape[1:]),
            compressors=_compressor(block.dtype),
            fill_value=np.nan if block.dtype.kind == "f" else 0,
        )
        self.written = start - start % self.chunk  # rows before the pending ones
        self.pending = [self._fill(start - self.written, block.dtype)]
        self.rows = start

    def _fill(self, rows: int, dtype: np.dtype) -> np.ndarray:
        fill = np.nan if np.dtype(dtype).kind == "f" else 0
        return np.full((rows, *self.array.shape[1:]), fill, dtype=dtype)

    def append(self, block: np.ndarray) -> None:
        if np.result_type(block.dtype, self.array.dtype) != self.array.dtype:
            self._widen(np.result_type(block.dtype, self.array.dtype))
        self.pending.append(block.astype(self.array.dtype, copy=False))
        self.rows += len(block)
        if self.rows - self.written >= self.chunk:
            self._flush(whole_chunks=True)

    def append_missing(self, rows: int) -> None:
        """Rows this part lacks: NaN (float64, as a part without the label is) or zero."""
        dtype = np.float64 if self.array.dtype.kind == "f" else self.array.dtype
        self.append(self._fill(rows, dtype))

    def _flush(self, whole_chunks: bool) -> None:
        pending = np.concatenate(self.pending)
        size = len(pending) - len(pending) % self.chunk if whole_chunks else len(pending)
        if size == 0:
            return
        self.array.resize((max(self.array.shape[0], self.written + size), *self.array.shape[1:]))
        self.array[self.written : self.written + size] = pending[:size]
        self.written += size
        self.pending = [pending[size:]]

    def _widen(self, dtype: np.dtype) -> None:
        """Rewrite the rows written so far in a wider float type (a later part brings float64
        where earlier ones were float32), one chunk at a time."""
        old, wide = self.array, f"{self.name}.widening"
        new = self.root.create_array(
            wide,
            shape=old.shape,
            dtype=dtype,
            chunks=old.chunks,
            compressors=_compressor(dtype),
            fill_value=np.nan,
        )
        for start in range(0, self.written, self.chunk):
            new[start : start + self.chunk] = old[start : start + self.chunk].astype(dtype)
        group = self.root.store.root / self.root.path  # a local group: arrays are directories
        shutil.rmtree(group / self.name)
        os.rename(group / wide, group / self.name)
        self.array = self.root[self.name]
        self.pending = [p.astype(dtype) for p in self.pending]

    def close(self) -> str:
        """Write the last rows; the checksum of the array as stored, read back a chunk at a time."""
        self._flush(whole_chunks=False)
        self.array.resize((self.rows, *self.array.shape[1:]))
        return zarr_checksum(self.array)


class GroupWriter:
    """A new Zarr v3 group written a part at a time (one input file each), in bounded memory:
    arrays are created as they first appear, a part without an array gets NaN or zero rows
    (as :func:`structure_arrays` of concatenated parts would), and checksums are taken at
    :meth:`close` from what was written.

    ``rows`` (structures, atoms), when known, sizes the chunks as for a group written at once;
    unknown, chunks have their full size. With ``precision="compact"`` per-atom float labels
    are bit-rounded before writing (see ``COMPACT_KEEPBITS``); checksums cover the values as
    stored.
    """

    def __init__(
        self, path: str, precision: Precision = "lossless", rows: tuple[int, int] | None = None
    ):
        self.root = zarr.open_group(path, mode="w-", zarr_format=3)
        self.precision = precision
        self.rows = rows
        self.n_structures = self.n_atoms = 0
        self.columns: dict[str, _Column] = {}

    def append(self, arrays: dict[str, np.ndarray], n_structures: int, n_atoms: int) -> None:
        """Append one part: ``arrays`` by name, ``n_atoms`` rows for per-atom arrays and
        ``n_structures`` for the others."""
        for name, block in arrays.items():
            per_atom = is_per_atom(name)
            if self.precision == "compact" and per_atom and name.startswith("labels/"):
                block = BitRound(COMPACT_KEEPBITS).encode(block).view(block.dtype)
                block = block.reshape(arrays[name].shape)
            column = self.columns.get(name)
            if column is None:
                self.columns[name] = self._column(name, block, per_atom)
            else:
                column.append(block)
        for name, column in self.columns.items():
            if name not in arrays:
                column.append_missing(n_atoms if is_per_atom(name) else n_structures)
        self.n_structures += n_structures
        self.n_atoms += n_atoms

    def _column(self, name: str, block: np.ndarray, per_atom: bool) -> _Column:
        start = self.n_atoms if per_atom else self.n_structures
        if start and block.dtype.kind == "f":  # earlier parts lack it: NaN rows, as float64
            block = block.astype(np.result_type(block.dtype, np.float64))
        chunk = _chunk_rows(name, per_atom)
        if self.rows is not None:
            chunk = min(chunk, self.rows[1] if per_atom else self.rows[0])
        column = _Column(self.root, name, block, start, chunk)
        column.append(block)
        return column

    def close(self, attributes: dict[str, dict]) -> dict[str, str]:
        """Write what is pending and ``attributes`` (by array name); return every checksum."""
        checksums = {name: column.close() for name, column in self.columns.items()}
        for name, attrs in attributes.items():
            self.root[name].attrs.update(attrs)
        return checksums


def _chunk_rows(name: str, per_atom: bool) -> int:
    if name.startswith("index/"):
        return INDEX_CHUNK
    return ATOM_CHUNK if per_atom else STRUCTURE_CHUNK


def read_group(
    path: StoreLike, manifest: DatasetManifest | None, where: object = None
) -> tuple[Structures, np.ndarray]:
    """All structures and labels of the group at ``path``, and their geometry hashes.

    With a ``manifest``, every array read is checked against its checksum first (one sha256
    pass over the bytes read: see :func:`check_checksums`); ``None`` only where the caller has
    just verified them.
    """
    with reading_zarr(where or path):
        root = zarr.open_group(path, mode="r", zarr_format=3)
        names = [
            "atoms/numbers",
            "atoms/positions",
            *(f"structures/{n}" for n in STRUCTURE_FIELDS),
            *(
                f"labels/{level}/{kind}/{part}"
                for level, level_group in (root["labels"].groups() if "labels" in root else ())
                for kind, _ in level_group.groups()
                for part in ("values", "present")
            ),
        ]
        a = {name: root[name][...] for name in names}
        group_names = [str(name) for name in root["structures/group"].attrs["names"]]
    if manifest is not None:
        check_checksums(where or path, manifest, {n: array_checksum(v) for n, v in a.items()})
    s = Structures(
        numbers=a["atoms/numbers"],
        positions=a["atoms/positions"],
        **{n: a[f"structures/{n}"] for n in STRUCTURE_FIELDS if n != "hash"},
        group_names=group_names,
    )
    for name in names:
        if name.startswith("labels/") and name.endswith("/values"):
            _, level, kind, _ = name.split("/")
            s.labels[(level, kind)] = Label(a[name], a[name.replace("/values", "/present")])
    return s, a["structures/hash"]


def read_verified(
    path: StoreLike, names: Sequence[str], manifest: DatasetManifest, where: object
) -> dict[str, np.ndarray]:
    """The values of the arrays ``names`` of the group at ``path``, each checked against the
    manifest's checksum: what a reader of a few arrays uses, so damage never reaches its result."""
    with reading_zarr(where):
        root = zarr.open_group(path, mode="r", zarr_format=3)
        values = {name: root[name][...] for name in names}
    check_checksums(where, manifest, {name: array_checksum(v) for name, v in values.items()})
    return values
