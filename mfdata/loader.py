"""Torch datasets over stores: one sample per (structure, level) label set, for nequip.

Every sample is a nequip AtomicDataDict with the same keys: ``total_energy``, ``forces`` (and
``stress`` where any store has stress) NaN-filled where the level lacks them, per-frame flags
``total_energy_present``, ``forces_present``, ``stress_present`` saying which labels are real, the
head index in nequip's ``dataset`` field, and ``atom_types`` from the chemical species. The order
of levels (heads) and of type names is fixed when the dataset is made and is what the model reads.

Two readers share one sample table and one frame finish (:class:`FidelitySamples`):
:class:`FidelityDataset` reads the LMDB shards (fast shuffled random access), and
``mfdata.zarr_loader.ZarrFidelityDataset`` reads the Zarr group directly, locally or through
fsspec, with block shuffling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import torch
import zarr
from ase.data import atomic_numbers
from nequip.data import AtomicDataDict, register_fields
from nequip.data.datamodule import NequIPDataModule
from nequip.data.dataset import AtomicDataset

from mfdata.levels import resolve_level
from mfdata.query import load_selection, selected_indices
from mfdata.registry import open_store
from mfdata.sampler import FidelityBatchSampler, LevelMixing
from mfdata.schema import DatasetManifest
from mfdata.split import split_indices
from mfdata.store.lmdb_store import LmdbStore
from mfdata.store.store import Store, StoreError

PRESENT_FIELDS = {
    "energy": "total_energy_present",
    "forces": "forces_present",
    "stress": "stress_present",
}
# label kind -> AtomicDataDict key; the frame's label fields, in this order
LABEL_KEYS = {
    "energy": AtomicDataDict.TOTAL_ENERGY_KEY,
    "forces": AtomicDataDict.FORCE_KEY,
    "stress": AtomicDataDict.STRESS_KEY,
}
register_fields(graph_fields=list(PRESENT_FIELDS.values()))

# Neighbour-list backend of frame_transforms (see benchmarks/README.md, "Loader").
NEIGHBORLIST_BACKEND = "matscipy"


class StoreSource(Protocol):
    """What the sample table needs from a store, wherever it lives (a path or an fsspec URL)."""

    path: Any  # where the store is, for messages
    manifest: DatasetManifest

    def zarr_root(self) -> zarr.Group:
        """The store's Zarr group, read-only."""
        ...

    def split_part(self, name: str, part: str, subset: int | None) -> np.ndarray:
        """Sorted structure indices of one part of a saved split (or a training subset)."""
        ...


class LocalSource:
    """A store on the local filesystem, as a :class:`StoreSource`."""

    def __init__(self, store: Store):
        self.store, self.path, self.manifest = store, store.path, store.manifest

    def zarr_root(self) -> zarr.Group:
        return zarr.open_group(self.store.zarr_path, mode="r", zarr_format=3)

    def split_part(self, name: str, part: str, subset: int | None) -> np.ndarray:
        return split_indices(self.store, name, part, subset)


def _source(store: Store | StoreSource) -> StoreSource:
    return LocalSource(store) if isinstance(store, Store) else store


def default_type_names(stores: Sequence[Store | StoreSource]) -> list[str]:
    """Every element of the stores, by atomic number."""
    elements = {symbol for store in stores for symbol in store.manifest.elements}
    return sorted(elements, key=lambda symbol: atomic_numbers[symbol])


def structures_for(
    store: Store | StoreSource, split: str | None, subset: int | None, selection: str | None
) -> np.ndarray:
    """Structure indices of a store restricted to a split part (``NAME:PART``) and a selection."""
    source = _source(store)
    chosen = np.arange(source.manifest.n_structures)
    if split is not None:
        name, sep, part = split.partition(":")
        if not sep:
            raise ValueError(f"split {split!r}: expected NAME:PART, e.g. default:train")
        chosen = source.split_part(name, part, subset)
    if selection is not None:
        chosen = np.intersect1d(
            chosen, selected_indices(load_selection(selection), source, selection)
        )
    return chosen


def _sample_arrays(
    source: StoreSource, chosen: np.ndarray, levels: list[str], labels: Sequence[str]
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Atom counts of every structure of the store, and per head which of ``chosen`` have any
    of ``labels`` at that level."""
    root = source.zarr_root()
    out = {}
    for head, level in enumerate(levels):
        if level not in source.manifest.levels:
            continue
        mask = np.zeros(len(chosen), dtype=bool)
        for kind in labels:
            path = f"labels/{level}/{kind}/present"
            if path in root:
                mask |= root[path][...][chosen]
        out[head] = mask
    return root["structures/n_atoms"][...], out


class FidelitySamples(AtomicDataset):
    """The sample table and frame finish shared by the LMDB and Zarr datasets.

    A sample is a (store, structure, head) triple; subclasses read the raw frame (geometry and
    the labels of one level, NaN where absent) in :meth:`_frame`, and this class adds atom
    types, the head index and the presence flags, so both readers give identical frames.
    """

    def __init__(
        self,
        sources: Sequence[StoreSource],
        levels: Sequence[str],
        type_names: Sequence[str] | None,
        split: str | None,
        subset: int | None,
        selection: str | None,
        labels: Sequence[str],
        dtype: str,
        transforms: Sequence[Callable],
    ):
        super().__init__(transforms=list(transforms))
        self.levels = [resolve_level(level).id for level in levels]
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels {list(levels)} name one level twice")
        self.type_names = list(type_names or default_type_names(sources))
        self.dtype = dtype
        self._np_dtype = np.dtype(str(dtype).removeprefix("torch."))
        if self._np_dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype {dtype!r}: expected float32 or float64")
        self._type_of = np.full(119, -1, dtype=np.int64)
        for t, name in enumerate(self.type_names):
            self._type_of[atomic_numbers[name]] = t
        missing = sorted({e for s in sources for e in s.manifest.elements} - set(self.type_names))
        if missing:
            raise ValueError(f"elements {missing} in the data have no type in {self.type_names}")
        columns: dict[str, list[np.ndarray]] = {
            "store": [],
            "structure": [],
            "head": [],
            "n_atoms": [],
        }
        # atom count of every structure, per store (int32, as stored)
        self.store_n_atoms: list[np.ndarray] = []
        for k, source in enumerate(sources):
            chosen = structures_for(source, split, subset, selection)
            n_atoms, present = _sample_arrays(source, chosen, self.levels, labels)
            self.store_n_atoms.append(n_atoms)
            for head, mask in present.items():
                columns["store"].append(np.full(int(mask.sum()), k, dtype=np.int16))
                columns["structure"].append(chosen[mask])
                columns["head"].append(np.full(int(mask.sum()), head, dtype=np.int16))
                columns["n_atoms"].append(n_atoms[chosen[mask]])
        if not columns["head"] or not sum(len(h) for h in columns["head"]):
            where = [str(s.path) for s in sources]
            raise StoreError(f"no samples at levels {self.levels} in {where}")
        self.sample_store = np.concatenate(columns["store"])
        self.sample_structure = np.concatenate(columns["structure"])
        self.sample_head = np.concatenate(columns["head"])
        self.n_atoms = np.concatenate(columns["n_atoms"]).astype(np.int64)
        self.has_stress = any(
            level in s.manifest.levels and "stress" in s.manifest.levels[level].labels
            for s in sources
            for level in self.levels
        )

    @property
    def pools(self) -> dict[str, np.ndarray]:
        """Sample ids per level, in head order (what the sampler mixes)."""
        return {level: np.flatnonzero(self.sample_head == h) for h, level in enumerate(self.levels)}

    def __len__(self) -> int:
        return len(self.sample_head)

    def num_atoms(self, indices) -> list[int]:
        return self.n_atoms[np.asarray(indices)].tolist()

    def _get_data_list(self, indices) -> list[AtomicDataDict.Type]:
        if isinstance(indices, slice):
            indices = range(*indices.indices(len(self)))
        return [self._sample(int(i)) for i in indices]

    def _frame(self, store: int, structure: int, level: str) -> AtomicDataDict.Type:
        """Geometry and the labels of ``level`` (``LmdbStore.torch_dict``'s keys and dtypes)."""
        raise NotImplementedError

    def _sample(self, i: int) -> AtomicDataDict.Type:
        head = int(self.sample_head[i])
        data = self._frame(
            int(self.sample_store[i]), int(self.sample_structure[i]), self.levels[head]
        )
        data[AtomicDataDict.ATOM_TYPE_KEY] = torch.from_numpy(
            self._type_of[data[AtomicDataDict.ATOMIC_NUMBERS_KEY].numpy()]
        )
        data[AtomicDataDict.DATASET_KEY] = torch.tensor([[head]], dtype=torch.long)
        for kind, field in PRESENT_FIELDS.items():
            key = LABEL_KEYS[kind]
            if key in data:
                data[field] = torch.tensor([not bool(torch.isnan(data[key]).all())])
        return data


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
        super().__init__(
            [LocalSource(s) for s in opened],
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
        return self.readers[store].torch_dict(structure, level, self.dtype, stress=self.has_stress)


def frame_transforms(
    r_max: float, type_names: Sequence[str], backend: str = NEIGHBORLIST_BACKEND
) -> list[Callable]:
    """Molecules get a bounding cell (nequip needs one before the neighbour list), then edges.

    ``backend`` is nequip's neighbour-list backend: ``matscipy`` (default, fastest measured
    here for small molecules), ``ase`` or ``vesin`` (no mixed periodicity).
    """
    from nequip.data.transforms import NeighborListTransform, NonPeriodicCellTransform

    return [
        NonPeriodicCellTransform(override_cell=True),
        NeighborListTransform(r_max=r_max, type_names=list(type_names), backend=backend),
    ]


class PackedBatch(NamedTuple):
    """A collated batch as one byte buffer and its layout: what a worker sends."""

    buffer: torch.Tensor
    layout: tuple[tuple[str, torch.dtype, tuple[int, ...], int], ...]


def pack_batch(frames: list[AtomicDataDict.Type]) -> PackedBatch:
    """Collate ``frames`` (``AtomicDataDict.batched_from_list``) into one buffer.

    A DataLoader worker hands every tensor of a batch to the main process through its own
    shared-memory segment and file descriptor, about 0.2 ms each here; a batch has ~15 tensors,
    so for small molecules that costs more than reading the batch. One buffer costs one.
    """
    batch = AtomicDataDict.batched_from_list(frames)
    parts, layout, offset = [], [], 0
    for key, tensor in batch.items():
        raw = tensor.detach().contiguous().numpy().reshape(-1).view(np.uint8)
        layout.append((key, tensor.dtype, tuple(tensor.shape), offset))
        parts.append(raw)
        pad = -len(raw) % 8  # every tensor starts 8-byte aligned, so it can be viewed in place
        if pad:
            parts.append(np.zeros(pad, np.uint8))
        offset += len(raw) + pad
    return PackedBatch(torch.from_numpy(np.concatenate(parts)), tuple(layout))


def unpack_batch(packed: PackedBatch) -> AtomicDataDict.Type:
    """The batch dict of :func:`pack_batch`: views into the buffer, no copies."""
    out = {}
    for key, dtype, shape, offset in packed.layout:
        size = math.prod(shape) * dtype.itemsize
        out[key] = packed.buffer[offset : offset + size].view(dtype).view(shape)
    return out


class FidelityDataLoader(torch.utils.data.DataLoader):
    """A DataLoader of nequip batches whose workers send each batch as one packed buffer.

    Same batches as ``DataLoader(..., collate_fn=AtomicDataDict.batched_from_list)``; with
    ``num_workers > 0`` they cross from the workers in one shared-memory segment instead of one
    per tensor (see benchmarks/README.md, "Loader", for what that saves).
    """

    def __init__(self, dataset, batch_sampler, num_workers: int = 0, **kwargs):
        kwargs.setdefault(
            "collate_fn", pack_batch if num_workers > 0 else AtomicDataDict.batched_from_list
        )
        super().__init__(dataset, batch_sampler=batch_sampler, num_workers=num_workers, **kwargs)

    def __iter__(self):
        iterator = super().__iter__()
        if self.collate_fn is not pack_batch:
            return iterator
        return (unpack_batch(b) if isinstance(b, PackedBatch) else b for b in iterator)


class FidelityDataModule(NequIPDataModule):
    """A nequip DataModule over stores: one split, one head order, the fidelity samplers.

    Usable from a ``nequip-train`` YAML by ``_target_: mfdata.loader.FidelityDataModule``.
    ``levels`` (head order) and ``type_names`` are written into the config and read by the model;
    ``split`` names a split saved in every store, with parts ``train_part``/``val_part``/
    ``test_part``. Training batches mix levels as ``mixing`` says, ``batch_size`` structures or
    ``max_atoms`` atoms each; ``epoch_size`` is the number of samples per epoch (all ranks).
    ``reader="zarr"`` reads the Zarr groups instead of LMDB shards (stores may then be fsspec
    URLs, opened with ``storage_options``), with chunk-aligned block shuffling. Loaders are
    :class:`FidelityDataLoader`: with ``num_workers > 0`` workers send packed batches.
    """

    def __init__(
        self,
        seed: int,
        stores: Sequence[str],
        levels: Sequence[str],
        type_names: Sequence[str] | None = None,
        r_max: float = 5.0,
        split: str = "default",
        train_part: str = "train",
        val_part: str = "val",
        test_part: str = "test",
        subset: int | None = None,
        selection: str | None = None,
        labels: Sequence[str] = ("energy", "forces"),
        dtype: str = "float64",
        mixing: dict | LevelMixing | None = None,
        epoch_size: int | None = None,
        batch_size: int | None = 8,
        max_atoms: int | None = None,
        val_batch_size: int = 32,
        num_workers: int = 0,
        reader: Literal["lmdb", "zarr"] = "lmdb",
        storage_options: dict | None = None,
    ):
        stores = [str(s) for s in stores]
        if reader not in ("lmdb", "zarr"):
            raise ValueError(f"reader {reader!r}: expected 'lmdb' or 'zarr'")
        if type_names is None:
            if reader == "zarr":
                from mfdata.zarr_loader import open_source

                type_names = default_type_names([open_source(s, storage_options) for s in stores])
            else:
                type_names = default_type_names([open_store(s) for s in stores])
        self.levels = [resolve_level(level).id for level in levels]
        self.type_names = list(type_names)
        self.reader = reader
        common = {
            "_target_": "mfdata.loader.FidelityDataset",
            "stores": stores,
            "levels": self.levels,
            "type_names": self.type_names,
            "selection": selection,
            "labels": list(labels),
            "dtype": dtype,
        }
        if reader == "zarr":
            common["_target_"] = "mfdata.zarr_loader.ZarrFidelityDataset"
            common["storage_options"] = storage_options
        parts = {"train": (train_part, subset), "val": (val_part, None), "test": (test_part, None)}
        configs = {
            stage: {**common, "split": f"{split}:{part}", "subset": size}
            for stage, (part, size) in parts.items()
        }
        super().__init__(
            seed=seed,
            train_dataset=configs["train"],
            val_dataset=configs["val"],
            test_dataset=configs["test"],
        )
        self.r_max = r_max
        self.mixing = LevelMixing.model_validate(mixing or {})
        self.epoch_size = epoch_size
        self.batch_size, self.max_atoms = batch_size, max_atoms
        self.val_batch_size, self.num_workers = val_batch_size, num_workers
        self._samplers: dict[str, FidelityBatchSampler] = {}
        self._sampler_state: dict[str, dict] = {}

    def _loader(self, stage: str, dataset: FidelitySamples) -> torch.utils.data.DataLoader:
        dataset.transforms = frame_transforms(self.r_max, self.type_names)
        train = stage == "train"
        sampler = FidelityBatchSampler(
            dataset.pools,
            dataset.n_atoms,
            mixing=self.mixing if train else None,
            epoch_size=self.epoch_size if train else None,
            batch_size=(self.batch_size if train else self.val_batch_size)
            if self.max_atoms is None or not train
            else None,
            max_atoms=self.max_atoms if train else None,
            seed=self.seed,
            shuffle=train,
            blocks=getattr(dataset, "sample_block", None),
            num_workers=self.num_workers,
            **self._shard(),
        )
        if stage in self._sampler_state:
            sampler.load_state_dict(self._sampler_state.pop(stage))
        self._samplers[stage] = sampler
        return FidelityDataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _shard(self) -> dict[str, int]:
        """This rank's place under a Lightning trainer (the ranks its DistributedSampler would
        use); without one, the sampler asks torch.distributed."""
        if self.trainer is None:
            return {}
        return {"rank": self.trainer.global_rank, "world_size": self.trainer.world_size}

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        if not hasattr(self, "_train_dataloader"):
            self._train_dataloader = [self._loader("train", d) for d in self.train_dataset]
        return self._train_dataloader[0]

    def val_dataloader(self) -> list[torch.utils.data.DataLoader]:
        if not hasattr(self, "_val_dataloader"):
            self._val_dataloader = [self._loader("val", d) for d in self.val_dataset]
        return self._val_dataloader

    def test_dataloader(self) -> list[torch.utils.data.DataLoader]:
        if not hasattr(self, "_test_dataloader"):
            self._test_dataloader = [self._loader("test", d) for d in self.test_dataset]
        return self._test_dataloader

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["mfkit_samplers"] = {stage: s.state_dict() for stage, s in self._samplers.items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._sampler_state = dict(state_dict.get("mfkit_samplers", {}))
