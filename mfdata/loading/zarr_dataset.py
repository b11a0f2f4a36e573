"""The Zarr reader: (structure, level) samples from stores' Zarr groups, with block shuffling.

``ZarrFidelityDataset`` gives exactly the frames of the LMDB reader's ``FidelityDataset`` (same
sample table, same keys, dtypes and NaN-filling, same presence flags and head index) but reads
the canonical Zarr group instead of the LMDB shards, so a store can be streamed from object
storage (any fsspec URL: ``s3://...``, ``gs://...``, ``memory://...``, ``file://...``) without
packing or copying it first.

Zarr arrays are compressed in chunks (``mfdata.store.zarr_store``: 65,536 structures for
per-structure arrays, 262,144 atoms for per-atom ones); reading one structure means fetching and
decompressing whole chunks, so random access is slow. The dataset therefore

- splits each store into **blocks**: runs of whole per-structure chunks, merged until a block holds
  at least one per-atom chunk's worth of atoms (``sample_block`` gives every sample's block), and
- keeps a small **LRU cache of decoded chunks per array** in each process (each DataLoader worker
  has its own), sized to hold the chunks of one block.

With ``FidelityBatchSampler(..., blocks=dataset.sample_block, num_workers=W)`` an epoch visits the
blocks in a random order and the samples of a block in a random order, one block at a time per
worker, so every chunk is fetched and decompressed once per epoch and per reader; the exception is
a per-atom chunk holding a structure that straddles two blocks, which each of those two blocks
fetches (at most twice; exactly once when per-atom chunk edges fall on block edges). Memory is
bounded by the cache, whatever the store's size: see :meth:`ZarrFidelityDataset.cache_bytes`.

A store at a URL is read through a local chunk cache of bounded size (``chunk_cache_bytes``,
default 4 GiB per process, shared by the DataLoader workers: :mod:`mfdata.store.remote`), so
epochs after the first (and the checksum pass before it) fetch each chunk once.

Workers open their own fsspec filesystems and Zarr arrays. fsspec's ``memory://`` filesystem lives
in the process: forked workers (Linux's default) see it, spawned ones do not.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import zarr
from nequip.data import AtomicDataDict

from mfdata.loading.fields import frame_labels
from mfdata.loading.samples import FidelitySamples
from mfdata.loading.sources import StoreSource, open_source, verified_root, zarr_root
from mfdata.store.remote import DEFAULT_CACHE_BYTES
from mfdata.store.zarr_store import is_per_atom

STRUCTURE_ARRAYS = ("structures/cell", "structures/pbc")
ATOM_ARRAYS = ("atoms/numbers", "atoms/positions")


class _ChunkedArray:
    """One Zarr array read a whole chunk at a time, with an LRU of decoded chunks."""

    def __init__(self, array: zarr.Array, capacity: int, counter: Counter, key: tuple):
        self.array = array
        self.rows = int(array.chunks[0])
        self.n = int(array.shape[0])
        self.capacity = max(1, capacity)
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.counter, self.key = counter, key

    def chunk(self, c: int) -> np.ndarray:
        cached = self.cache.get(c)
        if cached is not None:
            self.cache.move_to_end(c)
            return cached
        values = self.array[c * self.rows : min((c + 1) * self.rows, self.n)]
        self.counter[(*self.key, c)] += 1
        self.cache[c] = values
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return values

    def row(self, i: int) -> np.ndarray:
        c, r = divmod(i, self.rows)
        return self.chunk(c)[r]

    def rows_of(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop``: a view of one cached chunk, or pieces of several joined."""
        c0, c1 = start // self.rows, (stop - 1) // self.rows
        if c0 == c1 or stop <= start:
            base = c0 * self.rows
            return self.chunk(c0)[start - base : stop - base]
        pieces = []
        for c in range(c0, c1 + 1):
            base = c * self.rows
            pieces.append(
                self.chunk(c)[max(start, base) - base : min(stop, base + self.rows) - base]
            )
        return np.concatenate(pieces)

    def chunk_bytes(self) -> int:
        return (
            self.rows
            * int(np.prod(self.array.shape[1:], dtype=np.int64))
            * self.array.dtype.itemsize
        )


def store_blocks(n_atoms: np.ndarray, structure_chunk: int, atom_chunk: int) -> np.ndarray:
    """Start index of every block of a store (and its end): runs of whole per-structure chunks,
    merged until a block holds at least ``atom_chunk`` atoms, so that a per-atom chunk overlaps
    at most two blocks and a per-structure chunk exactly one."""
    n = len(n_atoms)
    atom_start = np.concatenate([[0], np.cumsum(n_atoms, dtype=np.int64)])
    starts = [0]
    for edge in range(structure_chunk, n, structure_chunk):
        if atom_start[edge] - atom_start[starts[-1]] >= atom_chunk:
            starts.append(edge)
    return np.asarray([*starts, n], dtype=np.int64)


class _StoreReader:
    """The arrays of one store that frames need, opened lazily once per process."""

    def __init__(self, source: StoreSource, n_atoms: np.ndarray, paths: list[str], k: int):
        self.source, self.paths, self.k = source, paths, k
        self.atom_start = np.concatenate([[0], np.cumsum(n_atoms, dtype=np.int64)])
        root = zarr_root(source)
        self.present = set(p for p in paths if p in root)
        self.chunk_rows = {p: int(root[p].chunks[0]) for p in self.present}
        per_atom = [p for p in self.present if is_per_atom(p)]
        per_structure = [p for p in self.present if not is_per_atom(p)]
        self.blocks = store_blocks(
            n_atoms,
            max(self.chunk_rows[p] for p in per_structure),
            max(self.chunk_rows[p] for p in per_atom),
        )
        # chunks of each array that one block touches
        self.span = {}
        for p in self.present:
            starts = self.blocks[:-1] if not is_per_atom(p) else self.atom_start[self.blocks[:-1]]
            stops = self.blocks[1:] if not is_per_atom(p) else self.atom_start[self.blocks[1:]]
            rows = self.chunk_rows[p]
            spans = (np.maximum(stops - 1, starts) // rows) - (starts // rows) + 1
            self.span[p] = int(spans.max(initial=1))
        self.capacity = {p: span + 1 for p, span in self.span.items()}
        self._pid: int | None = None
        self.arrays: dict[str, _ChunkedArray] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, arrays={})
        return state

    def open(self, counter: Counter) -> dict[str, _ChunkedArray]:
        if self._pid != os.getpid():
            root = zarr_root(self.source)
            self.arrays = {
                p: _ChunkedArray(root[p], self.capacity[p], counter, (self.k, p))
                for p in self.present
            }
            self._pid = os.getpid()
        return self.arrays


class ZarrFidelityDataset(FidelitySamples):
    """(structure, level) samples read from stores' Zarr groups: local paths, registered names
    or fsspec URLs (opened with ``storage_options``).

    Same arguments and frames as :class:`mfdata.loading.lmdb_dataset.FidelityDataset`;
    ``sample_block`` is the block of every sample, for ``FidelityBatchSampler(blocks=...)``.
    ``chunk_reads`` counts the chunks this process fetched, by (store, array, chunk).
    ``cache_blocks`` is how many blocks' chunks the per-array caches hold (1 is enough for
    block-ordered reading). ``chunk_cache_bytes`` bounds the chunks of a store at a URL that
    each process keeps on local disk (:mod:`mfdata.store.remote`; 0: none), so that a second
    epoch does not download them again.
    """

    def __init__(
        self,
        stores: Sequence[str],
        levels: Sequence[str],
        type_names: Sequence[str] | None = None,
        split: str | None = None,
        subset: int | None = None,
        selection: str | None = None,
        labels: Sequence[str] = ("energy", "forces"),
        dtype: str = "float64",
        transforms: Sequence[Callable] = (),
        storage_options: dict | None = None,
        cache_blocks: int = 1,
        chunk_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        sources = [open_source(str(s), storage_options, chunk_cache_bytes) for s in stores]
        super().__init__(
            sources, levels, type_names, split, subset, selection, labels, dtype, transforms
        )
        self._kinds = frame_labels(self.optional_kinds)
        paths = [*STRUCTURE_ARRAYS, *ATOM_ARRAYS] + [
            f"labels/{level}/{kind}/{part}"
            for level in self.levels
            for kind, *_ in self._kinds
            for part in ("values", "present")
        ]
        self.chunk_reads: Counter = Counter()
        self._readers = []
        for k, source in enumerate(sources):
            verified_root(source, paths)
            reader = _StoreReader(source, self.store_n_atoms[k], paths, k)
            reader.capacity = {p: span * cache_blocks + 1 for p, span in reader.span.items()}
            self._readers.append(reader)
        offsets = np.cumsum([0] + [len(r.blocks) - 1 for r in self._readers])
        self.sample_block = np.empty(len(self), dtype=np.int64)
        for k, reader in enumerate(self._readers):
            mine = self.sample_store == k
            block = np.searchsorted(reader.blocks, self.sample_structure[mine], side="right") - 1
            self.sample_block[mine] = offsets[k] + block
        self._counter_pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["chunk_reads"] = Counter()
        return state

    def cache_bytes(self) -> int:
        """The most decoded chunk bytes the caches of one process hold, whatever the store size."""
        total = 0
        for reader in self._readers:
            for array in reader.open(self.chunk_reads).values():
                total += array.chunk_bytes() * array.capacity
        return total

    def _frame(self, store: int, structure: int, level: str) -> AtomicDataDict.Type:
        if self._counter_pid != os.getpid():  # a forked worker counts its own reads
            self.chunk_reads, self._counter_pid = Counter(), os.getpid()
        reader = self._readers[store]
        arrays = reader.open(self.chunk_reads)
        s = structure
        a0, a1 = int(reader.atom_start[s]), int(reader.atom_start[s + 1])
        n = a1 - a0
        f = self._np_dtype
        from_numpy = torch.from_numpy
        out = {
            "pos": from_numpy(arrays["atoms/positions"].rows_of(a0, a1).astype(f).reshape(n, 3)),
            "cell": from_numpy(arrays["structures/cell"].row(s).astype(f).reshape(1, 3, 3)),
            "pbc": from_numpy(arrays["structures/pbc"].row(s).reshape(1, 3).copy()),
            "atomic_numbers": from_numpy(arrays["atoms/numbers"].rows_of(a0, a1).astype(np.int64)),
            "num_atoms": from_numpy(np.array([n], dtype=np.int64)),
        }
        for kind, key, shape, per_atom in self._kinds:
            base = f"labels/{level}/{kind}"
            values = arrays.get(f"{base}/values")
            present = arrays.get(f"{base}/present")
            rows = (n,) if per_atom else (1,)
            if values is None or present is None or not present.row(s):
                array = np.full((*rows, *shape), np.nan, dtype=f)
            elif per_atom:
                array = values.rows_of(a0, a1).astype(f).reshape(*rows, *shape)
            else:
                array = values.row(s).astype(f).reshape(*rows, *shape)
            out[key] = from_numpy(array)
        return out
