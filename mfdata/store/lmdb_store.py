"""LMDB shards of a store: the row-oriented packed form, for fast shuffled reads in training.

The Zarr group is the canonical form; ``mfdata pack STORE`` derives the shards from it, and they
can always be rebuilt. This docstring is the specification of the on-disk layout (version 2).

Files
-----
``STORE/lmdb/VERSION/shard-00000.lmdb``, ``shard-00001.lmdb``, ...: plain LMDB data files
(opened with ``subdir=False``; written without a lock file), in a directory named by 8 random hex
digits for each packing (stores packed before mfkit 1.1 have them directly in ``lmdb/``). Shard
``k`` holds the structures ``start_k <= i < stop_k``: contiguous ranges that tile
``0 .. n_structures`` in order. The manifest's ``lmdb`` entry lists the shard files, the layout
version and the checksum of the store they were packed from; shards whose checksum differs from
the store's are stale and not read. The manifest is the one commit point: a packing's directory
is complete before the manifest names it, and anything in ``lmdb/`` the manifest does not name
(an interrupted or replaced packing) is a leftover that the next pack or ``mfdata verify
--repair`` removes.

Keys
----
- structure record: the global structure index as an 8-byte big-endian unsigned integer, so
  records sort in index order;
- ``b"__layout__"``: UTF-8 JSON describing the shard (below). Any key that is not 8 bytes long
  is metadata, never a record.

Layout JSON (one object)::

    format          "mfkit-lmdb"
    layout_version  2 (version 1, before mfkit 1.1's per-record checksums, is refused: re-pack)
    store_checksum  checksum of the store (manifest ``checksum``) the shard was packed from
    n_structures    structures in the whole store
    shard, n_shards this shard's number and the number of shards
    start, stop     the half-open range of structure indices in this shard
    header_bytes    16 + 8 * mask_words
    mask_words      number of uint64 words in the presence mask: ceil(len(labels) / 64), >= 1
    cell            {"dtype": "<f8", "shape": [3, 3]}
    positions       {"dtype": "<f4" or "<f8", "shape": [3]}
    numbers         {"dtype": "|u1", "shape": []}
    labels          ordered label columns [{"name": "LEVEL/LABEL", "level", "label",
                    "per": "structure" | "atom", "dtype", "shape"}]; column j is bit j of the mask
    atom_order      order of the per-atom buffers: "positions" and the names of per-atom labels
    checksum        {"algorithm": "sha256", "value": hex}: sha256 of the concatenated record
                    values in key order, followed by their byte lengths as little-endian uint64
    layout_checksum sha256 of the canonical JSON (sorted keys, no spaces) of every other field:
                    a changed byte of the layout (a label's name, a dtype) is refused

Record value (little-endian, no padding between buffers)
-------------------------------------------------------
====================  =========================================================================
offset                content
====================  =========================================================================
0                     uint32 n_atoms (N)
4                     int32 group index (into the Zarr ``structures/group`` names)
8                     int16 charge
10                    int16 multiplicity (0: not stated)
12                    uint8 pbc bits: bit k set when periodic along cell vector k
13                    3 bytes, zero
16                    uint64[mask_words] presence mask: bit j (word j // 64, bit j % 64) set
                      when label column j is present for this structure
header_bytes          float64[3, 3] cell (Å; zeros for molecules)
...                   per-structure label columns that are present, in ``labels`` order,
                      each float64 with its shape (energy: 1 value, stress: 9, dipole: 3)
...                   per-atom buffers in ``atom_order``: positions (N, 3) in the ``positions``
                      dtype, then each present per-atom label, (N, *shape) in its dtype
...                   uint8[N] atomic numbers
...                   uint32 CRC-32 (zlib's) of every byte before it, started from the structure
                      index mod 2**32 (``zlib.crc32(body, i % 2**32)``), so a record that moved
                      to another key fails too; last
====================  =========================================================================

``atom_order`` lists per-atom buffers by decreasing item size (positions first among equals),
and everything before them is a multiple of 8 bytes, so every buffer starts at an offset that is
a multiple of its item size. Absent labels take no bytes. Values are the store's values
bit-for-bit (per-structure labels widened to float64, which is exact). Nothing in a shard is
pickled: reading a shard cannot execute code.

Reading
-------
:class:`LmdbStore` opens each shard once per process, read-only, without locks, and keeps one
read transaction open; LMDB allows one open handle per file and process, so environments live in a
module-level cache shared by every reader in the process and are reopened after a fork. Opening
checks each shard's layout against its own checksum; every record is checked against its CRC-32
each time it is read (~1 µs for a record of 30 atoms), before any of its bytes is interpreted, so
a corrupted record is a one-line error naming the shard and the structure, never a wrong value or
an IndexError in training. ``mfdata verify`` checks every record's CRC, each shard's checksum,
and the records against ones re-encoded from the Zarr arrays.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import math
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lmdb
import numpy as np

from mfdata.errors import UsageError
from mfdata.files import kill_point, remove, writing
from mfdata.progress import progress
from mfdata.records import Label, Structures
from mfdata.schema import LABEL_KINDS, DatasetManifest, LmdbInfo
from mfdata.store.lock import store_lock
from mfdata.store.manifest import (
    StoreError,
    json_digest,
    parse_json_object,
    read_manifest,
    write_manifest,
)
from mfdata.store.zarr_store import ZARR_DIR, read_group

if TYPE_CHECKING:
    import torch

LAYOUT_VERSION = 2
CRC_BYTES = 4  # the CRC-32 that ends every record
LAYOUT_KEY = b"__layout__"
LMDB_DIR = "lmdb"
FORMAT = "mfkit-lmdb"
DEFAULT_SHARD_SIZE = 1_000_000  # structures per shard when --shards is not given
BATCH_BYTES = 16 << 20  # record bytes encoded per numpy batch

_HEAD = struct.Struct("<IihhB3x")
_PBC = np.array([[(b >> k) & 1 for k in range(3)] for b in range(8)], dtype=bool)


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.lmdb"


def index_key(i: int) -> bytes:
    return int(i).to_bytes(8, "big")


def record_crc(body: bytes | memoryview, i: int) -> int:
    """The CRC-32 that ends the record of structure ``i`` whose other bytes are ``body``."""
    return zlib.crc32(body, i & 0xFFFFFFFF)


def _repack_hint(version: object) -> str:
    return (
        f"LMDB layout version {version} is not {LAYOUT_VERSION} (per-record checksums); re-pack "
        "with `mfdata pack --force`"
    )


# --------------------------------------------------------------------------- layout


def make_layout(s: Structures, store_checksum: str) -> dict[str, Any]:
    """The shard-independent part of the layout JSON for the structures ``s``."""
    labels = []
    for level, kind_name in sorted(s.labels):
        kind = LABEL_KINDS[kind_name]
        values = s.labels[(level, kind_name)].values
        dtype = np.dtype("<f8") if kind.per == "structure" else values.dtype.newbyteorder("<")
        if dtype.kind != "f":
            raise StoreError(f"{level} {kind_name}: cannot pack values of dtype {dtype}")
        labels.append(
            {
                "name": f"{level}/{kind_name}",
                "level": level,
                "label": kind_name,
                "per": kind.per,
                "dtype": dtype.str,
                "shape": list(kind.shape),
            }
        )
    positions = np.dtype(s.positions.dtype).newbyteorder("<")
    atom = [("positions", positions.itemsize)] + [
        (c["name"], np.dtype(c["dtype"]).itemsize) for c in labels if c["per"] == "atom"
    ]
    atom_order = [name for name, _ in sorted(atom, key=lambda item: -item[1])]  # stable
    mask_words = max(1, math.ceil(len(labels) / 64))
    return {
        "format": FORMAT,
        "layout_version": LAYOUT_VERSION,
        "store_checksum": store_checksum,
        "n_structures": s.n_structures,
        "header_bytes": 16 + 8 * mask_words,
        "mask_words": mask_words,
        "cell": {"dtype": "<f8", "shape": [3, 3]},
        "positions": {"dtype": positions.str, "shape": [3]},
        "numbers": {"dtype": "|u1", "shape": []},
        "labels": labels,
        "atom_order": atom_order,
    }


@dataclass(frozen=True)
class _Column:
    name: str
    bit: int  # -1: always present (positions)
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Values per structure (per-structure column) or per atom (per-atom column)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


class _Plan:
    """A layout parsed once: the columns in record order, and offsets cached per presence mask."""

    def __init__(self, layout: dict[str, Any], where: str):
        if layout.get("layout_version") != LAYOUT_VERSION:
            raise StoreError(f"{where}: {_repack_hint(layout.get('layout_version'))}")
        if layout.get("format") != FORMAT:
            raise StoreError(f"{where}: not an {FORMAT} layout; re-pack with `mfdata pack --force`")
        try:
            self.layout = layout
            self.header_bytes = int(layout["header_bytes"])
            self.mask_words = int(layout["mask_words"])
            self.positions_dtype = np.dtype(layout["positions"]["dtype"])
            self.labels = [
                _Column(c["name"], j, np.dtype(c["dtype"]), tuple(c["shape"]))
                for j, c in enumerate(layout["labels"])
            ]
            per = [c["per"] for c in layout["labels"]]
            atom_order = list(layout["atom_order"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{where}: malformed LMDB layout: {exc!r}") from exc
        self.structure_columns = [
            c for c, p in zip(self.labels, per, strict=True) if p == "structure"
        ]
        atom = {c.name: c for c, p in zip(self.labels, per, strict=True) if p == "atom"}
        atom["positions"] = _Column("positions", -1, self.positions_dtype, (3,))
        if sorted(atom_order) != sorted(atom) or self.header_bytes != 16 + 8 * self.mask_words:
            raise StoreError(f"{where}: inconsistent LMDB layout (atom_order or header_bytes)")
        self.atom_columns = [atom[name] for name in atom_order]
        self._offsets: dict[int, tuple[dict[str, int], dict[str, int], int]] = {}

    def offsets(self, mask: int) -> tuple[dict[str, int], dict[str, int], int]:
        """(per-structure byte offsets, per-atom offsets in units of N, end of the fixed part).

        A per-atom buffer starts at ``fixed + offset * N``: ``offset`` is the sum of the bytes
        per atom of the buffers before it. ``numbers`` is in the per-atom dict too.
        """
        cached = self._offsets.get(mask)
        if cached is not None:
            return cached
        structure: dict[str, int] = {}
        offset = self.header_bytes + 72
        for c in self.structure_columns:
            if mask >> c.bit & 1:
                structure[c.name] = offset
                offset += c.nbytes
        atom: dict[str, int] = {}
        per_atom = 0
        for c in self.atom_columns:
            if c.bit < 0 or mask >> c.bit & 1:
                atom[c.name] = per_atom
                per_atom += c.nbytes
        atom["numbers"] = per_atom
        self._offsets[mask] = result = (structure, atom, offset)
        return result


# --------------------------------------------------------------------------- encoding


def _label(s: Structures, name: str) -> Label:
    level, kind = name.split("/")
    return s.labels[(level, kind)]


def record_sizes(s: Structures, plan: _Plan, start: int, stop: int) -> np.ndarray:
    """Byte length of the records ``start .. stop``."""
    na = s.n_atoms[start:stop].astype(np.int64)
    sizes = np.full(stop - start, plan.header_bytes + 72 + CRC_BYTES, dtype=np.int64)
    for c in plan.structure_columns:
        sizes += _label(s, c.name).present[start:stop] * c.nbytes
    per_atom = np.ones(stop - start, dtype=np.int64)  # the atomic number
    for c in plan.atom_columns:
        per_atom += (_label(s, c.name).present[start:stop] if c.bit >= 0 else 1) * c.nbytes
    return sizes + na * per_atom


def _byte_ranges(starts: np.ndarray, lengths: np.ndarray, total_size: int) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for each start and length, as one cumulative sum.

    int32 where the buffer allows it: half the memory traffic of int64 indices.
    """
    keep = lengths > 0
    starts, lengths = starts[keep].astype(np.int64), lengths[keep].astype(np.int64)
    index = np.int32 if total_size < 2**31 else np.int64
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=index)
    step = np.ones(total, dtype=index)
    step[0] = starts[0]
    step[np.cumsum(lengths)[:-1]] = starts[1:] - (starts[:-1] + lengths[:-1] - 1)
    return np.cumsum(step, dtype=index)


def _scatter(buf: np.ndarray, starts: np.ndarray, data: np.ndarray, width: np.ndarray) -> None:
    """Copy the bytes of ``data`` to ``buf``, ``width[i]`` bytes at ``starts[i]``, vectorised."""
    if len(starts):
        index = _byte_ranges(starts, np.broadcast_to(width, starts.shape), buf.size)
        buf[index] = np.ascontiguousarray(data).reshape(-1).view(np.uint8)


def encode_records(
    s: Structures, plan: _Plan, start: int, stop: int, atom_start: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Records ``start .. stop`` of ``s`` back to back in one buffer, and their end offsets.

    Vectorised over the batch: each column is copied with one fancy-indexed assignment, so the
    cost per structure is a few numpy element operations, not Python calls.
    """
    n = stop - start
    na = s.n_atoms[start:stop].astype(np.int64)
    a0, a1 = int(atom_start[start]), int(atom_start[stop])
    present = {c.name: _label(s, c.name).present[start:stop] for c in plan.labels}
    sizes = record_sizes(s, plan, start, stop)
    ends = np.cumsum(sizes)
    buf = np.empty(int(ends[-1]) if n else 0, dtype=np.uint8)

    header = np.zeros(
        n,
        dtype=[
            ("n_atoms", "<u4"),
            ("group", "<i4"),
            ("charge", "<i2"),
            ("multiplicity", "<i2"),
            ("pbc", "u1"),
            ("pad", "u1", (3,)),
            ("mask", "<u8", (plan.mask_words,)),
        ],
    )
    header["n_atoms"] = na
    header["group"] = s.group[start:stop]
    header["charge"] = s.charge[start:stop]
    header["multiplicity"] = s.multiplicity[start:stop]
    pbc = s.pbc[start:stop].astype(np.uint8)
    header["pbc"] = pbc[:, 0] | pbc[:, 1] << 1 | pbc[:, 2] << 2
    for c in plan.labels:
        bit = present[c.name].astype(np.uint64) << np.uint64(c.bit % 64)
        header["mask"][:, c.bit // 64] |= bit
    cursor = ends - sizes
    _scatter(buf, cursor, header, np.full(n, plan.header_bytes))
    cursor = cursor + plan.header_bytes
    _scatter(buf, cursor, s.cell[start:stop].astype("<f8"), np.full(n, 72))
    cursor += 72
    for c in plan.structure_columns:
        rows = present[c.name]
        values = _label(s, c.name).values[start:stop][rows].astype(c.dtype)
        _scatter(buf, cursor[rows], values, np.full(len(values), c.nbytes))
        cursor += rows * c.nbytes
    for c in plan.atom_columns:
        if c.bit < 0:
            rows = np.ones(n, dtype=bool)
            values = s.positions[a0:a1]
        else:
            rows = present[c.name]
            values = _label(s, c.name).values[a0:a1][np.repeat(rows, na)]
        _scatter(buf, cursor[rows], values.astype(c.dtype, copy=False), na[rows] * c.nbytes)
        cursor += rows * na * c.nbytes
    _scatter(buf, cursor, s.numbers[a0:a1].astype(np.uint8, copy=False), na)
    cursor += na
    _scatter(buf, cursor, _crcs(buf, ends - sizes, cursor, start), np.full(n, CRC_BYTES))
    cursor += CRC_BYTES
    if not np.array_equal(cursor, ends):  # a bug, not bad data
        raise AssertionError("LMDB record sizes disagree with the bytes written")
    return buf, ends


def _crcs(buf: np.ndarray, starts: np.ndarray, stops: np.ndarray, first: int) -> np.ndarray:
    """The CRC of each record whose other bytes are ``buf[starts[r]:stops[r]]``."""
    view = memoryview(buf)
    bounds = zip(starts.tolist(), stops.tolist(), strict=True)
    return np.fromiter(
        (record_crc(view[a:b], first + r) for r, (a, b) in enumerate(bounds)),
        dtype="<u4",
        count=len(starts),
    )


def _batches(sizes: np.ndarray, start: int) -> list[tuple[int, int]]:
    """Split records ``start ..`` (their ``sizes``) into runs of about ``BATCH_BYTES``."""
    cost = np.cumsum(sizes)
    total = int(cost[-1]) if len(cost) else 0
    cuts = np.searchsorted(cost, np.arange(BATCH_BYTES, total, BATCH_BYTES), side="right")
    bounds = sorted({0, len(sizes), *(int(c) for c in cuts if 0 < c < len(sizes))})
    return [(start + a, start + b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class _Digest:
    """sha256 of record values in key order, then their lengths as little-endian uint64."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._lengths: list[np.ndarray] = []

    def update(self, values: np.ndarray | memoryview | bytes, lengths: np.ndarray) -> None:
        """Add records given as their concatenated bytes and their lengths."""
        self._sha.update(values)
        self._lengths.append(np.asarray(lengths, dtype="<u8"))

    def hexdigest(self) -> str:
        sha = self._sha.copy()
        if self._lengths:
            sha.update(np.concatenate(self._lengths).astype("<u8").tobytes())
        return sha.hexdigest()


def _shard_bounds(n: int, shards: int) -> list[int]:
    """Contiguous, near-equal index ranges: shard k holds ``bounds[k] .. bounds[k + 1]``."""
    return [n * k // shards for k in range(shards + 1)]


def _map_size(sizes: np.ndarray) -> int:
    """An upper bound on the LMDB file for records of ``sizes`` bytes.

    Small values sit in leaf pages with a 16-byte node; large ones take whole overflow pages.
    map_size only reserves address space: the file grows as pages are used.
    """
    page = 4096
    small = sizes < 1500
    used = np.where(small, sizes + 32, (sizes + 16 + page - 1) // page * page + 64)
    return int(used.sum()) * 3 // 2 + (64 << 20)


def _expected_digests(s: Structures, plan: _Plan, bounds: list[int]) -> list[str]:
    """The checksum each shard should have, recomputed from the structures."""
    atom_start = s.atom_start
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        digest = _Digest()
        for lo, hi in _batches(record_sizes(s, plan, a, b), a):
            buf, ends = encode_records(s, plan, lo, hi, atom_start)
            digest.update(buf, np.diff(ends, prepend=0))
        out.append(digest.hexdigest())
    return out


class _ShardWriter:
    """One shard in a single write transaction; the layout key (with the checksum) goes last."""

    def __init__(self, path: Path, s: Structures, plan: _Plan, layout: dict[str, Any]):
        self.path, self.s, self.plan, self.layout = path, s, plan, layout
        self.atom_start = s.atom_start
        self.map_size = _map_size(record_sizes(s, plan, layout["start"], layout["stop"]))
        self.env = lmdb.open(
            str(path),
            map_size=self.map_size,
            subdir=False,
            lock=False,
            sync=False,
            metasync=False,
            readahead=False,
            meminit=False,
        )
        self.txn = self.env.begin(write=True)
        self.cursor = self.txn.cursor()
        self.digest = _Digest()
        self.written = layout["start"]

    def write(self, lo: int, hi: int) -> None:
        if lo != self.written:
            raise AssertionError(f"{self.path}: batch {lo} follows {self.written}")
        buf, ends = encode_records(self.s, self.plan, lo, hi, self.atom_start)
        view = memoryview(buf)
        keys = np.arange(lo, hi, dtype=">u8").tobytes()
        edges = [0, *ends.tolist()]
        items = ((keys[8 * r : 8 * r + 8], view[edges[r] : edges[r + 1]]) for r in range(hi - lo))
        try:
            _, added = self.cursor.putmulti(items, append=True)
        except lmdb.MapFullError as exc:  # _map_size is meant to make this impossible
            raise StoreError(f"{self.path}: LMDB map size {self.map_size} too small") from exc
        if added != hi - lo:
            raise StoreError(f"{self.path}: wrote {added} of {hi - lo} records")
        self.digest.update(buf, np.diff(ends, prepend=0))
        self.written = hi

    def close(self) -> None:
        if self.written != self.layout["stop"]:
            raise AssertionError(f"{self.path}: {self.written} written, not {self.layout['stop']}")
        layout = {
            **self.layout,
            "checksum": {"algorithm": "sha256", "value": self.digest.hexdigest()},
        }
        layout["layout_checksum"] = json_digest(layout)
        self.txn.put(LAYOUT_KEY, json.dumps(layout, indent=1).encode())
        self.txn.commit()
        self.env.sync(True)
        self.env.close()

    def abort(self) -> None:
        self.txn.abort()
        self.env.close()


def pack_is_current(manifest: DatasetManifest) -> bool:
    """Whether the store's LMDB pack exists, has this layout and holds the store's data."""
    info = manifest.lmdb
    return (
        info is not None
        and info.layout_version == LAYOUT_VERSION
        and info.checksum == manifest.checksum
    )


def pack(store_path: str | Path, shards: int | None = None, force: bool = False) -> LmdbInfo:
    """Write the LMDB shards of a store and record them in its manifest, atomically.

    Holds the store's lock throughout. The shards are written in a hidden directory in
    ``lmdb/``, renamed to their packing's directory when all are complete, and committed by the
    manifest; then every other entry of ``lmdb/`` is removed. A store packed already is an error
    unless ``force``; an interrupted pack (the manifest names no shards) needs no ``force``.
    """
    root = Path(store_path)
    with store_lock(root):
        manifest = read_manifest(root)  # inside the lock: what another writer committed
        if manifest.lmdb is not None and not force:
            raise FileExistsError(
                f"{root / LMDB_DIR}: the store is already packed; use --force to re-pack it"
            )
        n = manifest.n_structures
        if shards is None:
            shards = max(1, math.ceil(n / DEFAULT_SHARD_SIZE))
        if shards < 1 or (n and shards > n):
            raise UsageError(f"--shards {shards}: expected 1 to {max(n, 1)} for {n} structures")
        s, _ = read_group(str(root / ZARR_DIR), manifest, root)
        version = uuid.uuid4().hex[:8]
        with writing(root):
            (root / LMDB_DIR).mkdir(exist_ok=True)
        _write_shards(root / LMDB_DIR / version, s, make_layout(s, manifest.checksum), shards)
        kill_point("pack:renamed")
        info = LmdbInfo(
            layout_version=LAYOUT_VERSION,
            shards=[f"{LMDB_DIR}/{version}/{shard_name(k)}" for k in range(shards)],
            checksum=manifest.checksum,
        )
        manifest = write_manifest(root, manifest.model_copy(update={"lmdb": info}))
        kill_point("pack:committed")
        for leftover in lmdb_leftovers(root, manifest):
            remove(leftover)
    return info


def _write_shards(final: Path, s: Structures, base: dict[str, Any], shards: int) -> None:
    """Write the shards in a hidden sibling of ``final`` and rename it to ``final`` when done."""
    plan = _Plan(base, str(final))
    bounds = _shard_bounds(s.n_structures, shards)
    work = [
        (k, lo, hi)
        for k in range(shards)
        for lo, hi in _batches(record_sizes(s, plan, bounds[k], bounds[k + 1]), bounds[k])
        or [(bounds[k], bounds[k])]  # an empty store still gets its (empty) shard
    ]
    tmp = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    with writing(final.parent):
        tmp.mkdir()
    writer = None
    try:
        for k, lo, hi in progress(work, f"packing {final.parent.parent}", " batches"):
            if writer is None or writer.layout["shard"] != k:
                if writer is not None:
                    writer.close()
                writer = None
                layout = {**base, "shard": k, "n_shards": shards}
                layout.update(start=bounds[k], stop=bounds[k + 1])
                writer = _ShardWriter(tmp / shard_name(k), s, plan, layout)
            writer.write(lo, hi)
        if writer is not None:
            writer.close()
        writer = None
        os.rename(tmp, final)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def lmdb_leftovers(root: Path, manifest: DatasetManifest) -> list[Path]:
    """Entries of ``root/lmdb`` the manifest does not name: interrupted or replaced packings."""
    target = root / LMDB_DIR
    if not target.is_dir():
        return []
    named = {Path(shard).parts[1] for shard in (manifest.lmdb.shards if manifest.lmdb else [])}
    return sorted(p for p in target.iterdir() if p.name not in named)


# --------------------------------------------------------------------------- reading

# realpath, st_dev, st_ino -> (pid, environment, long-lived read transaction)
_ENVIRONMENTS: dict[tuple[str, int, int], tuple[int, lmdb.Environment, lmdb.Transaction]] = {}


def open_shard(path: Path) -> tuple[lmdb.Environment, lmdb.Transaction]:
    """The process's one read-only handle on the shard ``path`` and a read transaction on it.

    Opened on first use and again after a fork; every reader in the process shares it, since
    LMDB refuses to open a file twice in one process. Do not close it.
    """
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise StoreError(f"{path}: LMDB shard missing: {exc.strerror}") from exc
    key = (real, st.st_dev, st.st_ino)
    pid = os.getpid()
    entry = _ENVIRONMENTS.get(key)
    if entry is not None and entry[0] == pid:
        return entry[1], entry[2]
    if entry is not None:  # inherited through fork: this process must open its own
        with contextlib.suppress(lmdb.Error):
            entry[1].close()
    try:
        env = lmdb.open(
            real, readonly=True, lock=False, readahead=False, subdir=False, max_readers=2048
        )
    except lmdb.Error as exc:
        raise StoreError(f"{path}: cannot open LMDB shard: {exc}") from exc
    txn = env.begin(buffers=True)
    _ENVIRONMENTS[key] = (pid, env, txn)
    return env, txn


def _read_layout(path: Path, txn: lmdb.Transaction) -> dict[str, Any]:
    """The layout of a shard, refused unless it is this layout version and matches its own
    checksum (which is not part of what is returned)."""
    try:
        raw = txn.get(LAYOUT_KEY)
    except lmdb.Error as exc:
        raise StoreError(f"{path}: damaged LMDB shard: {exc}") from exc
    if raw is None:
        raise StoreError(f"{path}: LMDB shard has no {LAYOUT_KEY.decode()} key")
    layout = parse_json_object(bytes(raw), path, "LMDB layout")
    if layout.get("layout_version") != LAYOUT_VERSION:
        raise StoreError(f"{path}: {_repack_hint(layout.get('layout_version'))}")
    recorded = layout.pop("layout_checksum", None)
    if recorded != json_digest(layout):
        raise StoreError(
            f"{path}: LMDB layout checksum mismatch: the shard is corrupted; re-pack with "
            "`mfdata pack --force`"
        )
    return layout


def _shape_free(layout: dict[str, Any]) -> dict[str, Any]:
    """The part of a layout every shard of a store shares."""
    per_shard = ("shard", "n_shards", "start", "stop", "checksum")
    return {k: v for k, v in layout.items() if k not in per_shard}


class LmdbStore:
    """Random access to the records of a packed store; safe to pass to DataLoader workers.

    Environments are opened lazily, once per process (a forked worker reopens its own), and
    shared with every other reader of the same files in the process, each with one long-lived
    read transaction: use a reader from one thread at a time (DataLoader workers are processes).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        info = self.manifest.lmdb
        if info is None:
            raise StoreError(f"{self.path}: not packed; run `mfdata pack {self.path}`")
        if info.checksum != self.manifest.checksum:
            raise StoreError(
                f"{self.path}: LMDB shards were packed from another version of the store "
                "(checksum differs); run `mfdata pack --force`"
            )
        if info.layout_version != LAYOUT_VERSION:
            raise StoreError(f"{self.path}: {_repack_hint(info.layout_version)}")
        self.shard_paths = [self.path / name for name in info.shards]
        self._pid: int | None = None
        self._txns: list[lmdb.Transaction] = []
        self._starts: list[int] = []
        self._plan: _Plan | None = None
        self._torch_plans: dict[tuple[str, Any], Any] = {}

    def __len__(self) -> int:
        return self.manifest.n_structures

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _txns=[], _torch_plans={})
        return state

    def open(self) -> None:
        """Open the shards in this process, checking their layouts (see the module's Reading)."""
        if self._pid != os.getpid():
            self._open()

    def _open(self) -> None:
        txns, starts, plan = [], [], None
        expected = 0
        for path in self.shard_paths:
            _, txn = open_shard(path)
            layout = _read_layout(path, txn)
            if plan is None:
                plan = _Plan(layout, str(path))
            elif _shape_free(layout) != _shape_free(plan.layout):
                raise StoreError(f"{path}: layout differs from the first shard's")
            if (
                layout.get("start") != expected
                or layout.get("store_checksum") != self.manifest.checksum
            ):
                raise StoreError(f"{path}: shard does not belong to {self.path}; re-pack it")
            expected = layout["stop"]
            txns.append(txn)
            starts.append(layout["start"])
        if expected != self.manifest.n_structures:
            raise StoreError(
                f"{self.path}: shards hold {expected} structures, not {self.manifest.n_structures}"
            )
        self._txns, self._starts, self._plan = txns, starts, plan
        self._pid = os.getpid()

    @property
    def plan(self) -> _Plan:
        self.open()
        assert self._plan is not None
        return self._plan

    @property
    def label_names(self) -> list[str]:
        """Label columns as ``LEVEL/LABEL``, in layout order."""
        return [c.name for c in self.plan.labels]

    def raw(self, i: int) -> memoryview:
        """The record of structure ``i`` (its CRC included), checked against its CRC; valid as
        long as the process lives."""
        self.open()
        i = int(i)
        if not 0 <= i < self.manifest.n_structures:
            raise IndexError(f"{self.path}: structure {i} out of range 0..{len(self) - 1}")
        k = bisect.bisect_right(self._starts, i) - 1
        try:
            value = self._txns[k].get(i.to_bytes(8, "big"))
        except lmdb.Error as exc:
            raise StoreError(f"{self.shard_paths[k]}: damaged LMDB shard: {exc}") from exc
        if value is None:
            raise StoreError(f"{self.shard_paths[k]}: record {i} is missing")
        if len(value) < CRC_BYTES or record_crc(value[:-CRC_BYTES], i) != int.from_bytes(
            value[-CRC_BYTES:], "little"
        ):
            raise StoreError(
                f"{self.shard_paths[k]}: record {i} fails its checksum: the shard is corrupted; "
                "re-pack with `mfdata pack --force`"
            )
        return value

    def _head(self, i: int) -> tuple[memoryview, tuple[int, int, int, int, int], tuple]:
        """The record, its header fields and its offsets (see :meth:`_Plan.offsets`)."""
        value = self.raw(i)
        plan = self._plan
        assert plan is not None
        if len(value) < plan.header_bytes:
            raise StoreError(f"{self.path}: record {i} is truncated ({len(value)} bytes)")
        head = _HEAD.unpack_from(value)
        offsets = plan.offsets(int.from_bytes(value[16 : plan.header_bytes], "little"))
        n = head[0]
        size = offsets[2] + (offsets[1]["numbers"] + 1) * n + CRC_BYTES
        if len(value) != size:
            raise StoreError(
                f"{self.path}: record {i} has {len(value)} bytes; its header implies {size}"
            )
        return value, head, offsets

    def record(self, i: int) -> dict[str, np.ndarray]:
        """Every field of structure ``i``: read-only arrays that view the shard (no copy).

        Keys: ``numbers``, ``positions``, ``cell``, ``pbc``, ``charge``, ``multiplicity``,
        ``group``, and ``LEVEL/LABEL`` for each label the structure has (absent ones are left out).
        """
        value, (n, group, charge, mult, pbc), (structure, atom, fixed) = self._head(i)
        plan = self._plan
        assert plan is not None
        out: dict[str, np.ndarray] = {
            "numbers": np.frombuffer(value, np.uint8, n, fixed + atom["numbers"] * n),
            "cell": np.frombuffer(value, "<f8", 9, plan.header_bytes).reshape(3, 3),
            "pbc": _PBC[pbc].copy(),
            "charge": np.array(charge, dtype=np.int16),
            "multiplicity": np.array(mult, dtype=np.int16),
            "group": np.array(group, dtype=np.int32),
        }
        for c in plan.atom_columns:
            if c.name in atom:
                out[c.name] = np.frombuffer(
                    value, c.dtype, n * c.size, fixed + atom[c.name] * n
                ).reshape(n, *c.shape)
        for c in plan.structure_columns:
            if c.name in structure:
                out[c.name] = np.frombuffer(value, c.dtype, c.size, structure[c.name]).reshape(
                    c.shape
                )
        return out

    def torch_dict(
        self,
        i: int,
        level: str,
        dtype: torch.dtype | str = "float64",
        optional: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Structure ``i`` with the labels of ``level`` as a nequip AtomicDataDict (one frame).

        Keys, shapes and dtypes follow ``nequip.data.from_ase``: ``pos`` (N, 3),
        ``atomic_numbers`` (N,) int64, ``cell`` (1, 3, 3), ``pbc`` (1, 3) bool, ``num_atoms``
        (1,) int64, ``total_energy`` (1, 1), ``forces`` (N, 3), and the optional kinds
        (:data:`mfdata.loading.fields.OPTIONAL_IN_FRAMES`: ``stress`` (1, 3, 3), ``total_dipole``
        (1, 3), ``charges`` (N, 1)) the store has at any level, so every frame of the store has
        the same keys (``optional`` names them instead, for frames from several stores). Labels
        the structure lacks at ``level`` are NaN. Floats are ``dtype`` (the model's dtype).
        """
        import torch

        optional = None if optional is None else tuple(optional)
        tp = self._torch_plans.get((level, dtype, optional))
        if tp is None:
            tp = self._torch_plan(level, dtype, optional)
        value, (n, _, _, _, pbc), (structure, atom, fixed) = self._head(i)
        f = tp["np_dtype"]
        from_numpy = torch.from_numpy
        pos = np.frombuffer(value, tp["pos_dtype"], 3 * n, fixed + atom["positions"] * n)
        out = {
            "pos": from_numpy(pos.astype(f).reshape(n, 3)),
            "cell": from_numpy(
                np.frombuffer(value, "<f8", 9, self._plan.header_bytes)  # type: ignore[union-attr]
                .astype(f)
                .reshape(1, 3, 3)
            ),
            "pbc": from_numpy(_PBC[pbc].reshape(1, 3).copy()),
            "atomic_numbers": from_numpy(
                np.frombuffer(value, np.uint8, n, fixed + atom["numbers"] * n).astype(np.int64)
            ),
            "num_atoms": from_numpy(np.array([n], dtype=np.int64)),
        }
        for out_key, name, per_atom, shape, src in tp["labels"]:
            if per_atom:
                offset = atom.get(name) if name is not None else None
                if offset is None:
                    array = np.full((n, *shape), np.nan, dtype=f)
                else:
                    array = np.frombuffer(value, src, n * math.prod(shape), fixed + offset * n)
                    array = array.astype(f).reshape(n, *shape)
            else:
                offset = structure.get(name) if name is not None else None
                if offset is None:
                    array = np.full((1, *shape), np.nan, dtype=f)
                else:
                    array = np.frombuffer(value, src, math.prod(shape), offset)
                    array = array.astype(f).reshape(1, *shape)
            out[out_key] = from_numpy(array)
        return out

    def _torch_plan(
        self, level: str, dtype: Any, optional: tuple[str, ...] | None
    ) -> dict[str, Any]:
        from mfdata.loading.fields import OPTIONAL_IN_FRAMES, frame_labels

        plan = self.plan
        names = {c.name: c for c in plan.labels}
        levels = {name.split("/")[0] for name in names}
        if level not in levels:
            raise StoreError(
                f"{self.path}: no labels at level {level!r}; levels: {', '.join(sorted(levels))}"
            )
        f = np.dtype(str(dtype).removeprefix("torch."))
        if f not in (np.float32, np.float64):
            raise UsageError(f"dtype {dtype!r}: expected float32 or float64")
        if optional is None:
            kinds = {name.split("/")[1] for name in names}
            optional = tuple(kind for kind in OPTIONAL_IN_FRAMES if kind in kinds)
        labels = []
        for field in frame_labels(optional):
            column = names.get(f"{level}/{field.kind}")
            labels.append(
                (
                    field.key,
                    column.name if column else None,
                    field.per_atom,
                    field.shape,
                    column.dtype if column else None,
                )
            )
        tp = {"np_dtype": f, "pos_dtype": plan.positions_dtype, "labels": labels}
        self._torch_plans[(level, dtype, optional)] = tp
        return tp


# --------------------------------------------------------------------------- verification


def _check_records(path: Path, txn: lmdb.Transaction, layout: dict) -> tuple[str, list[str]]:
    """The record checksum of a shard, and its problems: keys that are not its structure
    indices, records that fail their CRC, a checksum that differs from its layout's."""
    start, stop = layout.get("start"), layout.get("stop")
    digest = _Digest()
    lengths = []
    expected_key = start if isinstance(start, int) else 0
    bad_keys, bad_crcs = 0, []
    try:
        with txn.cursor() as cursor:
            for k, v in cursor:
                if len(k) != 8:
                    continue
                i = int.from_bytes(k, "big")
                bad_keys += i != expected_key
                expected_key += 1
                if record_crc(v[:-CRC_BYTES], i) != int.from_bytes(v[-CRC_BYTES:], "little"):
                    bad_crcs.append(i)
                digest.update(v, [])
                lengths.append(len(v))
    except lmdb.Error as exc:
        return "", [f"{path}: damaged LMDB shard: {exc}"]
    digest.update(b"", np.asarray(lengths, dtype="<u8"))
    actual = digest.hexdigest()
    problems = []
    if bad_keys or expected_key != stop:
        problems.append(f"{path}: keys are not the structure indices {start}..{stop}")
    if bad_crcs:
        shown = ", ".join(map(str, bad_crcs[:5])) + (", ..." if len(bad_crcs) > 5 else "")
        problems.append(
            f"{path}: {len(bad_crcs)} record(s) fail their checksum (structures {shown}); the "
            "shard is corrupted: run `mfdata pack --force`"
        )
    recorded = (layout.get("checksum") or {}).get("value")
    if actual != recorded:
        problems.append(
            f"{path}: record checksum mismatch (layout says {str(recorded)[:12]}, found "
            f"{actual[:12]}); the shard is corrupted: run `mfdata pack --force`"
        )
    return actual, problems


def verify_shards(root: Path, manifest: DatasetManifest) -> list[str]:
    """Problems with a store's LMDB shards; empty when they are intact and match the Zarr group.

    Each shard's records are checked against the checksum in its layout and against records
    re-encoded from the Zarr arrays, so a shard edited together with its checksum is caught too.
    """
    info = manifest.lmdb
    target = root / LMDB_DIR
    if info is None:
        return []
    problems = []
    if info.checksum != manifest.checksum:
        problems.append(
            f"{target}: shards were packed from another version of the store "
            f"(checksum {info.checksum[:12]}, store {manifest.checksum[:12]})"
        )
    if info.layout_version != LAYOUT_VERSION:
        return [*problems, f"{target}: {_repack_hint(info.layout_version)}"]
    layouts: list[dict[str, Any]] = []
    digests: list[str] = []
    for name in info.shards:
        path = root / name
        try:
            _, txn = open_shard(path)
            layout = _read_layout(path, txn)
            _Plan(layout, str(path))
        except StoreError as exc:
            problems.append(str(exc))
            continue
        actual, shard_problems = _check_records(path, txn, layout)
        problems += shard_problems
        if layout.get("store_checksum") != manifest.checksum:
            problems.append(
                f"{path}: packed from another store (checksum "
                f"{str(layout.get('store_checksum'))[:12]})"
            )
        layouts.append(layout)
        digests.append(actual)
    if problems:
        return problems
    bounds = [layouts[0]["start"]] + [layout["stop"] for layout in layouts]
    if (
        bounds[0] != 0
        or bounds[-1] != manifest.n_structures
        or any(a["stop"] != b["start"] for a, b in zip(layouts[:-1], layouts[1:], strict=False))
    ):
        return [f"{target}: shard ranges do not tile 0..{manifest.n_structures - 1}"]
    s, _ = read_group(str(root / ZARR_DIR), None)  # verified by the caller
    base = make_layout(s, manifest.checksum)
    if any(_shape_free(layout) != base for layout in layouts):
        return [f"{target}: shard layout does not describe the store's arrays; re-pack"]
    expected = _expected_digests(s, _Plan(base, str(target)), bounds)
    for name, want, got in zip(info.shards, expected, digests, strict=True):
        if want != got:
            problems.append(f"{root / name}: records do not match the store's arrays")
    return problems
