"""QM7-X (Hoja et al. 2021): HDF5 files with one group per molecule and one subgroup per
conformer.

Each conformer holds ``atNUM`` (atoms,), ``atXYZ`` (atoms, 3) in Å, ``ePBE0+MBD`` (one value) in eV
and ``totFOR`` (atoms, 3) in eV/Å at PBE0+MBD, and, where the file has them, ``vDIP`` (3,), the
dipole in e·Å, and ``hCHG`` (atoms,), the Hirshfeld charges in e, among its 42 properties. The
layout and key names are those the QM7-X paper (Scientific Data 8, 43, Table 2) lists and openqdc's
and mlff's QM7-X readers use; the units of vDIP and hCHG are those the property list of the
release's example script states (zenodo.org/record/4288677). The files state neither level nor
units, so both are the release's. Every other numeric property is named at conversion and not
stored.
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
from mfdata.schema import LABEL_KINDS

QM7X_LEVEL = "pbe0-mbd"
NUMBERS, POSITIONS = "atNUM", "atXYZ"
KEYS = {
    "energy": "ePBE0+MBD",
    "forces": "totFOR",
    "dipole": "vDIP",
    "hirshfeld_charges": "hCHG",
}
UNITS = {"energy": "eV", "forces": "eV/Å", "dipole": "e*Å", "hirshfeld_charges": "e"}
REQUIRED = ("energy", "forces")
OPTIONAL = ("dipole", "hirshfeld_charges")  # stored when the first conformer has them


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
    path: str, group: h5py.Group, where: str, kinds: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Atomic numbers, positions and the labels ``kinds`` of one conformer, shapes checked."""
    z = h5_read(path, h5_dataset(path, group, NUMBERS, where), where)
    if z.ndim != 1:
        raise InvalidDataError(f"{path}: {where}: {NUMBERS} has shape {z.shape}, expected (atoms,)")
    z = atomic_numbers(z, path, where)
    xyz = h5_real(path, group, POSITIONS, where)
    if xyz.shape != (len(z), 3):
        raise InvalidDataError(
            f"{path}: {where}: {POSITIONS} has shape {xyz.shape}, expected ({len(z)}, 3) for "
            f"{len(z)} atomic numbers"
        )
    labels = {}
    for kind in kinds:
        values = h5_real(path, group, KEYS[kind], where)
        label = LABEL_KINDS[kind]  # a scalar per structure is one value, shape (1,)
        expected = (len(z), *label.shape) if label.per == "atom" else label.shape or (1,)
        if values.shape != expected:
            raise InvalidDataError(
                f"{path}: {where}: {KEYS[kind]} has shape {values.shape}, expected {expected} "
                f"for {len(z)} atoms"
            )
        labels[kind] = values[None]
    return z, xyz, labels


def read_qm7x_h5(path: str, level: str = QM7X_LEVEL) -> Source:
    """PBE0+MBD energies, forces, dipoles and Hirshfeld charges of every conformer, grouped by
    molecule."""
    level_id = resolve_level(level).id
    blocks = ConformerBlocks()
    unread: set[str] = set()
    optional: tuple[str, ...] | None = None  # every conformer has the first one's
    with open_h5(path) as f:
        for molecule, conformers in progress(h5_groups(path, f), f"reading {path}", " molecules"):
            for name, group in h5_groups(path, conformers):
                where = f"{molecule}/{name}"
                keys = {h5_name(k) for k in h5_keys(path, group, where)}
                has = tuple(kind for kind in OPTIONAL if KEYS[kind] in keys)
                if optional is None:
                    optional = has
                elif has != optional:
                    raise InvalidDataError(
                        f"{path}: {where}: has {_names(has)} but the first conformer has "
                        f"{_names(optional)}; every conformer needs the same properties"
                    )
                z, xyz, labels = _conformer(path, group, where, (*REQUIRED, *has))
                blocks.add(where, molecule, z, xyz[None], **labels)
                unread.update(keys)
    if not blocks.names:
        raise InvalidDataError(f"{path}: no conformers found")
    source = blocks.source(path, "qm7x", level_id, UNITS, KEYS)
    unread -= {NUMBERS, POSITIONS, *KEYS.values()}  # a key the file lacks is not in unread
    source.unread_keys = sorted(unread)
    if unread:
        source.notes.append(f"{path}: properties not stored: {', '.join(source.unread_keys)}")
    return source


def _names(kinds: tuple[str, ...]) -> str:
    return (
        ", ".join(KEYS[kind] for kind in kinds)
        or f"neither {' nor '.join(KEYS[k] for k in OPTIONAL)}"
    )
