"""The levels-of-theory registry: ids, names and the aliases sources use.

Three places define levels: the package's ``catalogs/levels.yaml``, the user's own
``$MFKIT_HOME/levels.yaml`` (``mfdata levels add``: a new method needs no edit of the package),
and the manifests of stores, which carry the full definition of each of their levels so that a
store works on a machine whose registry lacks them. The registry files must not contradict each
other (an id or a name defined twice is an error); a store's definition counts once the store is
read in this process, where the registry does not define the id.

Wherever a user types a level, an id or an alias works; everything mfkit writes uses ids.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from mfdata.errors import MfkitError
from mfdata.files import atomic_write_text
from mfdata.home import home
from mfdata.resources import catalog_file
from mfdata.schema import LevelOfTheory, LevelRegistry
from mfdata.units import conversion_factor

REGISTRY_FILE = "catalogs/levels.yaml"
USER_FILE = "levels.yaml"  # under $MFKIT_HOME

# Definitions read from store manifests in this process, for ids the registry lacks. They only
# ever grow, so their count versions the lookup table.
_from_stores: dict[str, LevelOfTheory] = {}


class CatalogError(MfkitError, ValueError):
    """A file under ``catalogs/`` (the level registry or a dataset entry) that fails its
    checks, or a dataset name the catalog does not have. Defined here, not in
    :mod:`mfdata.catalog`, because the level registry is read first and the catalog needs it."""


class UnknownLevelError(MfkitError, KeyError):
    """A level name that is neither an id nor an alias in the registry."""

    def __str__(self) -> str:
        return str(self.args[0])


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "")


def user_levels_file() -> Path:
    """The user's own level registry."""
    return home() / USER_FILE


def registry() -> dict[str, LevelOfTheory]:
    """All registered levels by id: the package's, then the user's."""
    return dict(_registry(*_registry_version()))


def _registry_version() -> tuple[str, int | None]:
    """The user file and its modification time: the registry is re-read when either changes."""
    user = user_levels_file()
    return str(user), (user.stat().st_mtime_ns if user.is_file() else None)


def _load(text: str, where: str) -> list[LevelOfTheory]:
    try:
        return LevelRegistry.model_validate(yaml.safe_load(text)).levels
    except yaml.YAMLError as exc:
        raise CatalogError(f"{where}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CatalogError(f"{where}: invalid level registry: {problems}") from exc


@cache
def _registry(user: str, stamp: int | None) -> dict[str, LevelOfTheory]:
    files = [(REGISTRY_FILE, catalog_file("levels.yaml").read_text(encoding="utf-8"))]
    if stamp is not None:
        files.append((user, Path(user).read_text(encoding="utf-8")))
    by_id: dict[str, LevelOfTheory] = {}
    owners: dict[str, str] = {}
    for where, text in files:
        for level in _load(text, where):
            if level.id in by_id:
                raise CatalogError(f"{where}: level id {level.id!r} is defined twice")
            for name in (level.id, level.name, *level.aliases):
                owner = owners.setdefault(_key(name), level.id)
                if owner != level.id:
                    raise CatalogError(f"{where}: {name!r} names both {owner} and {level.id}")
            by_id[level.id] = level
    return by_id


def known_levels() -> dict[str, LevelOfTheory]:
    """The registry's levels, then those that only stores read in this process define."""
    registered = registry()
    return {**registered, **{k: v for k, v in _from_stores.items() if k not in registered}}


STORE_ATOMS = "the store's isolated-atom frames"


def isolated_atom_energies(
    level: str, from_store: Mapping[str, float]
) -> tuple[dict[str, float], str]:
    """Isolated-atom energies (eV by symbol) of ``level`` and where they come from: the store's
    own isolated-atom frames first, else those published for the level (its definition's
    ``atom_energies``); ``({}, "")`` when there are neither."""
    if from_store:
        return dict(from_store), STORE_ATOMS
    definition = known_levels().get(level)
    published = definition.atom_energies if definition else None
    if published is None:
        return {}, ""
    factor = conversion_factor(published.unit, "energy")
    return {symbol: e * factor for symbol, e in published.values.items()}, published.source


def learn_levels(definitions: Iterable[LevelOfTheory]) -> None:
    """Know the levels a store's manifest defines (where the registry does not define the id),
    so that its levels resolve on a machine whose registry lacks them."""
    registered = registry()
    for level in definitions:
        if level.id not in registered:
            _from_stores.setdefault(level.id, level)


def _lookup() -> dict[str, str]:
    return _table(_registry_version(), len(_from_stores))


@cache
def _table(version: tuple[str, int | None], n_from_stores: int) -> dict[str, str]:
    """Name (id, canonical name or alias, normalised) -> id; a store's names never take over
    one the registry uses."""
    table: dict[str, str] = {}
    for level in _registry(*version).values():
        for name in (level.id, level.name, *level.aliases):
            table[_key(name)] = level.id
    for level in list(_from_stores.values())[:n_from_stores]:
        for name in (level.id, level.name, *level.aliases):
            table.setdefault(_key(name), level.id)
    return table


def resolve_level(name: str, allowed: list[str] | None = None) -> LevelOfTheory:
    """The level that ``name`` (an id, a canonical name or an alias) refers to.

    ``allowed`` restricts the answer to some level ids (a store's levels, say); the error then
    lists those instead of the registry.
    """
    level_id = _lookup().get(_key(name))
    if level_id is not None and (allowed is None or level_id in allowed):
        return known_levels()[level_id]
    if allowed is not None:
        where = f"; this data has: {', '.join(allowed)}" if allowed else "; this data has none"
        known = "" if level_id is None else f" ({name!r} is {level_id})"
        raise UnknownLevelError(f"level {name!r} is not in this data{known}{where}")
    close = difflib.get_close_matches(_key(name), list(_lookup()), n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(sorted({_lookup()[c] for c in close}))}?" if close else ""
    raise UnknownLevelError(
        f"unknown level of theory {name!r}{hint} (see 'mfdata levels' for all known levels; "
        "'mfdata levels add' registers a new one)"
    )


def add_level(level: LevelOfTheory) -> Path:
    """Add ``level`` to the user's registry and return that file; an id, name or alias that a
    registered level already uses is refused (a level is added once, never redefined)."""
    taken = [
        f"{name!r} is {_lookup_registered()[_key(name)]}"
        for name in (level.id, level.name, *level.aliases)
        if _key(name) in _lookup_registered()
    ]
    if taken:
        raise CatalogError(f"level {level.id}: already registered: {'; '.join(taken)}")
    path = user_levels_file()
    levels = _load(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else []
    data = LevelRegistry(levels=[*levels, level]).model_dump(mode="json", exclude_defaults=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _lookup_registered() -> dict[str, str]:
    """Name -> id over the registry files only (not the stores read in this process)."""
    return _table(_registry_version(), 0)
