"""The public dataset catalog: one ``catalogs/<name>.yaml`` per dataset, checked on load.

An entry says what a public dataset holds (levels of theory by id, labels, units, elements, size),
where to get it, how to cite it, and how ``read_source`` converts it, so that
``mfdata convert FILE --catalog NAME`` needs no further flags. Facts that could not be checked are
``unknown`` in the files, never guessed.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml
from ase.data import chemical_symbols
from pydantic import ValidationError

from mfdata.errors import MfkitError, UsageError
from mfdata.home import home
from mfdata.levels import CatalogError, UnknownLevelError, registry, resolve_level
from mfdata.resources import catalog_dir
from mfdata.schema import UNKNOWN, CatalogEntry, label_kind

# catalogs/ also holds the level registry, which is not a dataset entry.
NOT_ENTRIES = frozenset({"levels.yaml"})


@dataclass(frozen=True)
class ConvertOptions:
    """What a catalog entry fills in for ``mfdata convert``: read_source's format and options
    (and, with ``format`` None, what a user asked for, before the catalog fills the gaps)."""

    format: str | None = None  # None: detected per file
    level: str | None = None
    maps: list[tuple[str, str, str]] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)
    # the entry's units by quantity (energy, forces, positions...): what its files hold
    quantity_units: dict[str, str] = field(default_factory=dict)
    pbc: bool | None = None
    isolated_atoms: tuple[str, str] | None = None
    isolated_atoms_file: str | None = None
    group_key: str | None = None
    licence: str | None = None
    citation: str | None = None
    description: str | None = None


def _field_path(data: object, error: dict) -> str:
    """The dotted path of a validation error in the YAML, without pydantic's union-member tags."""
    loc = error["loc"]
    parts = []
    for i, part in enumerate(loc):
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if in_list or (isinstance(data, dict) and part in data):
            data = data[part]  # type: ignore[index]
        elif not (i == len(loc) - 1 and error["type"] == "missing"):
            continue  # a tag naming the member of a union that was tried
        parts.append(str(part))
    return ".".join(parts) or "(top level)"


def _problems(data: object, exc: ValidationError) -> str:
    """One line per failing field; the members of a union that all failed are joined by 'or'."""
    by_field: dict[str, list[str]] = {}
    for error in exc.errors():
        by_field.setdefault(_field_path(data, error), []).append(error["msg"])
    return "; ".join(f"{where}: {' or '.join(msgs)}" for where, msgs in by_field.items())


def _check_entry(entry: CatalogEntry, where: str) -> None:
    """Checks JSON Schema cannot express: registry ids, reader names, symbols, file name."""
    from mfdata.readers import READERS, parse_mapping  # readers import h5py: load on demand

    stem = Path(where).name.rsplit(".", 1)[0]
    if entry.name != stem:
        raise CatalogError(f"{where}: name: {entry.name!r} must match the file name ({stem!r})")
    known = registry()
    for level_id in entry.levels:
        if level_id not in known:
            hint = ""
            with contextlib.suppress(UnknownLevelError):
                hint = f" (that is the alias of {resolve_level(level_id).id}; write the id)"
            raise CatalogError(
                f"{where}: levels.{level_id}: not a level id in catalogs/levels.yaml{hint}"
            )
    if entry.elements != UNKNOWN:
        bad = [s for s in entry.elements if s not in chemical_symbols[1:]]
        if bad:
            raise CatalogError(f"{where}: elements: not chemical symbols: {', '.join(bad)}")
    reader = entry.reader
    if reader is None:
        return
    if reader.format not in READERS:
        raise CatalogError(
            f"{where}: reader.format: {reader.format!r} is not a reader; known: "
            f"{', '.join(READERS)} (use reader: null and describe the files in 'format')"
        )
    try:
        if reader.level is not None:
            resolve_level(reader.level)
        for text in reader.map:
            parse_mapping(text)
    except MfkitError as exc:
        raise CatalogError(f"{where}: reader: {exc}") from exc


def load_entry(text: str, where: str) -> CatalogEntry:
    """One entry from YAML text; errors name ``where`` (the file) and the failing field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    try:
        entry = CatalogEntry.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(f"{where}: invalid catalog entry: {_problems(data, exc)}") from exc
    _check_entry(entry, where)
    return entry


def user_catalog_dir() -> Path:
    """The user's own entries (``$MFKIT_HOME/catalogs/NAME.yaml``): a dataset the package does not
    list, or a mirror of one, downloads and converts like a packaged entry."""
    return home() / "catalogs"


def load_catalog(directory: str | Path | Traversable | None = None) -> dict[str, CatalogEntry]:
    """Every entry in ``directory`` (default: the packaged ``catalogs/``, then the user's
    :func:`user_catalog_dir` where it exists), by name, sorted.

    One invalid file fails the whole load, so nothing is converted from a broken catalog; a name
    or alias that two entries claim is an error, so a user's entry never shadows a packaged one.
    """
    if directory is None:
        user = user_catalog_dir()
        folders = [catalog_dir(), *([user] if user.is_dir() else [])]
    else:
        folders = [Path(directory) if isinstance(directory, str) else directory]
    for folder in folders:
        if not folder.is_dir():
            raise CatalogError(f"{folder}: catalog directory not found")
    items = [item for folder in folders for item in sorted(folder.iterdir(), key=lambda f: f.name)]
    entries: dict[str, CatalogEntry] = {}
    owners: dict[str, str] = {}
    for item in items:
        if not item.name.endswith((".yaml", ".yml")) or item.name in NOT_ENTRIES:
            continue
        where = str(item)
        entry = load_entry(item.read_text(encoding="utf-8"), where)
        if entry.name in entries:
            raise CatalogError(f"{where}: entry {entry.name!r} is defined twice; rename one")
        for key in (entry.name, *entry.aliases):
            owner = owners.setdefault(_key(key), entry.name)
            if owner != entry.name:
                raise CatalogError(f"{where}: name or alias {key!r} is also {owner}'s")
        entries[entry.name] = entry
    return dict(sorted(entries.items()))


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "").replace("_", "-")


def find_entry(name: str, catalog: dict[str, CatalogEntry] | None = None) -> CatalogEntry:
    """The entry that ``name`` (its name, title or an alias, any case) refers to."""
    catalog = load_catalog() if catalog is None else catalog
    table = {}
    for entry in catalog.values():
        for key in (entry.name, entry.title, *entry.aliases):
            table.setdefault(_key(key), entry.name)
    if _key(name) in table:
        return catalog[table[_key(name)]]
    close = difflib.get_close_matches(_key(name), list(table), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(sorted({table[c] for c in close}))}?" if close else ""
    raise CatalogError(f"no dataset {name!r} in the catalog{hint} (see 'mfdata catalog list')")


def parse_elements(text: str) -> list[str]:
    """``H,C,N,O`` -> symbols; anything that is not a chemical symbol is an error."""
    symbols = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in symbols if s not in chemical_symbols[1:]]
    if bad or not symbols:
        raise UsageError(f"--elements {text!r}: {', '.join(bad) or 'empty'}: not chemical symbols")
    return symbols


def filter_entries(
    entries: list[CatalogEntry],
    level: str | None = None,
    label: str | None = None,
    elements: list[str] | None = None,
) -> list[CatalogEntry]:
    """Entries with ``level`` (id or alias), ``label`` (at that level if both are given), and
    elements within ``elements`` (an entry whose elements are unknown is left out).
    """
    level_id = resolve_level(level).id if level is not None else None
    label_name = _label_name(label) if label is not None else None
    out = []
    for entry in entries:
        if level_id is None:
            levels = list(entry.levels.values())
        else:
            levels = [entry.levels[level_id]] if level_id in entry.levels else []
        if not levels:
            continue
        if label_name is not None and not any(_has(lvl.labels, label_name) for lvl in levels):
            continue
        if elements is not None and (
            entry.elements == UNKNOWN or not set(entry.elements) <= set(elements)
        ):
            continue
        out.append(entry)
    return out


def _label_name(label: str) -> str:
    """The label kind ``label`` is stored as; an unknown label is a usage error."""
    try:
        return label_kind(label)[0].name
    except ValueError as exc:  # schema's label check predates UsageError
        raise UsageError(f"--label: {exc}") from exc


def _has(labels: dict, name: str) -> bool:
    count = labels.get(name)
    return count is not None and count != 0


def citation_text(entry: CatalogEntry) -> str:
    """All of an entry's citations as one line, for the store manifest."""
    return "; ".join(
        c.text if c.doi == UNKNOWN else f"{c.text} doi:{c.doi}" for c in entry.citation
    )


def convert_options(entry: CatalogEntry) -> ConvertOptions:
    """The read_source options and manifest fields an entry supplies to ``mfdata convert``."""
    from mfdata.readers import parse_mapping

    reader = entry.reader
    if reader is None:
        raise CatalogError(
            f"{entry.name}: mfkit has no reader for {entry.title} yet; its files are: "
            f"{entry.format}"
        )
    marker = None
    if reader.isolated_atoms is not None:
        key, _, value = reader.isolated_atoms.partition("=")
        marker = (key, value)
    return ConvertOptions(
        format=reader.format,
        level=reader.level,
        maps=[parse_mapping(m) for m in reader.map],
        units=dict(reader.units),
        quantity_units=dict(entry.units),
        pbc=reader.pbc,
        isolated_atoms=marker,
        isolated_atoms_file=reader.isolated_atoms_file,
        group_key=reader.group_key,
        licence=None if entry.licence == UNKNOWN else entry.licence,
        citation=citation_text(entry),
        description=entry.title if entry.url == UNKNOWN else f"{entry.title} ({entry.url})",
    )


def describe(entry: CatalogEntry) -> str:
    """A readable page for ``mfdata catalog show``."""
    known = registry()
    lines = [f"{entry.title} ({entry.name})"]
    if entry.aliases:
        lines.append(f"  aliases: {', '.join(entry.aliases)}")
    lines += [
        f"  {entry.description.strip()}",
        f"  url: {entry.url}",
        f"  licence: {entry.licence}",
        f"  size: {entry.size} structures",
        "  elements: "
        + (entry.elements if entry.elements == UNKNOWN else " ".join(entry.elements)),
        "  units: " + ", ".join(f"{k} {v}" for k, v in entry.units.items()),
        "  levels:",
    ]
    for level_id, lvl in entry.levels.items():
        labels = ", ".join(f"{k} {v}" for k, v in lvl.labels.items()) or "no labels"
        lines.append(f"    {level_id} ({known[level_id].name}): {labels}")
        if lvl.notes:
            lines.append(f"      {lvl.notes.strip()}")
    lines.append("  cite:")
    lines += [f"    {c.text} (doi: {c.doi})" for c in entry.citation]
    if entry.format:
        lines.append(f"  format: {entry.format.strip()}")
    if entry.reader is None:
        lines.append("  reader: none yet")
    else:
        options = entry.reader.model_dump(exclude_defaults=True, exclude={"format"})
        shown = ", ".join(f"{k}={v}" for k, v in options.items())
        lines.append(f"  reader: {entry.reader.format}{' (' + shown + ')' if shown else ''}")
        lines.append(f"  convert: mfdata convert FILE --catalog {entry.name} --out STORE")
    if entry.files:
        lines.append(f"  download: mfdata download {entry.name} ({len(entry.files)} files)")
    if entry.notes:
        lines.append(f"  notes: {entry.notes.strip()}")
    return "\n".join(lines)
