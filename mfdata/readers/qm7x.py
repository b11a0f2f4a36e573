"""QM7-X (Hoja et al. 2021): HDF5 files with one group per molecule and one subgroup per
conformer.

Each conformer holds ``atNUM`` (atoms,), ``atXYZ`` (atoms, 3) in Å, ``ePBE0+MBD`` (one value) in eV
and ``totFOR`` (atoms, 3) in eV/Å at PBE0+MBD, among its 42 properties; the layout and the key
names are those the QM7-X paper (Scientific Data 8, 43, Table 2) lists and openqdc's and mlff's
QM7-X readers use. The files state neither level nor units, so both are the release's. Every
other numeric property is named at conversion and not stored.
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

QM7X_LEVEL = "pbe0-mbd"
NUMBERS, POSITIONS = "atNUM", "atXYZ"
KEYS = {"energy": "ePBE0+MBD", "forces": "totFOR"}
UNITS = {"energy": "eV", "forces": "eV/Å"}


def is_qm7x(path: str) -> bool:
    """The first conformer of the first molecule has QM7-X's atomic numbers and energy."""
    with open_h5(path) as f:
        molecules = h5_keys(path, f, "top level")
        try:
            first = f.get(molecules[0]) if molecules else None
            if not isinstance(first, h5py.Group):
                return False
            conformers = h5_keys(path, first, h5_name(molecules[0]))
            conformer = first.get(conformers[0]) if conformers else None
            members = set(conformer) if isinstance(conformer, h5py.Group) else set()
        except H5_ERRORS:
            return False
        return {NUMBERS, KEYS["energy"]} <= members


def _conformer(
    path: str, group: h5py.Group, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    z = h5_read(path, h5_dataset(path, group, NUMBERS, where), where)
    if z.ndim != 1:
        raise InvalidDataError(f"{path}: {where}: {NUMBERS} has shape {z.shape}, expected (atoms,)")
    z = atomic_numbers(z, path, where)
    xyz, e, frc = (
        h5_real(path, group, key, where) for key in (POSITIONS, KEYS["energy"], KEYS["forces"])
    )
    if xyz.shape != (len(z), 3) or e.size != 1 or frc.shape != xyz.shape:
        raise InvalidDataError(
            f"{path}: {where}: shapes disagree: {len(z)} atomic numbers, {POSITIONS} {xyz.shape}, "
            f"{KEYS['energy']} {e.shape} (one value), {KEYS['forces']} {frc.shape}"
        )
    return z, xyz, e.reshape(1), frc


def read_qm7x_h5(path: str, level: str = QM7X_LEVEL) -> Source:
    """PBE0+MBD energies and forces of every conformer, grouped by molecule."""
    level_id = resolve_level(level).id
    blocks = ConformerBlocks()
    unread: set[str] = set()
    with open_h5(path) as f:
        for molecule, conformers in progress(h5_groups(path, f), f"reading {path}", " molecules"):
            for name, group in h5_groups(path, conformers):
                where = f"{molecule}/{name}"
                z, xyz, e, frc = _conformer(path, group, where)
                blocks.add(where, molecule, z, xyz[None], energy=e, forces=frc[None])
                unread.update(h5_name(k) for k in h5_keys(path, group, where))
    if not blocks.names:
        raise InvalidDataError(f"{path}: no conformers found")
    source = blocks.source(path, "qm7x", level_id, UNITS, KEYS)
    unread -= {NUMBERS, POSITIONS, *KEYS.values()}
    source.unread_keys = sorted(unread)
    if unread:
        source.notes.append(f"{path}: properties not stored: {', '.join(source.unread_keys)}")
    return source
