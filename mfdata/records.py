"""Structures in columnar form: what readers produce and stores hold.

A set of structures is a handful of flat arrays (atoms of all structures back to back, one row
per structure for per-structure fields) plus labels keyed by (level id, label kind). Columnar
arrays keep conversion vectorised: a million ANI conformers never become a million Python objects.
A label is NaN where a structure lacks it, and ``present`` says which structures have it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np

from mfdata.errors import MfkitError
from mfdata.schema import LABEL_KINDS

LabelKey = tuple[str, str]  # (level id, label kind)

DEFAULT_GEOMETRY_TOLERANCE = 1e-4  # Å
# Input files a store can index: ``Structures.source`` is int16.
MAX_SOURCES = int(np.iinfo(np.int16).max) + 1


class InvalidDataError(MfkitError, ValueError):
    """Bad input: the message names the file, the record and what is wrong."""


@dataclass
class Label:
    """One label kind at one level: ``values`` is NaN where ``present`` is False."""

    values: np.ndarray  # per structure: (n_structures, *shape); per atom: (n_atoms_total, *shape)
    present: np.ndarray  # bool, (n_structures,)


@dataclass
class Structures:
    """Geometries and their labels, columnar. Lengths in Å, labels in canonical units."""

    numbers: np.ndarray  # uint8, (n_atoms_total,)
    positions: np.ndarray  # float32 or float64, (n_atoms_total, 3)
    n_atoms: np.ndarray  # int32, (n_structures,)
    cell: np.ndarray  # float64, (n_structures, 3, 3); zeros for molecules
    pbc: np.ndarray  # bool, (n_structures, 3)
    charge: np.ndarray  # int16, (n_structures,)
    multiplicity: np.ndarray  # int16, (n_structures,); 0 where the source does not say
    group: np.ndarray  # int32 index into group_names: the molecule a conformer belongs to
    group_names: list[str]
    labels: dict[LabelKey, Label] = field(default_factory=dict)
    # int16 index into the store's input files (provenance.inputs); 0 for a single source
    source: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = np.zeros(len(self.n_atoms), dtype=np.int16)

    @property
    def n_structures(self) -> int:
        return len(self.n_atoms)

    @property
    def atom_start(self) -> np.ndarray:
        """Index of each structure's first atom in the per-atom arrays."""
        start = np.zeros(len(self.n_atoms) + 1, dtype=np.int64)
        np.cumsum(self.n_atoms, out=start[1:])
        return start

    def atom_mask(self, structure_mask: np.ndarray) -> np.ndarray:
        return np.repeat(structure_mask, self.n_atoms)

    def select(self, index: np.ndarray) -> Structures:
        """The structures at ``index`` (in that order), with their labels."""
        index = np.asarray(index, dtype=np.int64)
        start = self.atom_start
        atoms = _ranges(start[index], self.n_atoms[index])
        labels = {}
        for key, label in self.labels.items():
            rows = atoms if LABEL_KINDS[key[1]].per == "atom" else index
            labels[key] = Label(label.values[rows], label.present[index])
        used, group = np.unique(self.group[index], return_inverse=True)
        return Structures(
            numbers=self.numbers[atoms],
            positions=self.positions[atoms],
            n_atoms=self.n_atoms[index],
            cell=self.cell[index],
            pbc=self.pbc[index],
            charge=self.charge[index],
            multiplicity=self.multiplicity[index],
            group=group.astype(np.int32),
            group_names=[self.group_names[g] for g in used],
            labels=labels,
            source=self.source[index],
        )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each start and length, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return np.arange(total, dtype=np.int64) + offsets


def molecule_structures(
    numbers: np.ndarray,
    positions: np.ndarray,
    n_atoms: np.ndarray,
    group: np.ndarray | None = None,
    group_names: list[str] | None = None,
    charge: np.ndarray | None = None,
) -> Structures:
    """Structures for isolated molecules: no cell, no periodicity, multiplicity not stated."""
    n = len(n_atoms)
    return Structures(
        numbers=np.asarray(numbers, dtype=np.uint8),
        positions=positions,
        n_atoms=np.asarray(n_atoms, dtype=np.int32),
        cell=np.zeros((n, 3, 3)),
        pbc=np.zeros((n, 3), dtype=bool),
        charge=np.zeros(n, dtype=np.int16) if charge is None else charge.astype(np.int16),
        multiplicity=np.zeros(n, dtype=np.int16),
        group=np.zeros(n, dtype=np.int32) if group is None else group.astype(np.int32),
        group_names=group_names or [""],
    )


def conformer_name(groups: list[str], start: np.ndarray, i: int) -> str:
    """Name record ``i`` of a source laid out as groups of conformers (``start``: group offsets)."""
    g = int(np.searchsorted(start, i, side="right") - 1)
    return f"group {groups[g]} conformer {i - start[g]}"


def empty_structures() -> Structures:
    return molecule_structures(np.zeros(0), np.zeros((0, 3)), np.zeros(0))


@dataclass
class Source:
    """What one reader made of one input: structures plus what the manifest must record."""

    path: str
    reader: str
    structures: Structures
    source_units: dict[LabelKey, str]
    atom_energies: dict[str, dict[str, float]] = field(default_factory=dict)
    ids: np.ndarray | None = None  # per-structure id strings, for linking by id
    describe: Callable[[int], str] = field(default=lambda i: f"record {i}")
    keys: dict[LabelKey, str] = field(default_factory=dict)  # source key of a label, for messages
    notes: list[str] = field(default_factory=list)  # one-line warnings for the user
    unread_keys: list[str] = field(default_factory=list)  # numeric properties not stored


def validate(source: Source) -> None:
    """Raise :class:`InvalidDataError` naming the file and record of the first problem found.

    The one place every reader's output is checked: shapes, types, atom counts, elements,
    finite geometry, and labels that are NaN or inf without being marked missing. Readers check
    only what they need to lay their format out; whatever reaches a store has passed here.
    """
    s = source.structures
    n = s.n_structures

    def fail(index: int, what: str) -> NoReturn:
        raise InvalidDataError(f"{source.path}: {source.describe(int(index))}: {what}")

    def fail_file(what: str) -> NoReturn:
        raise InvalidDataError(f"{source.path}: {what}")

    for name, energies in source.atom_energies.items():
        for symbol, energy in energies.items():
            if not np.isfinite(energy):
                fail_file(f"isolated-atom energy of {symbol} at {name} is not finite")
    if n == 0:
        if source.atom_energies:
            return  # a file of isolated atoms only
        fail_file("no structures found")
    per_structure = {
        "n_atoms": (s.n_atoms, (n,), "iu"),
        "cell": (s.cell, (n, 3, 3), "f"),
        "pbc": (s.pbc, (n, 3), "b"),
        "charge": (s.charge, (n,), "i"),
        "multiplicity": (s.multiplicity, (n,), "i"),
        "group": (s.group, (n,), "iu"),
    }
    for name, (array, shape, kinds) in per_structure.items():
        if array.shape != shape or array.dtype.kind not in kinds:
            fail_file(f"{name} has shape {array.shape} and type {array.dtype}, not {shape}")
    if s.numbers.dtype.kind not in "iu" or s.positions.dtype.kind != "f":
        fail_file(f"atomic numbers ({s.numbers.dtype}) or positions ({s.positions.dtype}) mistyped")
    if source.ids is not None and source.ids.shape != (n,):
        fail_file(f"{source.ids.shape} ids for {n} structures")
    bad = np.flatnonzero(s.n_atoms < 1)
    if len(bad):
        fail(bad[0], "has no atoms")
    total = int(s.n_atoms.sum())
    if s.numbers.shape != (total,) or s.positions.shape != (total, 3):
        fail_file(
            f"atom counts disagree: structures list {total} atoms, but there are "
            f"{s.numbers.shape[0]} atomic numbers and positions of shape {s.positions.shape}"
        )
    bad = np.flatnonzero((s.group < 0) | (s.group >= len(s.group_names)))
    if len(bad):
        fail(bad[0], f"group index {s.group[bad[0]]} but there are {len(s.group_names)} groups")
    structure_of_atom = np.repeat(np.arange(n), s.n_atoms)
    bad = np.flatnonzero((s.numbers < 1) | (s.numbers > 118))
    if len(bad):
        fail(structure_of_atom[bad[0]], f"atomic number {s.numbers[bad[0]]} is not an element")
    bad = np.flatnonzero(~np.isfinite(s.positions).all(axis=1))
    if len(bad):
        fail(structure_of_atom[bad[0]], "positions are not finite (NaN or inf)")
    bad = np.flatnonzero(~np.isfinite(s.cell).reshape(n, 9).all(axis=1))
    if len(bad):
        fail(bad[0], "cell is not finite (NaN or inf)")
    for (level, kind_name), label in s.labels.items():
        kind = LABEL_KINDS.get(kind_name)
        if kind is None:
            fail_file(f"{level}: unknown label kind {kind_name!r}")
        rows = total if kind.per == "atom" else n
        if label.values.shape != (rows, *kind.shape) or label.present.shape != (n,):
            fail_file(
                f"{level} {kind_name} has shape {label.values.shape}, "
                f"expected {(rows, *kind.shape)} ({kind.per} label)"
            )
        if label.values.dtype.kind != "f" or label.present.dtype != bool:
            fail_file(f"{level} {kind_name} has values of type {label.values.dtype}, not floats")
        finite = np.isfinite(label.values).reshape(rows, -1).all(axis=1)
        if kind.per == "atom":
            finite = np.logical_and.reduceat(finite, s.atom_start[:-1])
        bad = np.flatnonzero(label.present & ~finite)
        if len(bad):
            fail(bad[0], f"{level} {kind_name} is NaN or inf but not marked missing")
        absent_rows = ~label.present if kind.per == "structure" else ~s.atom_mask(label.present)
        label.values[absent_rows] = np.nan
