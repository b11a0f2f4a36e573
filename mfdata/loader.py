"""Older import path of the LMDB dataset and the DataModule, now in :mod:`mfdata.loading`.

Kept because saved nequip configs and checkpoints name ``mfdata.loader.FidelityDataModule`` and
``mfdata.loader.FidelityDataset`` in ``_target_``; new code imports from ``mfdata.loading``.
"""

from mfdata.loading.datamodule import FidelityDataModule
from mfdata.loading.lmdb_dataset import FidelityDataset

__all__ = ["FidelityDataModule", "FidelityDataset"]
