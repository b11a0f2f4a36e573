"""Export one level of a store as extxyz, readable by ``ase.io.read`` (MACE and nequip users)."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from mfdata.files import atomic_file
from mfdata.store.store import Store


def write_extxyz(store: Store, level: str, out: str | Path) -> int:
    """Write the structures that have an energy or forces at ``level``; return how many."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose another output path")
    s, _ = store.read()
    labels = {kind: label for (lvl, kind), label in s.labels.items() if lvl == level}
    has = np.zeros(s.n_structures, dtype=bool)
    for kind in ("energy", "forces", "stress"):
        if kind in labels:
            has |= labels[kind].present
    start = s.atom_start
    frames = []
    for i in np.flatnonzero(has):
        atoms_slice = slice(start[i], start[i + 1])
        atoms = Atoms(
            numbers=s.numbers[atoms_slice],
            positions=s.positions[atoms_slice],
            cell=s.cell[i],
            pbc=s.pbc[i],
        )
        atoms.info["level"] = level
        atoms.info["group"] = s.group_names[s.group[i]]
        if s.charge[i]:
            atoms.info["total_charge"] = int(s.charge[i])
        results = {}
        if "energy" in labels and labels["energy"].present[i]:
            results["energy"] = float(labels["energy"].values[i])
        if "forces" in labels and labels["forces"].present[i]:
            results["forces"] = np.asarray(labels["forces"].values[atoms_slice], dtype=np.float64)
        if "stress" in labels and labels["stress"].present[i]:
            results["stress"] = full_3x3_to_voigt_6_stress(labels["stress"].values[i])
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    out.parent.mkdir(parents=True, exist_ok=True)  # as convert does for its output
    with atomic_file(out) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    return len(frames)
