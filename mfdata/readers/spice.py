"""SPICE HDF5: one group per molecule, units in each dataset's ``units`` attribute.

``conformations`` (Bohr), ``dft_total_energy`` (Hartree) and ``dft_total_gradient``
(Hartree/Bohr, minus the forces) at ωB97M-D3(BJ)/def2-TZVPPD; the total charge is the sum of the
formal charges in the molecule's SMILES.
"""

from __future__ import annotations

import re

import h5py
import numpy as np

from mfdata.levels import resolve_level
from mfdata.progress import progress
from mfdata.readers._common import KeyMapping
from mfdata.records import InvalidDataError, Label, Source, conformer_name, molecule_structures
from mfdata.units import UnitError, conversion_factor

SPICE_LEVEL = "wb97md3bj-def2tzvppd"
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


def _unit(path: str, name: str, dataset: h5py.Dataset) -> str:
    unit = dataset.attrs.get("units")
    if unit is None:
        raise InvalidDataError(f"{path}: group {name}: {dataset.name} has no 'units' attribute")
    return unit.decode() if isinstance(unit, bytes) else str(unit)


def read_spice_h5(path: str, level: str = SPICE_LEVEL) -> Source:
    """SPICE 1 or 2 HDF5 release: energies and forces (from gradients) of every conformer."""
    level_id = resolve_level(level).id
    numbers, positions, n_atoms, charges, energies, forces, names = [], [], [], [], [], [], []
    units: dict[str, set[str]] = {"energy": set(), "gradient": set()}
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InvalidDataError(f"{path}: cannot be read as HDF5: {exc}") from exc
    with f:
        for name, group in progress(f.items(), f"reading {path}", " molecules"):
            try:
                z = group["atomic_numbers"][()]
                conf = group["conformations"]
                e = group["dft_total_energy"]
                grad = group["dft_total_gradient"]
                smiles = group["smiles"][0]
                c = conf.shape[0]
                length = conversion_factor(_unit(path, name, conf), "length")
                energy_unit, gradient_unit = _unit(path, name, e), _unit(path, name, grad)
                xyz = conf[()] * length
                e_values = KeyMapping(e.name, level_id, "energy", energy_unit).convert(e[()])
                gradient = KeyMapping(grad.name, level_id, "gradient", gradient_unit)
                f_values = gradient.convert(grad[()])
            except (KeyError, OSError, UnitError, IndexError) as exc:
                raise InvalidDataError(
                    f"{path}: group {name}: {type(exc).__name__}: {exc}"
                ) from exc
            if xyz.shape != (c, len(z), 3) or f_values.shape != xyz.shape or e_values.shape != (c,):
                raise InvalidDataError(
                    f"{path}: group {name}: shapes disagree: {len(z)} atoms, conformations "
                    f"{conf.shape}, energies {e.shape}, gradients {grad.shape}"
                )
            units["energy"].add(energy_unit)
            units["gradient"].add(gradient_unit)
            numbers.append(np.tile(z, c))
            positions.append(xyz.reshape(-1, 3))
            n_atoms.append(np.full(c, len(z)))
            smiles = smiles.decode() if isinstance(smiles, bytes) else str(smiles)
            charges.append(np.full(c, smiles_charge(smiles)))
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
    start = np.cumsum([0, *counts])
    return Source(
        path=path,
        reader="spice",
        structures=structures,
        source_units={
            (level_id, "energy"): ", ".join(sorted(units["energy"])),
            (level_id, "forces"): "-(" + ", ".join(sorted(units["gradient"])) + ") (gradient)",
        },
        describe=lambda i: conformer_name(names, start, i),
    )
