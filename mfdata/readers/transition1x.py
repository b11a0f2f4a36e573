"""Transition1x (Schreiner et al. 2022): one HDF5 file of reaction paths.

The layout, as the release's own loader (gitlab.com/matschreiner/Transition1x,
``transition1x/dataloader.py``) reads it: split groups (``train``, ``val``, ``test``, and
``data``), then one group per formula, then one per reaction, holding ``atomic_numbers``
(atoms,), ``positions`` (conformers, atoms, 3) in Å, ``wB97x_6-31G(d).energy`` in eV and
``wB97x_6-31G(d).forces`` in eV/Å, with subgroups ``reactant``, ``product`` and
``transition_state`` in the same layout. The splits partition the reactions, so they are read
and ``data`` is read only when there are none. Structures are grouped by formula.
"""

from __future__ import annotations

import h5py
import numpy as np

from mfdata.levels import resolve_level
from mfdata.progress import progress
from mfdata.readers._common import (
    H5_ERRORS,
    ConformerBlocks,
    atomic_numbers,
    h5_dataset,
    h5_groups,
    h5_keys,
    h5_name,
    h5_read,
    h5_real,
    open_h5,
)
from mfdata.records import InvalidDataError, Source

T1X_LEVEL = "wb97x-631gd"
SPLITS = ("train", "val", "test")
ALL_DATA = "data"
ENDPOINTS = ("reactant", "product", "transition_state")
ENERGY, FORCES = "wB97x_6-31G(d).energy", "wB97x_6-31G(d).forces"
UNITS = {"energy": "eV", "forces": "eV/Å"}


def is_transition1x(path: str) -> bool:
    """Every top-level group is a Transition1x split."""
    with open_h5(path) as f:
        names = {h5_name(k) for k in h5_keys(path, f, "top level")}
    return bool(names) and names <= {*SPLITS, ALL_DATA}


def _subgroup(path: str, group: h5py.Group, name: str, where: str) -> h5py.Group | None:
    try:
        obj = group.get(name)
    except H5_ERRORS as exc:
        raise InvalidDataError(f"{path}: {where}/{name}: cannot be opened: {exc}") from exc
    return obj if isinstance(obj, h5py.Group) else None


def _read_block(
    path: str,
    group: h5py.Group,
    where: str,
    z: np.ndarray,
    blocks: ConformerBlocks,
    formula: str,
) -> None:
    xyz, e, frc = (h5_real(path, group, key, where) for key in ("positions", ENERGY, FORCES))
    c = xyz.shape[0] if xyz.ndim else 0
    if xyz.shape != (c, len(z), 3) or e.shape != (c,) or frc.shape != xyz.shape:
        raise InvalidDataError(
            f"{path}: {where}: shapes disagree: {len(z)} atomic numbers, positions {xyz.shape}, "
            f"{ENERGY} {e.shape}, {FORCES} {frc.shape}"
        )
    blocks.add(where, formula, z, xyz, energy=e, forces=frc)


def read_transition1x_h5(path: str, level: str = T1X_LEVEL) -> Source:
    """Every conformer of every reaction path (and its endpoints), in eV and eV/Å."""
    level_id = resolve_level(level).id
    blocks = ConformerBlocks()
    with open_h5(path) as f:
        splits = dict(h5_groups(path, f))
        chosen = [s for s in SPLITS if s in splits] or [s for s in (ALL_DATA,) if s in splits]
        for split in chosen:
            for formula, reactions in progress(h5_groups(path, splits[split]), f"reading {path}"):
                for rxn, group in h5_groups(path, reactions):
                    where = f"{split}/{formula}/{rxn}"
                    z = h5_read(path, h5_dataset(path, group, "atomic_numbers", where), where)
                    if z.ndim != 1:
                        raise InvalidDataError(
                            f"{path}: {where}: atomic_numbers has shape {z.shape}"
                        )
                    z = atomic_numbers(z, path, where)
                    _read_block(path, group, where, z, blocks, formula)
                    for end in ENDPOINTS:
                        sub = _subgroup(path, group, end, where)
                        if sub is not None:
                            _read_block(path, sub, f"{where}/{end}", z, blocks, formula)
    if not blocks.names:
        raise InvalidDataError(f"{path}: no reactions found (splits: {sorted(splits)})")
    return blocks.source(
        path, "transition1x", level_id, UNITS, {"energy": ENERGY, "forces": FORCES}
    )
