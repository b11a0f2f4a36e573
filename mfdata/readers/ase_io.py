"""Anything ``ase.io`` reads (extxyz first of all), with the user's key mapping.

ASE's standard keys carry ASE's units: ``energy`` and ``free_energy`` in eV, ``forces`` in eV/Å,
``stress`` in eV/Å³, ``virial`` in eV. Any other key needs its unit stated; nothing is assumed,
except what the file itself states: an ASE database's metadata (SchNetPack's
``_property_unit_dict`` and ``_distance_unit``) gives the units of its keys and positions.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import ase.db
import ase.io
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.stress import voigt_6_to_full_3x3_stress

from mfdata.progress import progress
from mfdata.readers._common import KeyMapping
from mfdata.readers.aselmdb import iter_aselmdb
from mfdata.records import InvalidDataError, Label, Source, Structures, empty_structures
from mfdata.schema import SOURCE_LABELS
from mfdata.units import UnitError, conversion_factor

ASE_STANDARD_UNITS = {
    "energy": "eV",
    "free_energy": "eV",
    "forces": "eV/Å",
    "stress": "eV/Å^3",
    "virial": "eV",  # extxyz (libAtoms/GAP/ACE) convention: virial = -volume * stress
}
# Per-atom arrays that are geometry or calculator input, never labels: not worth a warning.
NOT_LABELS = frozenset(
    {"numbers", "positions", "momenta", "masses", "tags", "initial_magmoms", "initial_charges"}
)
# The reader name a store's manifest records, by ase format (anything else: "ase").
_READER_NAMES = {"db": "ase-db", "aselmdb": "aselmdb"}
# Formats whose rows carry a dict of properties (fairchem's ``data``): every numeric key that
# is not stored is named, not only the label-shaped ones.
_LIST_UNREAD = frozenset({"aselmdb"})
# Info keys read as the spin multiplicity 2S+1: ``spin`` is OMol25's (fairchem's) name for it.
MULTIPLICITY_KEYS = ("multiplicity", "spin_multiplicity", "spin")


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
        mapping = KeyMapping(key, level, label, unit, optional=key in optional)
        try:
            conversion_factor(unit, mapping.dimension)
        except UnitError as exc:
            raise UnitError(f"{path}: key {key!r} ({label}): {exc}") from exc
        out.append(mapping)
    return out


def _lookup(atoms: Atoms, key: str):
    if atoms.calc is not None and key in atoms.calc.results:
        return atoms.calc.results[key]
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    return None


def _show(value: object) -> str:
    """A short rendering of a bad value for an error message."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def database_units(path: str) -> tuple[dict[str, str], str | None]:
    """The units an ASE database states in its metadata, as SchNetPack writes them: unit by key
    (``_property_unit_dict``) and the unit of positions and cells (``_distance_unit``; None: not
    stated, so Å as ASE's)."""
    try:
        with ase.db.connect(path, serial=True) as db:
            metadata = db.metadata
    except Exception as exc:  # ase and sqlite raise many types for a damaged file
        raise InvalidDataError(f"{path}: cannot be read as an ASE database: {exc}") from exc
    units = metadata.get("_property_unit_dict") or {}
    distance = metadata.get("_distance_unit")
    if not isinstance(units, dict) or not isinstance(distance, str | None):
        raise InvalidDataError(
            f"{path}: metadata _property_unit_dict or _distance_unit is malformed: {metadata}"
        )
    return {str(k): str(v) for k, v in units.items() if v is not None}, distance


def _integer(value: object, key: str) -> int:
    """An integer-valued info entry (charge, multiplicity); 1.5, "x" or 10**6 is bad input.

    A one-element array counts as its value: SchNetPack stores scalars with shape (1,).
    """
    number = np.asarray(value)
    if number.shape == (1,):
        number = number.reshape(())
    if number.ndim != 0 or number.dtype.kind not in "iuf":
        raise ValueError(f"{key} is {_show(value)}, not an integer")
    if not (np.isfinite(number) and number == np.round(number)):
        raise ValueError(f"{key} is {_show(value)}, not an integer")
    if abs(number) > np.iinfo(np.int16).max:
        raise ValueError(f"{key} is {_show(value)}, out of range")
    return int(number)


def _total_charge(atoms: Atoms) -> int:
    """The total charge from ``info`` (``total_charge`` or a scalar ``charge``), else 0.

    A ``charge`` with one value per atom is partial charges, not the total, and is skipped.
    """
    if atoms.info.get("total_charge") is not None:
        return _integer(atoms.info["total_charge"], "total_charge")
    value = atoms.info.get("charge")
    if value is None or np.shape(value) == (len(atoms),):
        return 0
    return _integer(value, "charge")


def _multiplicity(atoms: Atoms) -> int:
    """The spin multiplicity from ``info`` (any of :data:`MULTIPLICITY_KEYS`), else 0 (not
    stated); two keys that disagree are bad input, and so is a ``spin`` below 1 (2S+1 >= 1: a
    0 there is S or 2S, another convention)."""
    found = {
        key: _integer(atoms.info[key], key)
        for key in MULTIPLICITY_KEYS
        if atoms.info.get(key) is not None
    }
    if len(set(found.values())) > 1:
        stated = ", ".join(f"{k}={v}" for k, v in found.items())
        raise ValueError(f"spin multiplicities disagree: {stated}")
    if found.get("spin", 1) < 1:
        raise ValueError(
            f"spin is {found['spin']}, not a multiplicity 2S+1 (as OMol25's spin is); "
            "store 2S+1 as spin_multiplicity"
        )
    return next(iter(found.values()), 0)


def _as_label(value, mapping: KeyMapping, n_atoms: int) -> np.ndarray:
    """``value`` in the shape of the label; text, booleans and wrong sizes are bad input."""
    kind = mapping.kind
    raw = np.asarray(value)
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"{mapping.key} is {_show(value)}, not a number")
    value = raw.astype(np.float64)
    if kind.name == "stress" and value.shape == (6,):
        value = voigt_6_to_full_3x3_stress(value)
    expected = (n_atoms, *kind.shape) if kind.per == "atom" else kind.shape
    if value.size != int(np.prod(expected)):
        raise ValueError(f"{mapping.key} has shape {value.shape}, expected {expected}")
    return value.reshape(expected)


def _locate_xyz_problem(path: str) -> str | None:
    """The first record of an (ext)xyz file whose atom count disagrees with its lines, or None.

    ASE indexes the whole file before yielding a frame, so its errors come before record 0; a
    scan of the atom-count lines (streamed: files can be large) tells the user which record.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines, number = iter(handle), 0
            for record in itertools.count():
                line = next(lines, None)
                if line is None:
                    return None
                number += 1
                header = line.strip()
                if not header and not any(rest.strip() for rest in lines):
                    return None  # trailing blank lines
                try:
                    n = int(header)
                except ValueError:
                    if record == 0:
                        return f"record 0 (line 1: {header[:40]!r} is not an atom count)"
                    return (
                        f"record {record - 1} (its atom count disagrees with its lines: line "
                        f"{number}, {header[:40]!r}, is where the next atom count should be)"
                    )
                if n < 0 or sum(1 for _ in itertools.islice(lines, n + 1)) < n + 1:
                    return f"record {record} (line {number}: the file ends inside this record)"
                number += n + 1
    except OSError:
        return None
    return None


def _read_error(path: str, format: str | None, record: int, exc: Exception) -> InvalidDataError:
    """ASE's exception while reading ``record`` as bad input naming the file and record."""
    where = f"record {record}"
    if record == 0 and format == "extxyz":
        where = _locate_xyz_problem(path) or where
    if isinstance(exc, StopIteration) or isinstance(exc.__cause__, StopIteration):
        reason = "the file ends inside this record (truncated?)"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return InvalidDataError(
        f"{path}: {where}: cannot be read{' as ' + format if format else ''}: {reason}"
    )


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
    length_unit: str | None = None,
    source_id_key: str | None = None,
) -> Source:
    """Read every frame of ``path`` with ``ase.io``; ``mappings`` say which key is which label.

    ``isolated_atoms`` (info key, value) marks single-atom frames whose energies become the
    level's atom reference energies; ``all_isolated`` treats every frame so (a separate file).
    ``pbc`` overrides the periodicity of every frame; molecules (pbc all False) lose their box.
    ``id_key`` names the info key whose value identifies a structure across files (linking).
    ``length_unit`` is the unit of positions and cells where the file states one (default Å).
    ``source_id_key`` names the info key of the source's own structure ids (OMol25's
    ``data_id``), kept as the ids when every frame has one and ``id_key`` is not given.
    """
    frames: list[Atoms] = []
    iso: list[Atoms] = []
    record: list[int] = []  # the file's record number of each frame (isolated atoms excluded)
    iso_record: list[int] = []
    try:
        for atoms in progress(_frames(path, format), f"reading {path}", " frames"):
            is_iso = all_isolated or (
                isolated_atoms is not None
                and str(atoms.info.get(isolated_atoms[0])) == isolated_atoms[1]
            )
            (iso_record if is_iso else record).append(len(frames) + len(iso))
            (iso if is_iso else frames).append(atoms)
    except InvalidDataError:
        raise
    except Exception as exc:  # ase raises many types for malformed files
        raise _read_error(path, format, len(frames) + len(iso), exc) from exc

    if length_unit is not None:
        _scale_lengths(frames + iso, path, length_unit)
    atom_energies = _isolated_energies(path, iso, iso_record, mappings)
    structures = _frames_to_structures(path, frames, record, mappings, pbc, group_key)
    unread = _unread_numbers(frames, mappings, id_key) if format in _LIST_UNREAD else {}
    ids = None
    if id_key is not None:
        missing = [i for i, a in enumerate(frames) if id_key not in a.info]
        if missing:
            raise InvalidDataError(f"{path}: record {record[missing[0]]}: no {id_key!r} to link by")
        ids = np.array([str(a.info[id_key]) for a in frames])
    elif source_id_key is not None and all(source_id_key in a.info for a in frames):
        ids = np.array([str(a.info[source_id_key]) for a in frames])
    return Source(
        path=path,
        reader=_READER_NAMES.get(format, "ase"),
        structures=structures,
        source_units={(m.level, m.kind.name): m.unit for m in mappings},
        atom_energies=atom_energies,
        ids=ids,
        describe=lambda i: f"record {record[i]}",
        keys={(m.level, m.kind.name): m.key for m in mappings},
        notes=_unmapped_labels(path, frames, mappings) + _unread_note(path, unread),
        unread_keys=sorted(unread),
    )


def _scale_lengths(frames: list[Atoms], path: str, unit: str) -> None:
    """Positions and cells from ``unit`` to Å, in place."""
    try:
        factor = conversion_factor(unit, "length")
    except UnitError as exc:
        raise UnitError(f"{path}: distance unit: {exc}") from exc
    if factor != 1.0:
        for atoms in frames:
            atoms.set_cell(atoms.cell.array * factor)
            atoms.positions *= factor


def _unmapped_labels(path: str, frames: list[Atoms], mappings: list[KeyMapping]) -> list[str]:
    """A note naming the keys that look like labels (calculator results, per-atom real arrays,
    3x3 or 6-value info entries such as a virial) which no mapping reads: dropped silently,
    a force array or a virial is a label the user most likely wanted."""
    mapped = {m.key for m in mappings}
    found: dict[str, str] = {}
    for atoms in frames:
        candidates = dict(atoms.calc.results) if atoms.calc is not None else {}
        candidates.update({k: v for k, v in atoms.arrays.items() if k not in NOT_LABELS})
        candidates.update(atoms.info)
        for key, value in candidates.items():
            if key in mapped or key in found:
                continue
            shape = _label_shape(value, len(atoms), key in atoms.arrays)
            if shape is not None:
                found[key] = shape
    if not found:
        return []
    keys = ", ".join(f"{key} ({shape})" for key, shape in sorted(found.items()))
    return [
        f"{path}: warning: keys that look like labels were not read: {keys}; read them with "
        f"--map KEY=LEVEL:LABEL (labels: {SOURCE_LABELS})"
    ]


def _unread_numbers(
    frames: list[Atoms], mappings: list[KeyMapping], id_key: str | None
) -> dict[str, tuple[int, ...]]:
    """Every numeric info key that is neither read nor label-shaped (those are in
    :func:`_unmapped_labels`' warning), with its shape: what a fairchem row's ``data`` holds
    beyond the labels."""
    read = {m.key for m in mappings} | set(MULTIPLICITY_KEYS) | {"charge", "total_charge", id_key}
    found: dict[str, tuple[int, ...]] = {}
    for atoms in frames:
        for key, value in atoms.info.items():
            if key in read or key in found or _label_shape(value, len(atoms), False):
                continue
            array = np.asarray(value)
            if array.dtype.kind in "iuf":
                found[key] = array.shape
    return found


def _unread_note(path: str, unread: dict[str, tuple[int, ...]]) -> list[str]:
    if not unread:
        return []
    keys = ", ".join(f"{key} (shape {shape})" for key, shape in sorted(unread.items()))
    return [f"{path}: numeric keys not stored (store one with --map KEY=LEVEL:LABEL): {keys}"]


def _label_shape(value: object, n_atoms: int, per_atom: bool) -> str | None:
    """How a value looks if it looks like a label (per-atom reals, 3x3 or 6 reals), else None."""
    array = np.asarray(value)
    if array.dtype.kind != "f":
        return None
    if per_atom or (array.shape[:1] == (n_atoms,) and array.ndim == 2):
        return f"per-atom, shape {array.shape[1:] or '()'}"
    if array.size in (6, 9) and array.ndim <= 2:
        return f"per-structure, {array.size} values"
    return None


def _frames(path: str, format: str | None) -> Iterator[Atoms]:
    """The frames of ``path``: ASE databases row by row, anything else through ``ase.io``."""
    if format == "db":
        return _iter_db(path)
    if format == "aselmdb":
        return iter_aselmdb(path)
    return ase.io.iread(path, index=":", format=format)


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
    path: str, frames: list[Atoms], record: list[int], mappings: list[KeyMapping]
) -> dict[str, dict[str, float]]:
    """Energy of each isolated atom by level and element; two different values are an error."""
    energies: dict[str, dict[str, float]] = {}
    for i, atoms in enumerate(frames):
        where = f"{path}: record {record[i]} (isolated atom)"
        if len(atoms) != 1:
            raise InvalidDataError(f"{where}: has {len(atoms)} atoms, not 1")
        if not 1 <= atoms.numbers[0] <= 118:
            raise InvalidDataError(f"{where}: atomic number {atoms.numbers[0]} is not an element")
        symbol = chemical_symbols[atoms.numbers[0]]
        for m in mappings:
            value = _lookup(atoms, m.key)
            if m.kind.name != "energy" or value is None:
                continue
            try:
                energy = float(m.convert(_as_label(value, m, 1)))
            except (TypeError, ValueError) as exc:
                raise InvalidDataError(f"{where}: {exc}") from exc
            if not np.isfinite(energy):
                raise InvalidDataError(f"{where}: {symbol}: {m.key} is not finite")
            old = energies.setdefault(m.level, {}).setdefault(symbol, energy)
            if not np.isclose(old, energy, rtol=0, atol=1e-6):
                raise InvalidDataError(
                    f"{where}: {symbol} at {m.level} has energy {energy} eV, but an earlier "
                    f"isolated {symbol} has {old} eV"
                )
    return energies


def _frames_to_structures(
    path: str,
    frames: list[Atoms],
    record: list[int],
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
    bad = np.flatnonzero(~np.isfinite(cell).reshape(n, 9).all(axis=1))
    if len(bad):
        raise InvalidDataError(f"{path}: record {record[bad[0]]}: cell is not finite (NaN or inf)")
    no_cell = periodic.any(axis=1) & (np.abs(np.linalg.det(cell)) < 1e-12)
    if no_cell.any():
        i = int(np.flatnonzero(no_cell)[0])
        raise InvalidDataError(f"{path}: record {record[i]}: periodic but has no cell")
    numbers = np.concatenate([a.numbers for a in frames])
    # checked first: ASE's formula fails on them, and the uint8 cast would turn 257 into 1
    bad = np.flatnonzero((numbers < 1) | (numbers > 118))
    if len(bad):
        i = int(np.searchsorted(np.cumsum(n_atoms), bad[0], side="right"))
        raise InvalidDataError(
            f"{path}: record {record[i]}: atomic number {numbers[bad[0]]} is not an element"
        )
    group_values = [
        str(a.info.get(group_key)) if group_key else a.get_chemical_formula() for a in frames
    ]
    group_names, group = np.unique(np.array(group_values, dtype=object), return_inverse=True)
    charge = np.zeros(n, dtype=np.int16)
    multiplicity = np.zeros(n, dtype=np.int16)
    for i, atoms in enumerate(frames):
        try:
            charge[i] = _total_charge(atoms)
            multiplicity[i] = _multiplicity(atoms)
        except ValueError as exc:
            raise InvalidDataError(f"{path}: record {record[i]}: {exc}") from exc
    structures = Structures(
        numbers=numbers.astype(np.uint8),
        positions=np.concatenate([a.positions for a in frames]),
        n_atoms=n_atoms,
        cell=cell,
        pbc=periodic,
        charge=charge,
        multiplicity=multiplicity,
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
                raise InvalidDataError(f"{path}: record {record[i]}: {exc}") from exc
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
            other = next(o.key for o in mappings if (o.level, o.kind.name) == key)
            raise InvalidDataError(
                f"{path}: keys {other!r} and {m.key!r} both give {m.level} {kind.name}; "
                "read one (--map KEY=LEVEL:LABEL) and not the other"
            )
        volume = _volumes(path, m, present, periodic, cell, record) if m.per_volume else None
        structures.labels[key] = Label(m.convert(values, volume), present)
    return structures


def _volumes(
    path: str,
    mapping: KeyMapping,
    present: np.ndarray,
    periodic: np.ndarray,
    cell: np.ndarray,
    record: list[int],
) -> np.ndarray:
    """Cell volumes (Å³) that turn a virial into a stress; a virial on a structure that is not
    periodic in all three directions has no volume and is an error."""
    bad = np.flatnonzero(present & ~periodic.all(axis=1))
    if len(bad):
        raise InvalidDataError(
            f"{path}: record {record[bad[0]]}: {mapping.key!r} is a virial, but the structure is "
            "not periodic in all three directions: without a cell volume it is no stress (a "
            "molecule's virial is not a label mfkit stores); drop the key or set --pbc T"
        )
    return np.where(present, np.abs(np.linalg.det(cell)), 1.0)
