"""nequip's DataModule over stores, and the DataLoader that carries its batches.

Guarantees: one split, one head order and one list of type names for the train, val and test
datasets, written into the datasets' configs (what the model reads); training batches mix levels
as the sampler is told, each rank gets its own batches with equal batch counts, and the
samplers' state is saved and restored with the DataModule's. With workers, a batch crosses from a
worker in one shared-memory buffer (:mod:`mfdata.loading.batches`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from nequip.data import AtomicDataDict
from nequip.data.datamodule import NequIPDataModule

from mfdata.errors import UsageError
from mfdata.levels import resolve_level
from mfdata.loading.batches import PackedBatch, pack_batch, unpack_batch
from mfdata.loading.lmdb_dataset import FidelityDataset
from mfdata.loading.samples import FidelitySamples, default_type_names, frame_transforms
from mfdata.loading.sources import open_source
from mfdata.loading.zarr_dataset import ZarrFidelityDataset
from mfdata.registry import open_store
from mfdata.sampler import FidelityBatchSampler, LevelMixing
from mfdata.store.remote import DEFAULT_CACHE_BYTES


def _target(cls: type) -> str:
    """The ``_target_`` that names ``cls`` in a nequip config."""
    return f"{cls.__module__}.{cls.__qualname__}"


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

    Usable from a ``nequip-train`` YAML by
    ``_target_: mfdata.loading.datamodule.FidelityDataModule`` (or its older name
    ``mfdata.loader.FidelityDataModule``).
    ``levels`` (head order) and ``type_names`` are written into the config and read by the model;
    ``split`` names a split saved in every store, with parts ``train_part``/``val_part``/
    ``test_part``. Training batches mix levels as ``mixing`` says, ``batch_size`` structures or
    ``max_atoms`` atoms each; ``epoch_size`` is the number of samples per epoch (all ranks).
    ``reader="zarr"`` reads the Zarr groups instead of LMDB shards (stores may then be fsspec
    URLs, opened with ``storage_options``), with chunk-aligned block shuffling; a URL's chunks
    are cached on local disk, at most ``chunk_cache_bytes`` per process and store (see
    :mod:`mfdata.store.remote`). Loaders are :class:`FidelityDataLoader`: with
    ``num_workers > 0`` workers send packed batches.
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
        chunk_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        stores = [str(s) for s in stores]
        if reader not in ("lmdb", "zarr"):
            raise UsageError(f"reader {reader!r}: expected 'lmdb' or 'zarr'")
        # opened first: a store's manifest defines its levels, registered here or not
        if reader == "zarr":
            opened = [open_source(s, storage_options, chunk_cache_bytes) for s in stores]
        else:
            opened = [open_store(s) for s in stores]
        if type_names is None:
            type_names = default_type_names(opened)
        self.levels = [resolve_level(level).id for level in levels]
        self.type_names = list(type_names)
        self.reader = reader
        common = {
            "_target_": _target(FidelityDataset),
            "stores": stores,
            "levels": self.levels,
            "type_names": self.type_names,
            "selection": selection,
            "labels": list(labels),
            "dtype": dtype,
        }
        if reader == "zarr":
            common["_target_"] = _target(ZarrFidelityDataset)
            common["storage_options"] = storage_options
            common["chunk_cache_bytes"] = chunk_cache_bytes
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
