"""Readers, one per source format, the table that describes them, and ``read_source``.

Like ``ase.io``'s format table, :data:`READERS` holds one :class:`ReaderSpec` per format: its
name, the function that reads it, the file suffixes it claims, how its content is recognised
where formats share a suffix (the HDF5 releases), its default level and the read options it
takes. Detection, the ``mfdata convert --format`` help and its choices, and the catalog's check
of reader names all come from this table, so a new format is one new entry.

Every reader returns a :class:`mfdata.records.Source` in canonical units with level ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import h5py

from mfdata.errors import UsageError
from mfdata.levels import resolve_level
from mfdata.readers._common import (
    H5_ERRORS,
    KeyMapping,
    checked_mapping,
    h5_keys,
    h5_name,
    open_h5,
    parse_mapping,
)
from mfdata.readers.ani import ANI2X_LEVEL, read_ani2x_h5, read_ani_h5
from mfdata.readers.ase_io import ase_mappings, database_units, read_ase
from mfdata.readers.qm7x import QM7X_LEVEL, is_qm7x, read_qm7x_h5
from mfdata.readers.qm9 import QM9_LEVEL, is_qm9, read_qm9
from mfdata.readers.qm9 import SUFFIXES as QM9_SUFFIXES
from mfdata.readers.rmd17 import RMD17_LEVEL, is_rmd17, read_rmd17_npz
from mfdata.readers.sgdml import read_sgdml_npz
from mfdata.readers.spice import SPICE_LEVEL, read_spice_h5
from mfdata.readers.transition1x import T1X_LEVEL, is_transition1x, read_transition1x_h5
from mfdata.records import InvalidDataError, Source, validate
from mfdata.units import same_unit

__all__ = [
    "FORMATS",
    "READERS",
    "AseReader",
    "KeyMapping",
    "ReadOptions",
    "ReaderSpec",
    "checked_mapping",
    "detect_format",
    "format_help",
    "parse_mapping",
    "read_ani2x_h5",
    "read_ani_h5",
    "read_ase",
    "read_qm7x_h5",
    "read_qm9",
    "read_rmd17_npz",
    "read_sgdml_npz",
    "read_source",
    "read_spice_h5",
    "read_transition1x_h5",
    "reader_spec",
]


@dataclass(frozen=True)
class ReadOptions:
    """What ``read_source`` was asked, handed to a reader; each reader uses the options its
    :attr:`ReaderSpec.options` names and ignores the rest (one set of options serves every file
    of a multi-file conversion)."""

    level: str | None = None
    maps: Sequence[tuple[str, str, str]] = ()
    units: Mapping[str, str] = field(default_factory=dict)
    pbc: bool | None = None
    isolated_atoms: tuple[str, str] | None = None
    all_isolated: bool = False
    group_key: str | None = None
    id_key: str | None = None
    maps_optional: bool = False


@dataclass(frozen=True)
class ReaderSpec:
    """One source format: what it is called, how it is read and how a file is recognised."""

    name: str
    read: Callable[[str, ReadOptions], Source]
    description: str
    suffixes: tuple[str, ...] = ()  # lower case, with the dot; empty: only by --format
    recognise: Callable[[str], bool] | None = None  # content test where formats share a suffix
    default_level: str | None = None  # the level of a release file that does not name it
    options: frozenset[str] = frozenset()  # the ReadOptions fields the reader uses

    def help(self) -> str:
        """One entry of ``--format``'s help: name, what it is, suffixes, default level."""
        details = [self.description]
        if self.suffixes:
            details.append("/".join(self.suffixes))
        if self.default_level is not None:
            details.append(f"level {self.default_level} unless --level")
        return f"{self.name} ({', '.join(details)})"


@dataclass(frozen=True)
class AseReader:
    """The reader of a format read through ``ase.io``; ``format`` is ase.io's name for it
    (None: ase.io guesses from the file). ``mfdata label`` reads geometries with it too.
    ``source_id_key`` is the info key of the source's own structure ids, kept when present."""

    format: str | None
    source_id_key: str | None = None

    def __call__(self, path: str, options: ReadOptions) -> Source:
        file_units, length_unit = database_units(path) if self.format == "db" else ({}, None)
        return read_ase(
            path,
            _ase_key_mappings(path, options, _with_file_units(path, options.units, file_units)),
            format=self.format,
            pbc=options.pbc,
            isolated_atoms=options.isolated_atoms,
            all_isolated=options.all_isolated,
            group_key=options.group_key,
            id_key=options.id_key,
            length_unit=length_unit,
            source_id_key=self.source_id_key,
        )


def _with_file_units(
    path: str, given: Mapping[str, str], stated: Mapping[str, str]
) -> dict[str, str]:
    """The units the file states (an ASE database's metadata) with the ones given; a given unit
    that contradicts the file is refused, since one of the two is wrong and mfkit cannot tell
    which."""
    for key in sorted(set(given) & set(stated)):
        if not same_unit(given[key], stated[key]):
            raise UsageError(
                f"{path}: the database's metadata (_property_unit_dict) says {key!r} is in "
                f"{stated[key]}, but the units given (--units or the catalog) say "
                f"{key}={given[key]}; drop the given unit, or fix the file's metadata"
            )
    return {**stated, **given}


def _ase_key_mappings(
    path: str, options: ReadOptions, units: Mapping[str, str]
) -> list[KeyMapping]:
    """``--map`` keys plus, under ``--level``, ASE's standard keys not mapped otherwise.

    The implied standard keys may be absent; mapped keys may be absent only when the caller
    checks the union over several files (``maps_optional``).
    """
    maps = list(options.maps)
    implied: list[str] = []
    if options.level is not None:
        mapped = {key for key, _, _ in maps}
        implied = [k for k in ("energy", "forces", "stress", "virial") if k not in mapped]
        maps += [(k, resolve_level(options.level).id, k) for k in implied]
    if not maps:
        raise UsageError(
            f"{path}: say which level of theory the labels are at: --level LEVEL for ASE's "
            "energy, forces and stress keys, or --map KEY=LEVEL:LABEL"
        )
    optional = [key for key, _, _ in maps] if options.maps_optional else implied
    return ase_mappings(maps, dict(units), path, optional=optional)


def _read_ani1x(path: str, options: ReadOptions) -> Source:
    return read_ani_h5(path)


def _read_ani2x(path: str, options: ReadOptions) -> Source:
    return read_ani2x_h5(path, options.level or ANI2X_LEVEL)


def _read_spice(path: str, options: ReadOptions) -> Source:
    return read_spice_h5(path, options.level or SPICE_LEVEL)


def _read_transition1x(path: str, options: ReadOptions) -> Source:
    return read_transition1x_h5(path, options.level or T1X_LEVEL)


def _read_qm7x(path: str, options: ReadOptions) -> Source:
    return read_qm7x_h5(path, options.level or QM7X_LEVEL)


def _read_qm9(path: str, options: ReadOptions) -> Source:
    return read_qm9(path, options.level or QM9_LEVEL)


def _read_rmd17(path: str, options: ReadOptions) -> Source:
    return read_rmd17_npz(path, options.level or RMD17_LEVEL)


def _read_sgdml(path: str, options: ReadOptions) -> Source:
    return read_sgdml_npz(path, options.level, options.units.get("E"), options.units.get("R"))


def _first_group_members(path: str) -> set[str]:
    """Member names of an HDF5 file's first top-level group (empty if it has no group)."""
    with open_h5(path) as f:
        names = h5_keys(path, f, "top level")
        if not names:
            return set()
        where = f"group {h5_name(names[0])}"
        try:
            first = f.get(names[0])
        except H5_ERRORS as exc:
            raise InvalidDataError(f"{path}: {where}: {exc}") from exc
        if not isinstance(first, h5py.Group):
            return set()
        return {h5_name(k) for k in h5_keys(path, first, where)}


def _first_group_has(*members: str) -> Callable[[str], bool]:
    """A content test: the first HDF5 group holds all of ``members``."""
    return lambda path: set(members) <= _first_group_members(path)


HDF5 = (".h5", ".hdf5")
ASE_OPTIONS = frozenset(
    {"level", "maps", "units", "pbc", "isolated_atoms", "all_isolated", "group_key", "id_key"}
)

# Detection tries, in table order, the entries that claim a file's suffix (the end of its name, so
# that ".tar.bz2" can be claimed); a file whose suffix no entry claims goes to FALLBACK, since
# ase.io reads dozens of formats and guesses among them. QM9 comes before extxyz: both claim .xyz.
READERS: dict[str, ReaderSpec] = {
    spec.name: spec
    for spec in (
        ReaderSpec(
            name="ani1x",
            read=_read_ani1x,
            description="ANI-1x/ANI-1ccx release HDF5",
            suffixes=HDF5,
            recognise=_first_group_has("atomic_numbers", "coordinates"),
        ),
        ReaderSpec(
            name="ani2x",
            read=_read_ani2x,
            description="ANI-2x release HDF5",
            suffixes=HDF5,
            recognise=_first_group_has("species", "coordinates", "energies"),
            default_level=ANI2X_LEVEL,
            options=frozenset({"level"}),
        ),
        ReaderSpec(
            name="spice",
            read=_read_spice,
            description="SPICE release HDF5",
            suffixes=HDF5,
            recognise=_first_group_has("atomic_numbers", "conformations"),
            default_level=SPICE_LEVEL,
            options=frozenset({"level"}),
        ),
        ReaderSpec(
            name="transition1x",
            read=_read_transition1x,
            description="Transition1x HDF5",
            suffixes=HDF5,
            recognise=is_transition1x,
            default_level=T1X_LEVEL,
            options=frozenset({"level"}),
        ),
        ReaderSpec(
            name="qm7x",
            read=_read_qm7x,
            description="QM7-X HDF5",
            suffixes=HDF5,
            recognise=is_qm7x,
            default_level=QM7X_LEVEL,
            options=frozenset({"level"}),
        ),
        ReaderSpec(
            name="rmd17",
            read=_read_rmd17,
            description="revised MD17 npz",
            suffixes=(".npz",),
            recognise=is_rmd17,
            default_level=RMD17_LEVEL,
            options=frozenset({"level"}),
        ),
        ReaderSpec(
            name="sgdml",
            read=_read_sgdml,
            description="sGDML npz",
            suffixes=(".npz",),
            options=frozenset({"level", "units"}),
        ),
        ReaderSpec(
            name="qm9",
            read=_read_qm9,
            description="QM9 .xyz files or a tar archive of them",
            suffixes=QM9_SUFFIXES,
            recognise=is_qm9,
            default_level=QM9_LEVEL,
            options=frozenset({"level"}),
        ),
        ReaderSpec(
            name="ase-db",
            read=AseReader("db"),
            description="ASE database",
            suffixes=(".db",),
            options=ASE_OPTIONS,
        ),
        ReaderSpec(
            name="aselmdb",
            read=AseReader("aselmdb", source_id_key="data_id"),
            description="fairchem ASE-LMDB (OMol25, OPoly26), ASE units",
            suffixes=(".aselmdb",),
            options=ASE_OPTIONS,
        ),
        ReaderSpec(
            name="extxyz",
            read=AseReader("extxyz"),
            description="extended XYZ",
            suffixes=(".xyz", ".extxyz"),
            options=ASE_OPTIONS,
        ),
        ReaderSpec(
            name="ase",
            read=AseReader(None),
            description="anything else ase.io reads",
            options=ASE_OPTIONS,
        ),
    )
}
FALLBACK = "ase"
FORMATS = tuple(READERS)


def format_help() -> str:
    """The ``--format`` help text: every format in the table, with its suffixes."""
    return "Input format (default: from the suffix and content): " + "; ".join(
        spec.help() for spec in READERS.values()
    )


def reader_spec(name: str) -> ReaderSpec:
    """The table entry of format ``name``; an unknown name is a usage error listing them."""
    if name not in READERS:
        raise UsageError(f"unknown format {name!r}; known: {', '.join(FORMATS)}")
    return READERS[name]


def detect_format(path: str) -> str:
    """The format of ``path``: the one entry claiming its suffix, else the claimant whose
    content test passes; a suffix nobody claims is read by ase.io."""
    claimants = [spec for spec in READERS.values() if _claimed_suffix(path, spec)]
    if not claimants:
        return FALLBACK
    for spec in claimants:
        if spec.recognise is None or spec.recognise(path):
            return spec.name
    _unrecognised(path, claimants)


def _claimed_suffix(path: str, spec: ReaderSpec) -> str | None:
    """The longest of ``spec``'s suffixes that ends the name of ``path`` (None: none does)."""
    name = Path(path).name.lower()
    matches = [suffix for suffix in spec.suffixes if name.endswith(suffix)]
    return max(matches, key=len) if matches else None


def _unrecognised(path: str, claimants: list[ReaderSpec]) -> NoReturn:
    suffix = max((_claimed_suffix(path, spec) or "" for spec in claimants), key=len)
    names = ", ".join(spec.description for spec in claimants)
    found = f" (first group has {sorted(_first_group_members(path))})" if suffix in HDF5 else ""
    raise InvalidDataError(
        f"{path}: layout not recognised{found}; the {suffix} files mfkit reads are: {names}"
    )


def read_source(
    path: str,
    format: str | None = None,
    *,
    level: str | None = None,
    maps: Sequence[tuple[str, str, str]] = (),
    units: Mapping[str, str] | None = None,
    pbc: bool | None = None,
    isolated_atoms: tuple[str, str] | None = None,
    all_isolated: bool = False,
    group_key: str | None = None,
    id_key: str | None = None,
    maps_optional: bool = False,
) -> Source:
    """Read ``path`` with the reader of its format (given, or detected) and check it.

    ``level`` names the level of a single-level file (ASE formats: it takes ASE's standard keys
    energy, forces, stress and virial); ``maps`` are (key, level id, label) for any other key, with
    ``units`` by key. HDF5 releases need neither. A mapped key that no record has is an error,
    unless ``maps_optional`` (one of several files, where the caller checks the union).
    """
    if not Path(path).is_file():
        raise InvalidDataError(f"{path}: no such file")
    spec = reader_spec(format or detect_format(path))
    if id_key is not None and "id_key" not in spec.options:
        raise UsageError(f"{path}: {spec.name} files have no id key; link them by geometry")
    options = ReadOptions(
        level=level,
        maps=maps,
        units=units or {},
        pbc=pbc,
        isolated_atoms=isolated_atoms,
        all_isolated=all_isolated,
        group_key=group_key,
        id_key=id_key,
        maps_optional=maps_optional,
    )
    source = spec.read(path, options)
    validate(source)
    return source
