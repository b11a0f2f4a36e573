"""Anything ``ase.io`` reads (extxyz first of all), with the user's key mapping.

ASE's standard keys carry ASE's units: ``energy`` and ``free_energy`` in eV, ``forces`` in eV/Å,
``stress`` in eV/Å³. Any other key needs its unit stated; nothing is assumed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import ase.db
import ase.io
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.stress import voigt_6_to_full_3x3_stress

from mfdata.progress import progress
from mfdata.readers._common import KeyMapping
from mfdata.records import InvalidDataError, Label, Source, Structures, empty_structures

ASE_STANDARD_UNITS = {"energy": "eV", "free_energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3"}


def ase_mappings(
    maps: Iterable[tuple[str, str, str]],
    units: dict[str, str],
    path: str,
    optional: Iterable[str] = (),
) -> list[KeyMapping]:
    """Key mappings with units: ASE's standard keys in ASE units, every other key as stated.

    Keys in ``optional`` may be absent from every record (ASE's standard keys under --level).
    """
    out = []
    for key, level, label in maps:
        unit = units.get(key, ASE_STANDARD_UNITS.get(key))
        if unit is None:
            raise InvalidDataError(
                f"{path}: key {key!r} has no known unit; state it with --units {key}=UNIT "
                "(for example eV, Hartree, kcal/mol, eV/Å, Hartree/Bohr)"
            )
        out.append(KeyMapping(key, level, label, unit, optional=key in optional))
    return out


def _lookup(atoms: Atoms, key: str):
    if atoms.calc is not None and key in atoms.calc.results:
        return atoms.calc.results[key]
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    return None


def _total_charge(atoms: Atoms) -> int:
    """The total charge from ``info`` (``total_charge`` or a scalar ``charge``), else 0."""
    for key in ("total_charge", "charge"):
        value = atoms.info.get(key)
        if value is not None and np.ndim(value) == 0:
            return int(value)
    return 0


def _as_label(value, mapping: KeyMapping, n_atoms: int) -> np.ndarray:
    kind = mapping.kind
    value = np.asarray(value, dtype=np.float64)
    if kind.name == "stress" and value.shape == (6,):
        value = voigt_6_to_full_3x3_stress(value)
    expected = (n_atoms, *kind.shape) if kind.per == "atom" else kind.shape
    if value.size != int(np.prod(expected)):
        raise ValueError(f"{mapping.key} has shape {value.shape}, expected {expected}")
    return value.reshape(expected)


def read_ase(
    path: str,
    mappings: list[KeyMapping],
    *,
    format: str | None = None,
    pbc: bool | None = None,
    isolated_atoms: tuple[str, str] | None = None,
    all_isolated: bool = False,
    group_key: str | None = None,
    id_key: str | None = None,
) -> Source:
    """Read every frame of ``path`` with ``ase.io``; ``mappings`` say which key is which label.

    ``isolated_atoms`` (info key, value) marks single-atom frames whose energies become the
    level's atom reference energies; ``all_isolated`` treats every frame so (a separate file).
    ``pbc`` overrides the periodicity of every frame; molecules (pbc all False) lose their box.
    ``id_key`` names the info key whose value identifies a structure across files (linking).
    """
    frames: list[Atoms] = []
    iso: list[Atoms] = []
    reader = _iter_db(path) if format == "db" else ase.io.iread(path, index=":", format=format)
    try:
        for atoms in progress(reader, f"reading {path}", " frames"):
            is_iso = all_isolated or (
                isolated_atoms is not None
                and str(atoms.info.get(isolated_atoms[0])) == isolated_atoms[1]
            )
            (iso if is_iso else frames).append(atoms)
    except Exception as exc:  # ase raises many types for malformed files
        raise InvalidDataError(
            f"{path}: record {len(frames) + len(iso)}: cannot be read"
            f"{' as ' + format if format else ''}: {type(exc).__name__}: {exc}"
        ) from exc

    atom_energies = _isolated_energies(path, iso, mappings)
    structures = _frames_to_structures(path, frames, mappings, pbc, group_key)
    ids = None
    if id_key is not None:
        missing = [i for i, a in enumerate(frames) if id_key not in a.info]
        if missing:
            raise InvalidDataError(f"{path}: record {missing[0]}: no {id_key!r} to link by")
        ids = np.array([str(a.info[id_key]) for a in frames])
    return Source(
        path=path,
        reader="ase-db" if format == "db" else "ase",
        structures=structures,
        source_units={(m.level, m.kind.name): m.unit for m in mappings},
        atom_energies=atom_energies,
        ids=ids,
    )


def _iter_db(path: str) -> Iterator[Atoms]:
    """Rows of an ASE database as Atoms, with key-value pairs and data where keys can find them."""
    with ase.db.connect(path, serial=True) as db:
        for row in db.select():
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            for key, value in row.data.items():
                value = np.asarray(value)
                if value.shape[:1] == (len(atoms),):
                    atoms.arrays[key] = value
                else:
                    atoms.info[key] = value
            yield atoms


def _isolated_energies(
    path: str, frames: list[Atoms], mappings: list[KeyMapping]
) -> dict[str, dict[str, float]]:
    energies: dict[str, dict[str, float]] = {}
    for i, atoms in enumerate(frames):
        if len(atoms) != 1:
            raise InvalidDataError(
                f"{path}: isolated-atom record {i} has {len(atoms)} atoms, not 1"
            )
        symbol = chemical_symbols[atoms.numbers[0]]
        for m in mappings:
            value = _lookup(atoms, m.key)
            if m.kind.name != "energy" or value is None:
                continue
            energy = float(m.convert(np.asarray(value, dtype=np.float64)))
            if not np.isfinite(energy):
                raise InvalidDataError(f"{path}: isolated atom {symbol}: {m.key} is not finite")
            energies.setdefault(m.level, {})[symbol] = energy
    return energies


def _frames_to_structures(
    path: str,
    frames: list[Atoms],
    mappings: list[KeyMapping],
    pbc: bool | None,
    group_key: str | None,
) -> Structures:
    if not frames:
        return empty_structures()
    n = len(frames)
    n_atoms = np.array([len(a) for a in frames], dtype=np.int32)
    total = int(n_atoms.sum())
    periodic = np.array([a.pbc for a in frames], dtype=bool).reshape(n, 3)
    if pbc is not None:
        periodic[:] = pbc
    cell = np.array([a.cell.array for a in frames], dtype=np.float64).reshape(n, 3, 3)
    cell[~periodic.any(axis=1)] = 0.0
    no_cell = periodic.any(axis=1) & (np.abs(np.linalg.det(cell)) < 1e-12)
    if no_cell.any():
        i = int(np.flatnonzero(no_cell)[0])
        raise InvalidDataError(f"{path}: record {i}: periodic but has no cell")
    group_values = [
        str(a.info.get(group_key)) if group_key else a.get_chemical_formula() for a in frames
    ]
    group_names, group = np.unique(np.array(group_values, dtype=object), return_inverse=True)
    structures = Structures(
        numbers=np.concatenate([a.numbers for a in frames]).astype(np.uint8),
        positions=np.concatenate([a.positions for a in frames]),
        n_atoms=n_atoms,
        cell=cell,
        pbc=periodic,
        charge=np.array([_total_charge(a) for a in frames], dtype=np.int16),
        multiplicity=np.array([int(a.info.get("multiplicity", 0)) for a in frames], dtype=np.int16),
        group=group.astype(np.int32),
        group_names=[str(g) for g in group_names],
    )
    start = structures.atom_start
    for m in mappings:
        kind = m.kind
        rows = total if kind.per == "atom" else n
        values = np.full((rows, *kind.shape), np.nan)
        present = np.zeros(n, dtype=bool)
        for i, atoms in enumerate(frames):
            raw = _lookup(atoms, m.key)
            if raw is None:
                continue
            try:
                value = _as_label(raw, m, len(atoms))
            except (TypeError, ValueError) as exc:
                raise InvalidDataError(f"{path}: record {i}: {exc}") from exc
            if kind.per == "atom":
                values[start[i] : start[i + 1]] = value
            else:
                values[i] = value
            present[i] = True
        if not present.any():
            if m.optional:
                continue
            raise InvalidDataError(f"{path}: no record has the key {m.key!r} (mapped to {m.level})")
        key = (m.level, kind.name)
        if key in structures.labels:
            raise InvalidDataError(f"{path}: two keys map to {m.level} {kind.name}")
        structures.labels[key] = Label(m.convert(values), present)
    return structures
