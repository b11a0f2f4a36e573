"""Source files (or stores) into a new store: the library behind ``mfdata convert`` and
``mfdata merge``, so that Python code gets exactly what the command line gets.

Everything that can be refused (a unit no key uses, a bad ``link_by``, an existing output, a
store name taken) is refused before any file is read. Every label is tagged with its level id
and converted to canonical units by the readers; sources are linked into one record per
structure, written atomically and registered by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import get_args

from mfdata.catalog import ConvertOptions, convert_options, find_entry
from mfdata.errors import UsageError
from mfdata.linking import link_sources
from mfdata.plausibility import RunningFindings, source_findings
from mfdata.readers import AseReader, checked_mapping, parse_mapping, read_source, reader_spec
from mfdata.records import (
    DEFAULT_GEOMETRY_TOLERANCE,
    MAX_SOURCES,
    InvalidDataError,
    Source,
    empty_structures,
)
from mfdata.registry import check_name_free, open_store, register
from mfdata.schema import UNKNOWN, InputFile, label_kind
from mfdata.store.store import Store, input_file, new_store, store_as_source, write_store
from mfdata.store.zarr_store import Precision
from mfdata.units import conversion_factor

PRECISIONS: tuple[str, ...] = get_args(Precision)
KeyMap = tuple[str, str, str]  # (source key, level, label)
Notify = Callable[[str], None]

# Keys whose unit may be stated without a map: ASE's standard keys and an sGDML file's E and R.
UNMAPPED_UNIT_KEYS = frozenset({"energy", "free_energy", "forces", "stress", "virial", "E", "R"})
# ASE's standard keys, and the quantity of a catalog entry's ``units`` whose unit each carries.
ASE_KEY_QUANTITIES = {
    "energy": "energy",
    "free_energy": "energy",
    "forces": "forces",
    "stress": "stress",
    "virial": "energy",
}


def convert(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    format: str | None = None,
    level: str | None = None,
    maps: Iterable[str | KeyMap] = (),
    units: Mapping[str, str] | None = None,
    link_by: str | None = None,
    tolerance: float = DEFAULT_GEOMETRY_TOLERANCE,
    pbc: bool | None = None,
    isolated_atoms: str | Path | tuple[str, str] | None = None,
    group_key: str | None = None,
    name: str | None = None,
    precision: Precision = "lossless",
    licence: str | None = None,
    citation: str | None = None,
    description: str | None = None,
    catalog: str | None = None,
    allow_implausible: bool = False,
    notify: Notify | None = None,
) -> Store:
    """Convert ``inputs`` (one file or several) into a new store at ``out``, register it as
    ``name`` (default: the directory name) and return it.

    ``format`` names the reader (default: detected per file); ``level`` is the level of ASE's
    energy/forces/stress keys or of a single-level file; ``maps`` are ``"KEY=LEVEL:LABEL"``
    strings or (key, level, label) tuples for any other key, with ``units`` by key.
    ``link_by`` merges the inputs' records by ``"geometry"`` (within ``tolerance`` Å) or by
    ``"id:KEY"``. ``pbc`` overrides periodicity. ``isolated_atoms`` is a file of single-atom
    calculations, or a (key, value) pair (or ``"KEY=VALUE"``) marking them in the inputs.
    ``catalog`` names a catalogued dataset whose reader options, licence and citation fill in
    what the arguments leave open. Values implausible for their stated unit (force RMS above
    10 eV/Å, energies beyond any atom's, levels whose spreads differ by a unit ratio) are
    refused, naming the file, the key and the likely unit, unless ``allow_implausible`` (then
    the findings are recorded in the manifest). ``notify`` receives one-line notes (which level
    a release file was taken at, where isolated atoms came from, keys that look like labels and
    were not read); by default they are dropped.
    """
    inputs = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if not inputs:
        raise UsageError("no input files to convert")
    notify = notify or _ignore
    entry = convert_options(find_entry(catalog)) if catalog is not None else None
    given = ConvertOptions(
        format=format,
        level=level,
        maps=[_key_map(m) for m in maps],
        units=dict(units or {}),
        pbc=pbc,
        group_key=group_key,
        licence=licence,
        citation=citation,
        description=description,
    )
    options = given if entry is None else _fill_from_catalog(given, entry)
    _check_units(options)
    id_key = _id_key(link_by)
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: expected {' or '.join(PRECISIONS)}")
    if len(inputs) > MAX_SOURCES:
        raise UsageError(
            f"{len(inputs)} input files: a store records at most {MAX_SOURCES} (each structure's "
            "source is an int16 index); convert them in parts and merge the stores"
        )
    name = _check_target(out, name)
    marker, iso_files = _isolated_atoms(isolated_atoms, entry, catalog, inputs, notify)
    iso_sources = [_read(f, options, all_isolated=True) for f in iso_files]
    reading = _Reading(options, marker, id_key, multiple=len(inputs) > 1)
    written = dict(
        name=name,
        link_by=link_by,
        licence=options.licence,
        citation=options.citation,
        description=options.description,
    )
    if link_by is None and len(inputs) > 1:
        _convert_file_by_file(
            inputs,
            reading,
            iso_sources,
            out,
            precision=precision,
            tolerance=tolerance,
            allow_implausible=allow_implausible,
            notify=notify,
            written=written,
        )
    else:
        sources = [reading.read(p, notify) for p in inputs]
        reading.check_maps_found()
        structures = link_sources(sources, link_by, tolerance)
        implausible = source_findings(structures, sources)
        _refuse_implausible(implausible, allow_implausible)
        write_store(
            out,
            structures,
            sources + iso_sources,
            tolerance=tolerance,
            precision=precision,
            implausible_allowed=implausible,
            **written,
        )
    register(name, out)
    return Store(out)


def merge(
    stores: Sequence[str | Path],
    out: str | Path,
    *,
    tolerance: float = DEFAULT_GEOMETRY_TOLERANCE,
    name: str | None = None,
    allow_implausible: bool = False,
) -> Store:
    """Join ``stores`` (paths or registered names) by geometry into a new store at ``out``, so
    that one record carries the labels of all; conflicting labels are an error. Registered as
    ``name`` (default: the directory name) and returned. Levels whose energies turn implausible
    side by side (spreads a unit ratio apart) are refused as in :func:`convert`."""
    name = _check_target(out, name)
    opened = [open_store(s) for s in stores]
    sources = [store_as_source(s) for s in opened]
    structures = link_sources(sources, "geometry", tolerance)
    allowed = [m for s in opened for m in s.manifest.provenance.implausible_allowed]
    implausible = [m for m in source_findings(structures, sources) if m not in allowed]
    _refuse_implausible(implausible, allow_implausible or bool(allowed))
    write_store(
        out,
        structures,
        sources,
        name=name,
        link_by="geometry",
        tolerance=tolerance,
        labelling=[run for s in opened for run in s.manifest.provenance.labelling],
        implausible_allowed=allowed + implausible,
    )
    register(name, out)
    return Store(out)


def _refuse_implausible(findings: list[str], allowed: bool) -> None:
    """Plausibility findings are an error unless the user overrode them."""
    if findings and not allowed:
        raise InvalidDataError(
            "values implausible for their stated unit: "
            + " | ".join(findings)
            + " (state the unit with --units KEY=UNIT; if the values are right, rerun with "
            "--allow-implausible, which the manifest records)"
        )


def _ignore(note: str) -> None:
    """The default ``notify``: notes are for people at a terminal."""


def _key_map(item: str | KeyMap) -> KeyMap:
    """A key mapping from its text form or a tuple, with the level resolved to its id."""
    return parse_mapping(item) if isinstance(item, str) else checked_mapping(*item)


def _fill_from_catalog(given: ConvertOptions, entry: ConvertOptions) -> ConvertOptions:
    """The user's options, with the catalog entry's wherever the user gave none; a key the
    user maps replaces the catalog's mapping of that key."""
    mapped = {key for key, _, _ in given.maps}
    format = given.format or entry.format
    return ConvertOptions(
        format=format,
        level=given.level or entry.level,
        maps=[m for m in entry.maps if m[0] not in mapped] + given.maps,
        units={**_catalog_key_units(entry, format), **entry.units, **given.units},
        pbc=entry.pbc if given.pbc is None else given.pbc,
        group_key=given.group_key or entry.group_key,
        licence=given.licence or entry.licence,
        citation=given.citation or entry.citation,
        description=given.description or entry.description,
    )


def _catalog_key_units(entry: ConvertOptions, format: str | None) -> dict[str, str]:
    """The catalog's units by quantity as units of ASE's standard keys, when the files are read
    through ase.io (a catalogued dataset given with ``--format extxyz``, say), so that its
    kcal/mol are not read as ASE's eV. Positions in a unit other than Å are refused there (the
    ASE readers take Å), and so is a unit the catalog does not know."""
    if format is None or not isinstance(reader_spec(format).read, AseReader):
        return {}
    units = entry.quantity_units
    unknown = [q for q in ("energy", "forces", "positions") if units.get(q) == UNKNOWN]
    if unknown:
        raise UsageError(
            f"--catalog: the catalog does not know the unit of {', '.join(unknown)} of this "
            "dataset; state them with --units KEY=UNIT"
        )
    positions = units.get("positions")
    if positions is not None and conversion_factor(positions, "length") != 1.0:
        raise UsageError(
            f"--catalog: this dataset's positions are in {positions}, but --format {format} "
            f"reads Å; read its files with --format {entry.format}"
        )
    return {key: units[q] for key, q in ASE_KEY_QUANTITIES.items() if q in units}


def _check_units(options: ConvertOptions) -> None:
    """A unit for a key nothing reads is a mistake (a typo, or a forgotten map): refuse it."""
    usable = {key for key, _, _ in options.maps} | UNMAPPED_UNIT_KEYS
    unused = sorted(set(options.units) - usable)
    if unused:
        raise UsageError(
            f"--units {', '.join(unused)}: no --map uses these keys (units belong to mapped keys, "
            "ASE's standard keys, or an sGDML file's E and R)"
        )


def _id_key(link_by: str | None) -> str | None:
    """The info key of ``link_by="id:KEY"``; None for geometry or no linking."""
    if link_by is None or link_by == "geometry":
        return None
    if link_by.startswith("id:") and len(link_by) > 3:
        return link_by[3:]
    raise UsageError(f"--link-by {link_by!r}: expected 'geometry' or 'id:KEY'")


def _check_target(out: str | Path, name: str | None) -> str:
    """The store's name; an existing output or a name another store holds is refused first."""
    if Path(out).exists():
        raise FileExistsError(f"{out}: already exists; choose another output path")
    name = name or Path(out).name
    check_name_free(name, out)
    return name


def _isolated_atoms(
    given: str | Path | tuple[str, str] | None,
    entry: ConvertOptions | None,
    catalog: str | None,
    inputs: Sequence[str | Path],
    notify: Notify,
) -> tuple[tuple[str, str] | None, list[Path]]:
    """The marker of isolated-atom records in the inputs, and the files that hold only them.

    Given: a file, a (key, value) pair or ``"KEY=VALUE"``. Otherwise the catalog's marker and
    file (beside the first input; a missing one only loses the isolated-atom energies).
    """
    if isinstance(given, tuple):
        return given, []
    if given is not None:
        if Path(given).is_file():
            return None, [Path(given)]
        key, _, value = str(given).partition("=")
        if not value:
            raise UsageError(f"--isolated-atoms {str(given)!r}: not a file, and not KEY=VALUE")
        return (key, value), []
    if entry is None:
        return None, []
    if entry.isolated_atoms_file is None:
        return entry.isolated_atoms, []
    iso_file = Path(inputs[0]).parent / entry.isolated_atoms_file
    if not iso_file.is_file():
        notify(f"{catalog}: no {iso_file}: no isolated-atom energies")
        return entry.isolated_atoms, []
    if any(iso_file.samefile(path) for path in inputs):
        return entry.isolated_atoms, []
    notify(f"{catalog}: isolated atoms from {iso_file}")
    return entry.isolated_atoms, [iso_file]


def _read(
    path: str | Path,
    options: ConvertOptions,
    *,
    isolated_atoms: tuple[str, str] | None = None,
    all_isolated: bool = False,
    id_key: str | None = None,
    maps_optional: bool = False,
) -> Source:
    return read_source(
        str(path),
        options.format,
        level=options.level,
        maps=options.maps,
        units=options.units,
        pbc=options.pbc,
        isolated_atoms=isolated_atoms,
        all_isolated=all_isolated,
        group_key=options.group_key,
        id_key=id_key,
        maps_optional=maps_optional,
    )


class _Reading:
    """Reads the inputs of one conversion with the same options, passes their notes on and
    remembers the labels found, so that each mapped key is checked against the union over all
    files (any one file may lack it) once every file is read."""

    def __init__(
        self,
        options: ConvertOptions,
        marker: tuple[str, str] | None,
        id_key: str | None,
        multiple: bool,
    ):
        self.options, self.marker, self.id_key, self.multiple = options, marker, id_key, multiple
        self.found: set[tuple[str, str]] = set()

    def read(self, path: str | Path, notify: Notify) -> Source:
        source = _read(
            path,
            self.options,
            isolated_atoms=self.marker,
            id_key=self.id_key,
            maps_optional=self.multiple,
        )
        self.found.update(source.structures.labels)
        for note in source.notes:
            notify(note)
        default = reader_spec(source.reader).default_level
        if self.options.level is None and default is not None:
            notify(
                f"{source.path}: {source.reader} release, level {default} (override with --level)"
            )
        return source

    def check_maps_found(self) -> None:
        """Each mapped key must be in some record of some input."""
        for key, level_id, label in self.options.maps:
            if (level_id, label_kind(label)[0].name) not in self.found:
                raise InvalidDataError(f"no record of any source has the key {key!r} (--map {key})")


def _convert_file_by_file(
    inputs: Sequence[str | Path],
    reading: _Reading,
    iso_sources: list[Source],
    out: str | Path,
    *,
    precision: Precision,
    tolerance: float,
    allow_implausible: bool,
    notify: Notify,
    written: dict,
) -> None:
    """Many files, not linked: each is read, checked and appended to the store being written,
    then dropped, so that memory holds one file's arrays whatever their number (OMol25's
    thousands of aselmdb files). A bad file stops the conversion and nothing is left at
    ``out``; the plausibility checks run on running totals before the manifest is written."""
    running = RunningFindings()
    kept: list[Source] = []
    records: list[InputFile] = []
    with new_store(out, precision=precision, tolerance=tolerance) as writer:
        for k, path in enumerate(inputs):
            source = reading.read(path, notify)
            records.append(input_file(source))
            if source.structures.n_structures:
                source.structures.source[:] = k
                running.add(source.structures)
                writer.add(source.structures)
            kept.append(_metadata(source))
        reading.check_maps_found()
        implausible = running.findings(kept)
        _refuse_implausible(implausible, allow_implausible)
        writer.finish(
            kept + iso_sources,
            inputs=records + [input_file(s) for s in iso_sources],
            implausible_allowed=implausible,
            **written,
        )


def _metadata(source: Source) -> Source:
    """What the manifest needs of a source once its structures are written."""
    return Source(
        path=source.path,
        reader=source.reader,
        structures=empty_structures(),
        source_units=source.source_units,
        atom_energies=source.atom_energies,
        keys=source.keys,
        unread_keys=source.unread_keys,
    )
