"""The ANI HDF5 release formats.

ANI-1x / ANI-1ccx: one group per formula with ``atomic_numbers`` (atoms,), ``coordinates``
(conformers, atoms, 3) in Å, and ``<level>.<property>`` datasets in Hartree (energies) and
Hartree/Å (forces); NaN marks a label a conformer lacks. Correlation energies
(``mp2_dz.corr_energy``) are added to the HF energy of the same basis (``hf_dz.energy``) to make
a total energy at their own level.

ANI-2x: one group per atom count with ``species`` (conformers, atoms) atomic numbers,
``coordinates``, ``energies`` and ``forces``; the file does not name its level, so the reader takes
it as an argument (the release's ωB97X/6-31G(d) unless the user says otherwise).
"""

from __future__ import annotations

import h5py
import numpy as np
from ase.data import chemical_symbols

from mfdata.levels import resolve_level
from mfdata.progress import progress
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

HARTREE = "Hartree"
HARTREE_PER_ANGSTROM = "Hartree/Å"

# Correlation-energy levels and the HF energy of the same basis they are added to.
_HF_FOR_BASIS = {"dz": "hf_dz", "tz": "hf_tz", "qz": "hf_qz"}


def _h5_error(path: str, where: str, exc: Exception) -> InvalidDataError:
    return InvalidDataError(f"{path}: {where}: cannot be read: {type(exc).__name__}: {exc}")


def _ani1x_labels(group: h5py.Group) -> dict[tuple[str, str], np.ndarray]:
    """(level id, kind) -> raw values in source units, for energies and forces of one group."""
    out: dict[tuple[str, str], np.ndarray] = {}
    for name in group:
        alias, _, prop = name.partition(".")
        if prop == "energy":
            out[(resolve_level(alias).id, "energy")] = group[name][()]
        elif prop == "forces":
            out[(resolve_level(alias).id, "forces")] = group[name][()]
        elif prop == "corr_energy":
            hf = _HF_FOR_BASIS[alias.rsplit("_", 1)[1]] + ".energy"
            if hf not in group:
                raise KeyError(f"{name} needs {hf} to make a total energy, and it is missing")
            out[(resolve_level(alias).id, "energy")] = group[hf][()] + group[name][()]
    return out


def ignored_ani1x_keys(path: str) -> list[str]:
    """Per-conformer properties the ANI-1x reader does not store (charges, multipoles...)."""
    with h5py.File(path, "r") as f:
        names = {n for g in f.values() for n in g}
    used = {"atomic_numbers", "coordinates"}
    return sorted(
        n
        for n in names
        if n not in used and n.partition(".")[2] not in ("energy", "forces", "corr_energy")
    )


def read_ani_h5(path: str) -> Source:
    """ANI-1x / ANI-1ccx release HDF5: every level per conformer, NaN meaning absent."""
    numbers, positions, n_atoms, group_index, names = [], [], [], [], []
    group_labels: list[dict[tuple[str, str], np.ndarray]] = []
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _h5_error(path, "file", exc) from exc
    with f:
        groups = progress(f.items(), f"reading {path}", " groups")
        for g, (name, group) in enumerate(groups):
            try:
                z = group["atomic_numbers"][()]
                xyz = group["coordinates"][()]
                labels = _ani1x_labels(group)
            except (KeyError, OSError, ValueError) as exc:
                raise _h5_error(path, f"group {name}", exc) from exc
            if xyz.ndim != 3 or xyz.shape[1:] != (len(z), 3):
                raise InvalidDataError(
                    f"{path}: group {name}: coordinates have shape {xyz.shape}, but there are "
                    f"{len(z)} atomic numbers"
                )
            c = xyz.shape[0]
            for key, values in labels.items():
                expected = (c, len(z), 3) if LABEL_KINDS[key[1]].per == "atom" else (c,)
                if values.shape != expected:
                    raise InvalidDataError(
                        f"{path}: group {name}: {key[0]} {key[1]} has shape {values.shape}, "
                        f"expected {expected}"
                    )
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
        raw[key] = [
            labels[key].reshape(-1, 3)
            if key in labels and per_atom
            else labels.get(key, np.full((len(z_all), 3) if per_atom else len(n), np.nan))
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
        source_units={k: HARTREE if k[1] == "energy" else HARTREE_PER_ANGSTROM for k in raw},
        describe=lambda i: conformer_name(names, start, i),
    )


def _attach_labels(s: Structures, raw: dict[tuple[str, str], list[np.ndarray]]) -> None:
    """Convert Hartree and Hartree/Å to eV and eV/Å; an all-NaN label is absent."""
    for key, lists in raw.items():
        kind = LABEL_KINDS[key[1]]
        values = np.concatenate(lists)
        factor = conversion_factor(
            HARTREE if kind.name == "energy" else HARTREE_PER_ANGSTROM, kind.dimension
        )
        values = values.astype(np.float64 if kind.name == "energy" else values.dtype) * factor
        if kind.per == "atom":
            present = np.logical_or.reduceat(~np.isnan(values).all(axis=1), s.atom_start[:-1])
        else:
            present = ~np.isnan(values)
        s.labels[key] = Label(values, present)


def read_ani2x_h5(path: str, level: str = "wb97x-631gd") -> Source:
    """ANI-2x release HDF5: ``species``, ``coordinates``, ``energies``, ``forces`` by atom count."""
    level_id = resolve_level(level).id
    numbers, positions, n_atoms, energies, forces = [], [], [], [], []
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _h5_error(path, "file", exc) from exc
    with f:
        for name, group in f.items():
            try:
                species = group["species"][()]
                xyz = group["coordinates"][()]
                e = group["energies"][()]
                frc = group["forces"][()] if "forces" in group else None
            except (KeyError, OSError, ValueError) as exc:
                raise _h5_error(path, f"group {name}", exc) from exc
            c, n = species.shape
            bad_forces = frc is not None and frc.shape != (c, n, 3)
            if xyz.shape != (c, n, 3) or e.shape != (c,) or bad_forces:
                raise InvalidDataError(
                    f"{path}: group {name}: shapes disagree: species {species.shape}, coordinates "
                    f"{xyz.shape}, energies {e.shape}, forces {None if frc is None else frc.shape}"
                )
            numbers.append(species.reshape(-1))
            positions.append(xyz.reshape(-1, 3))
            n_atoms.append(np.full(c, n))
            energies.append(e)
            forces.append(np.full((c * n, 3), np.nan) if frc is None else frc.reshape(-1, 3))
    numbers_all = np.concatenate(numbers)
    n_atoms_all = np.concatenate(n_atoms)
    formula_names, group = _formula_groups(numbers_all, n_atoms_all)
    structures = molecule_structures(
        numbers_all, np.concatenate(positions), n_atoms_all, group=group, group_names=formula_names
    )
    _attach_labels(structures, {(level_id, "energy"): energies, (level_id, "forces"): forces})
    return Source(
        path=path,
        reader="ani2x",
        structures=structures,
        source_units={(level_id, "energy"): HARTREE, (level_id, "forces"): HARTREE_PER_ANGSTROM},
    )


def _formula_groups(numbers: np.ndarray, n_atoms: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Group structures by composition (Hill-ordered formula), vectorised."""
    structure = np.repeat(np.arange(len(n_atoms)), n_atoms)
    counts = np.zeros((len(n_atoms), 119), dtype=np.int32)
    np.add.at(counts, (structure, numbers.astype(np.int64)), 1)
    unique, group = np.unique(counts, axis=0, return_inverse=True)
    return [_hill_formula(row) for row in unique], group.reshape(-1)


def _hill_formula(counts: np.ndarray) -> str:
    present = {chemical_symbols[z]: int(n) for z, n in enumerate(counts) if n}
    order = [s for s in ("C", "H") if s in present and "C" in present]
    order += sorted(s for s in present if s not in order)
    return "".join(f"{s}{present[s] if present[s] > 1 else ''}" for s in order)
