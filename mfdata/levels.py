"""The levels-of-theory registry (``catalogs/levels.yaml``): ids, names and the aliases sources use.

Wherever a user types a level, an id or an alias works; everything mfkit writes uses ids.
"""

from __future__ import annotations

import difflib
from functools import cache

import yaml
from pydantic import ValidationError

from mfdata.errors import MfkitError
from mfdata.resources import catalog_file
from mfdata.schema import LevelOfTheory, LevelRegistry

REGISTRY_FILE = "catalogs/levels.yaml"


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


@cache
def registry() -> dict[str, LevelOfTheory]:
    """All known levels by id, in registry order."""
    try:
        data = yaml.safe_load(catalog_file("levels.yaml").read_text(encoding="utf-8"))
        levels = LevelRegistry.model_validate(data).levels
    except yaml.YAMLError as exc:
        raise CatalogError(f"{REGISTRY_FILE}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CatalogError(f"{REGISTRY_FILE}: invalid level registry: {problems}") from exc
    by_id = {level.id: level for level in levels}
    if len(by_id) != len(levels):
        raise CatalogError(f"{REGISTRY_FILE}: duplicate level ids")
    return by_id


@cache
def _lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for level in registry().values():
        for name in (level.id, level.name, *level.aliases):
            owner = table.setdefault(_key(name), level.id)
            if owner != level.id:
                raise CatalogError(f"{REGISTRY_FILE}: {name!r} names both {owner} and {level.id}")
    return table


def resolve_level(name: str, allowed: list[str] | None = None) -> LevelOfTheory:
    """The level that ``name`` (an id, a canonical name or an alias) refers to.

    ``allowed`` restricts the answer to some level ids (a store's levels, say); the error then
    lists those instead of the registry.
    """
    level_id = _lookup().get(_key(name))
    if level_id is not None and (allowed is None or level_id in allowed):
        return registry()[level_id]
    if allowed is not None:
        where = f"; this data has: {', '.join(allowed)}" if allowed else "; this data has none"
        known = "" if level_id is None else f" ({name!r} is {level_id})"
        raise UnknownLevelError(f"level {name!r} is not in this data{known}{where}")
    close = difflib.get_close_matches(_key(name), list(_lookup()), n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(sorted({_lookup()[c] for c in close}))}?" if close else ""
    raise UnknownLevelError(
        f"unknown level of theory {name!r}{hint} (see 'mfdata levels' for all known levels)"
    )
