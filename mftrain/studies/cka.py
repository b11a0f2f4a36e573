"""Comparing backbones: their node features, and linear CKA between two representations.

- :func:`linear_cka` is the linear centred kernel alignment of two representations of the same
  samples (Kornblith et al. 2019): 1 for representations equal up to an orthogonal transform and
  an isotropic scaling, near 0 for unrelated ones.
- :func:`backbone_features` gives a model's representation: the node features after its last
  interaction layer, one row per atom of a store, in store order, so that the rows of two
  models line up.

Both raise :class:`mfdata.errors.UsageError` for inputs they cannot compare.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from nequip.data import AtomicDataDict

from mfdata.errors import UsageError
from mfdata.loading.lmdb_dataset import FidelityDataset
from mfdata.loading.samples import frame_transforms
from mftrain.checkpoint import read_checkpoint
from mftrain.evaluate import load_model


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same ``n`` samples, ``(n, p)`` and ``(n, q)``:
    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise UsageError(f"CKA needs two (n, features) arrays of one n: {x.shape}, {y.shape}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if norm == 0:
        raise UsageError("CKA of a constant representation is undefined")
    return float(cross / norm)


def backbone_features(ckpt: str | Path, store: str | Path, level: str | None = None) -> np.ndarray:
    """Node features after the last interaction layer of checkpoint ``ckpt``'s backbone, for every
    atom of every structure of ``store`` in store order (frames given to head ``level``, default
    the first head; it matters only where the level is a backbone input). Every structure must
    have a label at ``level``, so that rows of two models line up."""
    checkpoint = read_checkpoint(ckpt)
    level = checkpoint.levels[0] if level is None else checkpoint.head(level)
    model = load_model(ckpt)
    layers = {}
    for name, module in model.named_modules():
        found = re.search(r"layer(\d+)_convnet$", name)
        if found:
            layers[int(found.group(1))] = module
    if not layers:
        raise UsageError(f"{ckpt}: no interaction layers (layerN_convnet) in the model")
    dataset = FidelityDataset(
        [str(store)],
        checkpoint.levels,
        type_names=checkpoint.type_names,
        dtype=checkpoint.model_dtype,
        transforms=frame_transforms(checkpoint.r_max, checkpoint.type_names),
    )
    chosen = np.flatnonzero(dataset.sample_head == checkpoint.levels.index(level))
    n_structures = dataset.store_n_atoms[0].shape[0]
    if len(chosen) != n_structures:
        raise UsageError(f"{store}: {n_structures - len(chosen)} structures have no {level} label")
    captured: list[torch.Tensor] = []
    hook = layers[max(layers)].register_forward_hook(
        lambda module, inputs, output: captured.append(
            output[AtomicDataDict.NODE_FEATURES_KEY].detach().double()
        )
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, chosen.tolist()),
        batch_size=32,
        collate_fn=AtomicDataDict.batched_from_list,
    )
    try:
        for batch in loader:
            model(batch)
    finally:
        hook.remove()
    return torch.cat(captured).numpy()
