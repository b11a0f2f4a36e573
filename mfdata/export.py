"""A store in the formats peers train on: extxyz (nequip, ASE), fairchem's aselmdb, and MACE's
multi-head extxyz with its ``heads`` configuration.

Every format gets the same frames: the structures with an energy, forces or stress at a level,
those labels in eV, eV/Å and eV/Å³, the level's dipoles (e·Å) and partial charges (e, each
charge model) where present, and the structure's charge and multiplicity where stated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import ase.io
import numpy as np
import yaml
from ase import Atoms
from ase.calculators.calculator import all_properties
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from mfdata.errors import UsageError
from mfdata.files import atomic_file, atomic_write_text
from mfdata.levels import isolated_atom_energies
from mfdata.records import Structures
from mfdata.schema import LABEL_KINDS
from mfdata.store.store import Store

# Each label kind's key in MACE's files: its default keys (mace.data.utils.DefaultKeys; the dipole
# under a REF_ name, since ASE reads an extxyz ``dipole`` as a calculator result), and REF_ + the
# kind for a named charge model. MACE's marker of isolated atoms.
MACE_KEYS = {kind: f"REF_{kind}" for kind in LABEL_KINDS}
# the kinds a MACE head names a key for (its energy_key ... charges_key options)
MACE_CONFIG_KEYS = ("energy", "forces", "stress", "dipole", "charges")
MACE_HEAD_KEY = "head"
MACE_ISOLATED = {"config_type": "IsolatedAtom"}
HEADS_FILE = "heads.yaml"


def level_frames(s: Structures, level: str) -> Iterator[tuple[Atoms, dict[str, np.ndarray]]]:
    """Each structure with a label at ``level``: its Atoms (``info``: level, group, and
    ``charge``/``spin`` where stated, as fairchem names them) and its labels by kind."""
    labels = {kind: label for (lvl, kind), label in s.labels.items() if lvl == level}
    has = np.zeros(s.n_structures, dtype=bool)
    for kind in ("energy", "forces", "stress"):
        if kind in labels:
            has |= labels[kind].present
    start = s.atom_start
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
        atoms.info["charge"] = int(s.charge[i])
        if s.multiplicity[i]:
            atoms.info["spin"] = int(s.multiplicity[i])
        values = {}
        for kind in LABEL_KINDS:
            if kind in labels and labels[kind].present[i]:
                rows = atoms_slice if LABEL_KINDS[kind].per == "atom" else i
                values[kind] = np.asarray(labels[kind].values[rows], dtype=np.float64)
        yield atoms, values


def _with_results(atoms: Atoms, values: dict[str, np.ndarray]) -> Atoms:
    """``atoms`` with the labels as calculator results (ASE's keys; stress in Voigt order); a
    label ASE has no property for (a named charge model) is an array named after its kind."""
    results = {kind: value for kind, value in values.items() if kind in all_properties}
    atoms.arrays.update(_not_ase_properties(values))
    if "energy" in results:
        results["energy"] = float(results["energy"])
    if "stress" in results:
        results["stress"] = full_3x3_to_voigt_6_stress(results["stress"])
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _not_ase_properties(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {kind: value for kind, value in values.items() if kind not in all_properties}


def _new_file(out: Path) -> None:
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose another output path")
    out.parent.mkdir(parents=True, exist_ok=True)  # as convert does for its output


def write_extxyz(store: Store, level: str, out: str | Path) -> int:
    """Write the structures that have an energy, forces or stress at ``level``; return how many.

    The total charge is ``total_charge`` (extxyz's ``charge`` key could be per-atom charges)."""
    out = Path(out)
    _new_file(out)
    s, _ = store.read()
    frames = []
    for atoms, values in level_frames(s, level):
        charge = atoms.info.pop("charge")
        atoms.info.pop("spin", None)
        if charge:
            atoms.info["total_charge"] = charge
        frames.append(_with_results(atoms, values))
    with atomic_file(out) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    return len(frames)


def write_aselmdb(store: Store, level: str, out: str | Path) -> int:
    """Write fairchem's aselmdb (ase-db-backends): labels as calculator results, and ``charge``,
    ``spin`` (multiplicity), level and group in each row's data, where fairchem's
    ``AseDBDataset`` puts them back into ``atoms.info``. Return how many rows."""
    from ase_db_backends.aselmdb import LMDBDatabase

    out = Path(out)
    _new_file(out)
    s, _ = store.read()
    n = 0
    with atomic_file(out) as tmp:
        try:
            with LMDBDatabase(tmp) as db:
                for atoms, values in level_frames(s, level):
                    data, atoms.info = atoms.info, {}
                    data.update(_not_ase_properties(values))  # a row keeps only ASE's arrays
                    db.write(_with_results(atoms, values), data=data)
                    n += 1
        finally:
            Path(f"{tmp}-lock").unlink(missing_ok=True)  # LMDB's reader table, not data
    return n


def write_mace(store: Store, out: str | Path) -> dict[str, Path]:
    """One extxyz per level in the directory ``out`` with MACE's keys (``REF_energy``,
    ``REF_forces``, ``REF_stress``, ``head`` = the level id), the level's isolated atoms (from
    the manifest, else those the level registry publishes) as ``config_type=IsolatedAtom``
    frames, and ``heads.yaml``: the ``heads`` section of a MACE multi-head training config.
    Return the files by level."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose another output directory")
    s, _ = store.read()
    if not store.levels:
        raise UsageError(f"{store.path}: the store has no levels to export")
    out.mkdir(parents=True)
    files, heads = {}, {}
    for level in store.levels:
        summary = store.manifest.levels[level]
        found, _ = isolated_atom_energies(level, summary.atom_energies)
        # MACE adds an IsolatedAtom frame's element to the model: only the store's elements
        atom_energies = {e: v for e, v in found.items() if e in store.manifest.elements}
        frames = _isolated_atoms(level, atom_energies)
        frames += [_mace_frame(atoms, values, level) for atoms, values in level_frames(s, level)]
        files[level] = out / f"{level}.xyz"
        with atomic_file(files[level]) as tmp:
            ase.io.write(tmp, frames, format="extxyz")
        heads[level] = _head_config(out, level, summary.labels, atom_energies)
    atomic_write_text(out / HEADS_FILE, yaml.safe_dump({"heads": heads}, sort_keys=False))
    return files


def _mace_frame(atoms: Atoms, values: dict[str, np.ndarray], level: str) -> Atoms:
    atoms.info = {MACE_HEAD_KEY: level, "total_charge": atoms.info["charge"]}
    for kind, value in values.items():
        if LABEL_KINDS[kind].per == "atom":
            atoms.arrays[MACE_KEYS[kind]] = value
        else:
            atoms.info[MACE_KEYS[kind]] = float(value) if kind == "energy" else value
    return atoms


def _isolated_atoms(level: str, energies: dict[str, float]) -> list[Atoms]:
    frames = []
    for symbol, energy in energies.items():
        atoms = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
        atoms.info = {**MACE_ISOLATED, MACE_HEAD_KEY: level, MACE_KEYS["energy"]: energy}
        frames.append(atoms)
    return frames


def _head_config(out: Path, level: str, labels: dict, atom_energies: dict[str, float]) -> dict:
    """One head of MACE's ``heads`` config: its file, keys, and E0s (the isolated-atom energies
    as a JSON file by atomic number, else MACE's least-squares ``average``)."""
    head: dict[str, str] = {"train_file": str((out / f"{level}.xyz").resolve())}
    if atom_energies:
        e0s = out / f"e0s_{level}.json"
        numbers = {str(Atoms(symbol).numbers[0]): e for symbol, e in atom_energies.items()}
        atomic_write_text(e0s, json.dumps(numbers, indent=2) + "\n")
        head["E0s"] = str(e0s.resolve())
    else:
        head["E0s"] = "average"
    for kind in MACE_CONFIG_KEYS:
        if kind in labels:
            head[f"{kind}_key"] = MACE_KEYS[kind]
    return head
