"""The LMDB reader: (structure, level) samples read from packed stores' shards.

Guarantees: the frames of :class:`mfdata.loading.samples.FidelitySamples`, read by random access
from the LMDB shards (fast shuffled reads); only packed local stores whose shards were packed from
their arrays are read, and every record is checked against its CRC each time it is read, so a
corrupted record is a one-line error naming the shard and the structure, never a frame. Safe to
pass to DataLoader workers (each process opens its own shards).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nequip.data import AtomicDataDict

from mfdata.loading.samples import FidelitySamples
from mfdata.registry import open_store
from mfdata.store.lmdb_store import LmdbStore


class FidelityDataset(FidelitySamples):
    """(structure, level) samples from one or more packed stores, read from their LMDB shards.

    ``levels`` is the ordered list of heads (ids or aliases): sample heads index into it, and a
    level a store lacks simply contributes no samples from that store. ``split`` (``NAME:PART``)
    and ``selection`` (a selection JSON) restrict the structures; ``labels`` are the label kinds
    that make a structure a sample at a level. ``type_names`` defaults to every element of the
    stores in order of atomic number.
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
    ):
        opened = [open_store(s) for s in stores]
        self.readers = [LmdbStore(store.path) for store in opened]
        for reader in self.readers:
            reader.open()
        super().__init__(
            opened,
            levels,
            type_names,
            split,
            subset,
            selection,
            labels,
            dtype,
            transforms,
        )

    def _frame(self, store: int, structure: int, level: str) -> AtomicDataDict.Type:
        return self.readers[store].torch_dict(
            structure, level, self.dtype, optional=self.optional_kinds
        )
