"""Older import path of the Zarr dataset, now :mod:`mfdata.loading.zarr_dataset`.

Kept because saved nequip configs and checkpoints name ``mfdata.zarr_loader.ZarrFidelityDataset``
in ``_target_``; new code imports from ``mfdata.loading``.
"""

from mfdata.loading.zarr_dataset import ZarrFidelityDataset

__all__ = ["ZarrFidelityDataset"]
