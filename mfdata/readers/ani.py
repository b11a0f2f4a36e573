"""The ANI HDF5 release formats.

ANI-1x / ANI-1ccx: one group per formula with ``atomic_numbers`` (atoms,), ``coordinates``
(conformers, atoms, 3) in Å, and ``<level>.<property>`` datasets in Hartree (energies),
Hartree/Å (forces), e·Å (dipoles) and e (charges), as the release's paper (Smith et al., Sci.
Data 7, 134, Table 2) states; NaN marks a label a conformer lacks. Correlation energies
(``mp2_dz.corr_energy``) are added to the HF energy of the same basis (``hf_dz.energy``) to make
a total energy at their own level. Each charge model is its own label: ωB97X/def2-TZVPP's MBIS
charges are its ``charges``, ωB97X/6-31G(d)'s are ``cm5_charges`` and ``hirshfeld_charges``.
Quadrupoles and higher MBIS moments are not stored.

ANI-2x: one group per atom count with ``species`` (conformers, atoms) atomic numbers,
``coordinates``, ``energies`` and ``forces``; the file does not name its level, so the reader takes
it as an argument (the release's ωB97X/6-31G(d) unless the user says otherwise).
"""

from __future__ import annotations

import h5py
import numpy as np
from ase.data import chemical_symbols

from mfdata.levels import UnknownLevelError, resolve_level
from mfdata.progress import progress
from mfdata.readers._common import (
    atomic_numbers,
    h5_dataset,
    h5_groups,
    h5_keys,
    h5_name,
    h5_read,
    open_h5,
    real_array,
)
from mfdata.records import (
    InvalidDataError,
    Label,
    Source,
    Structures,
    conformer_name,
    molecule_structures,
)
from mfdata.schema import LABEL_KINDS
from mfdata.units import conversion_factor

ANI2X_LEVEL = "wb97x-631gd"  # the release's level; the file does not name it
HARTREE = "Hartree"
HARTREE_PER_ANGSTROM = "Hartree/Å"
# The label kind each stored property becomes, and the unit the release gives it in.
PROPERTY_KINDS = {
    "energy": "energy",
    "corr_energy": "energy",
    "forces": "forces",
    "dipole": "dipole",
    "mbis_charges": "charges",
    "cm5_charges": "cm5_charges",
    "hirshfeld_charges": "hirshfeld_charges",
}
SOURCE_UNITS = {
    "energy": HARTREE,
    "forces": HARTREE_PER_ANGSTROM,
    "dipole": "e*Å",
    "charges": "e",
    "cm5_charges": "e",
    "hirshfeld_charges": "e",
}

# Correlation-energy levels and the HF energy of the same basis they are added to.
_HF_FOR_BASIS = {"dz": "hf_dz", "tz": "hf_tz", "qz": "hf_qz"}


def _ani1x_labels(
    path: str, group: h5py.Group, where: str, n_conformers: int, n_atoms: int
) -> dict[tuple[str, str], np.ndarray]:
    """(level id, kind) -> raw values in source units, for energies and forces of one group.

    Shapes and types are checked here, per group, where the error can name the group.
    """
    out: dict[tuple[str, str], np.ndarray] = {}
    by_name = {h5_name(key): key for key in h5_keys(path, group, where)}
    for name, key in by_name.items():
        alias, _, prop = name.partition(".")
        if prop not in PROPERTY_KINDS:
            continue
        try:
            level_id = resolve_level(alias).id
        except UnknownLevelError as exc:
            raise InvalidDataError(f"{path}: {where}: dataset {name}: {exc}") from exc
        kind = PROPERTY_KINDS[prop]
        values = _label_values(path, group, key, where, kind, n_conformers, n_atoms)
        if prop == "corr_energy":
            hf = _HF_FOR_BASIS.get(alias.rpartition("_")[2])
            if hf is None or f"{hf}.energy" not in by_name:
                raise InvalidDataError(
                    f"{path}: {where}: {name} is a correlation energy and needs the HF energy of "
                    f"its basis ({hf or 'hf_dz, hf_tz or hf_qz'}.energy) to make a total energy"
                )
            hf_key = by_name[f"{hf}.energy"]
            values = values + _label_values(path, group, hf_key, where, kind, n_conformers, n_atoms)
        if (level_id, kind) in out:
            raise InvalidDataError(f"{path}: {where}: two datasets give {level_id} {kind}")
        out[(level_id, kind)] = values
    return out


def _label_values(
    path: str,
    group: h5py.Group,
    key: str | bytes,
    where: str,
    kind: str,
    n_conformers: int,
    n_atoms: int,
) -> np.ndarray:
    values = h5_read(path, h5_dataset(path, group, key, where), where)
    values = real_array(values, path, f"{where}: {h5_name(key)}")
    label = LABEL_KINDS[kind]
    expected = (n_conformers, *((n_atoms,) if label.per == "atom" else ()), *label.shape)
    if values.shape != expected:
        raise InvalidDataError(
            f"{path}: {where}: {h5_name(key)} has shape {values.shape}, expected {expected} "
            f"({n_conformers} conformers of {n_atoms} atoms)"
        )
    return values


def ignored_ani1x_keys(path: str) -> list[str]:
    """Per-conformer properties the ANI-1x reader does not store (charges, multipoles...)."""
    with open_h5(path) as f:
        names = {
            h5_name(n) for name, g in h5_groups(path, f) for n in h5_keys(path, g, f"group {name}")
        }
    used = {"atomic_numbers", "coordinates"}
    return sorted(n for n in names if n not in used and n.partition(".")[2] not in PROPERTY_KINDS)


def _coordinates(path: str, group: h5py.Group, where: str, n_atoms: int) -> np.ndarray:
    xyz = h5_read(path, h5_dataset(path, group, "coordinates", where), where)
    xyz = real_array(xyz, path, f"{where}: coordinates")
    if xyz.ndim != 3 or xyz.shape[1:] != (n_atoms, 3):
        raise InvalidDataError(
            f"{path}: {where}: coordinates have shape {xyz.shape}, but there are "
            f"{n_atoms} atomic numbers (expected (conformers, {n_atoms}, 3))"
        )
    return xyz


def read_ani_h5(path: str) -> Source:
    """ANI-1x / ANI-1ccx release HDF5: every level per conformer, NaN meaning absent."""
    numbers, positions, n_atoms, group_index, names = [], [], [], [], []
    group_labels: list[dict[tuple[str, str], np.ndarray]] = []
    with open_h5(path) as f:
        groups = progress(h5_groups(path, f), f"reading {path}", " groups")
        for g, (name, group) in enumerate(groups):
            where = f"group {name}"
            z = h5_read(path, h5_dataset(path, group, "atomic_numbers", where), where)
            if z.ndim != 1:
                raise InvalidDataError(f"{path}: {where}: atomic_numbers has shape {z.shape}")
            z = atomic_numbers(z, path, where)
            xyz = _coordinates(path, group, where, len(z))
            c = xyz.shape[0]
            labels = _ani1x_labels(path, group, where, c, len(z))
            numbers.append(np.tile(z, c))
            positions.append(xyz.reshape(-1, 3))
            n_atoms.append(np.full(c, len(z)))
            group_index.append(np.full(c, g))
            names.append(name)
            group_labels.append(labels)
    if not names:
        raise InvalidDataError(f"{path}: no structures found")
    raw: dict[tuple[str, str], list[np.ndarray]] = {}
    for key in sorted({k for labels in group_labels for k in labels}):
        per_atom = LABEL_KINDS[key[1]].per == "atom"
        shape = LABEL_KINDS[key[1]].shape
        raw[key] = [
            labels[key].reshape(-1, *shape)
            if key in labels and per_atom
            else labels.get(key, np.full((len(z_all) if per_atom else len(n), *shape), np.nan))
            for labels, z_all, n in zip(group_labels, numbers, n_atoms, strict=True)
        ]
    structures = molecule_structures(
        np.concatenate(numbers),
        np.concatenate(positions),
        np.concatenate(n_atoms),
        group=np.concatenate(group_index),
        group_names=names,
    )
    _attach_labels(structures, raw)
    start = np.cumsum([0, *(len(n) for n in n_atoms)])
    return Source(
        path=path,
        reader="ani1x",
        structures=structures,
        source_units={k: SOURCE_UNITS[k[1]] for k in structures.labels},
        describe=lambda i: conformer_name(names, start, i),
    )


def _attach_labels(s: Structures, raw: dict[tuple[str, str], list[np.ndarray]]) -> None:
    """Convert the release's units to canonical ones; an all-NaN label is absent.

    A label no structure has is left out rather than stored with a count of zero.
    """
    for key, lists in raw.items():
        kind = LABEL_KINDS[key[1]]
        values = np.concatenate(lists)  # a fresh array: scaled in place below
        if kind.per == "structure":  # energies and dipoles: float64, as stores keep them
            values = values.astype(np.float64, copy=False)
        values *= conversion_factor(SOURCE_UNITS[kind.name], kind.dimension)
        missing = np.isnan(values).reshape(len(values), -1).all(axis=1)
        if kind.per == "atom":
            present = np.logical_or.reduceat(~missing, s.atom_start[:-1])
        else:
            present = ~missing
        if present.any():
            s.labels[key] = Label(values, present)


def read_ani2x_h5(path: str, level: str = ANI2X_LEVEL) -> Source:
    """ANI-2x release HDF5: ``species``, ``coordinates``, ``energies``, ``forces`` by atom count."""
    level_id = resolve_level(level).id
    numbers, positions, n_atoms, energies, forces, names = [], [], [], [], [], []
    with open_h5(path) as f:
        for name, group in h5_groups(path, f):
            where = f"group {name}"

            def read(key: str, group: h5py.Group = group, where: str = where) -> np.ndarray:
                return h5_read(path, h5_dataset(path, group, key, where), where)

            species = read("species")
            if species.ndim != 2:
                raise InvalidDataError(
                    f"{path}: {where}: species has shape {species.shape}, expected "
                    "(conformers, atoms)"
                )
            c, n = species.shape
            species = atomic_numbers(species, path, where)
            xyz = real_array(read("coordinates"), path, f"{where}: coordinates")
            e = real_array(read("energies"), path, f"{where}: energies")
            frc = None
            if "forces" in h5_keys(path, group, where):
                frc = real_array(read("forces"), path, f"{where}: forces")
            if (
                xyz.shape != (c, n, 3)
                or e.shape != (c,)
                or (frc is not None and frc.shape != xyz.shape)
            ):
                raise InvalidDataError(
                    f"{path}: {where}: shapes disagree: species {species.shape}, coordinates "
                    f"{xyz.shape}, energies {e.shape}, forces {None if frc is None else frc.shape}"
                )
            numbers.append(species.reshape(-1))
            positions.append(xyz.reshape(-1, 3))
            n_atoms.append(np.full(c, n))
            energies.append(e)
            forces.append(np.full((c * n, 3), np.nan) if frc is None else frc.reshape(-1, 3))
            names.append(name)
    if not names:
        raise InvalidDataError(f"{path}: no structures found")
    numbers_all = np.concatenate(numbers)
    n_atoms_all = np.concatenate(n_atoms)
    formula_names, group = _formula_groups(numbers_all, n_atoms_all)
    structures = molecule_structures(
        numbers_all, np.concatenate(positions), n_atoms_all, group=group, group_names=formula_names
    )
    _attach_labels(structures, {(level_id, "energy"): energies, (level_id, "forces"): forces})
    start = np.cumsum([0, *(len(n) for n in n_atoms)])
    return Source(
        path=path,
        reader="ani2x",
        structures=structures,
        source_units={
            key: HARTREE if key[1] == "energy" else HARTREE_PER_ANGSTROM
            for key in structures.labels
        },
        describe=lambda i: conformer_name(names, start, i),
    )


def _formula_groups(numbers: np.ndarray, n_atoms: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Group structures by composition (Hill-ordered formula), vectorised.

    Counts only the elements present (a (structures, elements) table, not (structures, 119)),
    so that the 9.6M conformers of the ANI-2x release group in seconds and little memory.
    """
    n = len(n_atoms)
    structure = np.repeat(np.arange(n), n_atoms)
    elements, column = np.unique(numbers, return_inverse=True)
    k = len(elements)
    counts = np.bincount(structure * k + column.reshape(-1), minlength=n * k).reshape(n, k)
    order = np.lexsort(counts.T[::-1])  # rows in lexicographic order, first element first
    ordered = counts[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    group = np.empty(n, dtype=np.int64)
    group[order] = np.cumsum(first) - 1
    names = []
    for row in ordered[first]:
        full = np.zeros(119, dtype=np.int64)
        full[elements] = row
        names.append(_hill_formula(full))
    return names, group


def _hill_formula(counts: np.ndarray) -> str:
    present = {chemical_symbols[z]: int(n) for z, n in enumerate(counts) if n}
    order = [s for s in ("C", "H") if s in present and "C" in present]
    order += sorted(s for s in present if s not in order)
    return "".join(f"{s}{present[s] if present[s] > 1 else ''}" for s in order)
