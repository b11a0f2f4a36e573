"""SPICE HDF5: one group per molecule, units in each dataset's ``units`` attribute.

``conformations`` (Bohr), ``dft_total_energy`` (Hartree) and ``dft_total_gradient``
(Hartree/Bohr, minus the forces) at ωB97M-D3(BJ)/def2-TZVPPD; the total charge is the sum of the
formal charges in the molecule's SMILES. The SCF dipole (``scf_dipole``) and MBIS charges
(``mbis_charges``) are stored as the level's dipole and charges where a molecule has them, in the
units their attributes state; higher MBIS moments, bond indices and formation energies are not.
"""

from __future__ import annotations

import re

import h5py
import numpy as np

from mfdata.levels import resolve_level
from mfdata.progress import progress
from mfdata.readers._common import (
    KeyMapping,
    atomic_numbers,
    h5_attr,
    h5_dataset,
    h5_groups,
    h5_read,
    open_h5,
    real_array,
)
from mfdata.records import InvalidDataError, Label, Source, conformer_name, molecule_structures
from mfdata.schema import LABEL_KINDS
from mfdata.units import UnitError, conversion_factor

SPICE_LEVEL = "wb97md3bj-def2tzvppd"
# Optional datasets stored as labels, by the label kind they become.
OPTIONAL = {"dipole": "scf_dipole", "charges": "mbis_charges"}
_BRACKET_ATOM = re.compile(r"\[([^\]]+)\]")
_CHARGE = re.compile(r"([+-]+)(\d*)(?::\d+)?$")  # charge, then an optional atom-map number


def smiles_charge(smiles: str) -> int:
    """Sum of the formal charges of the bracket atoms of a SMILES (``[NH3+]``, ``[O-:4]``)."""
    total = 0
    for atom in _BRACKET_ATOM.findall(smiles):
        match = _CHARGE.search(atom)
        if match:
            signs, digits = match.groups()
            sign = 1 if signs[0] == "+" else -1
            total += sign * (int(digits) if digits else len(signs))
    return total


def _unit(path: str, where: str, dataset: h5py.Dataset) -> str:
    unit = h5_attr(path, dataset, "units", where)
    if unit is None:
        raise InvalidDataError(f"{path}: {where}: {dataset.name} has no 'units' attribute")
    if isinstance(unit, np.ndarray) and unit.size == 1:
        unit = unit.reshape(-1)[0]
    return unit.decode("utf-8", "replace") if isinstance(unit, bytes) else str(unit)


def _smiles(path: str, where: str, group: h5py.Group) -> str:
    """The molecule's SMILES: a scalar or a one-element dataset of text."""
    value = h5_read(path, h5_dataset(path, group, "smiles", where), where)
    if value.size != 1:
        raise InvalidDataError(f"{path}: {where}: smiles has shape {value.shape}, expected (1,)")
    value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise InvalidDataError(f"{path}: {where}: smiles is {value!r}, not text")
    return value


def _optional_labels(
    path: str, group: h5py.Group, where: str, c: int, n_atoms: int, level_id: str
) -> dict[str, tuple[np.ndarray, str]]:
    """The optional labels a molecule has: kind -> (values in canonical units, source unit)."""
    out = {}
    for kind, name in OPTIONAL.items():
        if name not in group:
            continue
        dataset = h5_dataset(path, group, name, where)
        unit = _unit(path, where, dataset)
        values = real_array(h5_read(path, dataset, where), path, f"{where}: {name}")
        label = LABEL_KINDS[kind]
        shape = (c, *((n_atoms,) if label.per == "atom" else ()), *label.shape)
        if values.size != int(np.prod(shape)) or values.shape[:1] != (c,):
            raise InvalidDataError(
                f"{path}: {where}: {name} has shape {values.shape}, expected {shape}"
            )
        try:
            converted = KeyMapping(name, level_id, kind, unit).convert(values.reshape(shape))
        except UnitError as exc:
            raise InvalidDataError(f"{path}: {where}: {exc}") from exc
        out[kind] = (converted.astype(np.float64), unit)
    return out


def read_spice_h5(path: str, level: str = SPICE_LEVEL) -> Source:
    """SPICE 1 or 2 HDF5 release: energies and forces (from gradients) of every conformer."""
    level_id = resolve_level(level).id
    numbers, positions, n_atoms, charges, energies, forces, names = [], [], [], [], [], [], []
    units: dict[str, set[str]] = {"energy": set(), "gradient": set()}
    optional: dict[str, list[np.ndarray]] = {kind: [] for kind in OPTIONAL}
    optional_units: dict[str, set[str]] = {kind: set() for kind in OPTIONAL}
    with open_h5(path) as f:
        for name, group in progress(h5_groups(path, f), f"reading {path}", " molecules"):
            where = f"group {name}"
            z = h5_read(path, h5_dataset(path, group, "atomic_numbers", where), where)
            if z.ndim != 1:
                raise InvalidDataError(f"{path}: {where}: atomic_numbers has shape {z.shape}")
            z = atomic_numbers(z, path, where)
            conf = h5_dataset(path, group, "conformations", where)
            e = h5_dataset(path, group, "dft_total_energy", where)
            grad = h5_dataset(path, group, "dft_total_gradient", where)
            length_unit = _unit(path, where, conf)
            energy_unit, gradient_unit = _unit(path, where, e), _unit(path, where, grad)
            xyz = real_array(h5_read(path, conf, where), path, f"{where}: conformations")
            e_raw = real_array(h5_read(path, e, where), path, f"{where}: dft_total_energy")
            g_raw = real_array(h5_read(path, grad, where), path, f"{where}: dft_total_gradient")
            c = xyz.shape[0] if xyz.ndim else 0
            if xyz.shape != (c, len(z), 3) or g_raw.shape != xyz.shape or e_raw.shape != (c,):
                raise InvalidDataError(
                    f"{path}: {where}: shapes disagree: {len(z)} atoms, conformations "
                    f"{xyz.shape}, energies {e_raw.shape}, gradients {g_raw.shape}"
                )
            try:
                xyz = xyz * conversion_factor(length_unit, "length")
                e_values = KeyMapping(e.name, level_id, "energy", energy_unit).convert(e_raw)
                gradient = KeyMapping(grad.name, level_id, "gradient", gradient_unit)
                f_values = gradient.convert(g_raw)
            except UnitError as exc:
                raise InvalidDataError(f"{path}: {where}: {exc}") from exc
            charge = smiles_charge(_smiles(path, where, group))
            if abs(charge) > np.iinfo(np.int16).max:
                raise InvalidDataError(f"{path}: {where}: total charge {charge} from the SMILES")
            extra = _optional_labels(path, group, where, c, len(z), level_id)
            for kind, values in optional.items():
                label = LABEL_KINDS[kind]
                rows = c * len(z) if label.per == "atom" else c
                if kind in extra:
                    value, unit = extra[kind]
                    values.append(value.reshape(rows, *label.shape))
                    optional_units[kind].add(unit)
                else:
                    values.append(np.full((rows, *label.shape), np.nan))
            units["energy"].add(energy_unit)
            units["gradient"].add(gradient_unit)
            numbers.append(np.tile(z, c))
            positions.append(xyz.reshape(-1, 3))
            n_atoms.append(np.full(c, len(z)))
            charges.append(np.full(c, charge))
            energies.append(e_values)
            forces.append(f_values.reshape(-1, 3))
            names.append(name)
    if not names:
        raise InvalidDataError(f"{path}: no structures found")
    counts = np.array([len(n) for n in n_atoms])
    structures = molecule_structures(
        np.concatenate(numbers),
        np.concatenate(positions),
        np.concatenate(n_atoms),
        group=np.repeat(np.arange(len(names)), counts),
        group_names=names,
        charge=np.concatenate(charges),
    )
    n = structures.n_structures
    structures.labels[(level_id, "energy")] = Label(np.concatenate(energies), np.ones(n, bool))
    structures.labels[(level_id, "forces")] = Label(np.concatenate(forces), np.ones(n, bool))
    source_units = {
        (level_id, "energy"): ", ".join(sorted(units["energy"])),
        (level_id, "forces"): "-(" + ", ".join(sorted(units["gradient"])) + ") (gradient)",
    }
    for kind, values in optional.items():
        if optional_units[kind]:
            joined = np.concatenate(values)
            missing = np.isnan(joined).reshape(len(joined), -1).all(axis=1)
            if LABEL_KINDS[kind].per == "atom":
                missing = np.logical_and.reduceat(missing, structures.atom_start[:-1])
            structures.labels[(level_id, kind)] = Label(joined, ~missing)
            source_units[(level_id, kind)] = ", ".join(sorted(optional_units[kind]))
    start = np.cumsum([0, *counts])
    return Source(
        path=path,
        reader="spice",
        structures=structures,
        source_units=source_units,
        describe=lambda i: conformer_name(names, start, i),
    )
