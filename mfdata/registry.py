"""The local registry: the stores a user has converted, found by name.

A JSON file ``stores.json`` under ``$MFKIT_HOME`` (default: ``$XDG_DATA_HOME/mfkit``, else
``~/.local/share/mfkit``) maps store names to absolute paths. Wherever a STORE is asked for, a
registered name works as well as a path. Names follow :data:`mfdata.schema.NAME_PATTERN`.
Registering is a read-modify-write of ``stores.json`` under the registry's lock
(``stores.json.lock``), so concurrent registrations all land.
"""

from __future__ import annotations

import json
from pathlib import Path

from mfdata.files import atomic_write_text, kill_point
from mfdata.home import home
from mfdata.schema import check_name
from mfdata.store.lock import locked
from mfdata.store.manifest import StoreError, parse_json_object
from mfdata.store.remote import is_url
from mfdata.store.store import Store


def _registry_file() -> Path:
    return home() / "stores.json"


def registered() -> dict[str, str]:
    """Store name -> path."""
    path = _registry_file()
    if not path.is_file():
        return {}
    data = parse_json_object(path.read_bytes(), path, "store registry")
    if not all(isinstance(v, str) for v in data.values()):
        raise StoreError(f"{path}: unreadable store registry: not an object of paths")
    return {str(k): v for k, v in data.items()}


def register(name: str, path: str | Path) -> None:
    """Record ``name`` -> ``path``; a name already used by another existing store is an error."""
    file = _registry_file()
    file.parent.mkdir(parents=True, exist_ok=True)
    kill_point("register")
    with locked(file.with_name(file.name + ".lock"), f"the store registry {file}"):
        check_name_free(name, path)  # inside the lock: the registry as others left it
        stores = registered()
        stores[name] = str(Path(path).resolve())
        atomic_write_text(file, json.dumps(stores, indent=2, sort_keys=True) + "\n")
        for leftover in file.parent.glob(f".{file.name}.*.partial"):  # every writer holds the
            leftover.unlink(missing_ok=True)  # lock: these are what killed ones left


def check_name_free(name: str, path: str | Path) -> None:
    """Fail before any work when ``name`` is not a safe name or belongs to another existing
    store."""
    check_name(name, "store name (--name)")
    old = registered().get(name)
    taken = old is not None and (Path(old) / "manifest.json").is_file()
    if taken and old != str(Path(path).resolve()):
        raise StoreError(
            f"store name {name!r} is already registered for {old}; choose another with --name"
        )


def open_store(name_or_path: str | Path) -> Store:
    """A store by path, or by its registered name (a store at a URL is read-only: those that
    read one open it with ``mfdata.loading.sources.open_source``)."""
    if is_url(name_or_path):
        raise StoreError(
            f"{name_or_path}: a store at a URL is read-only here (info, verify, query, stats and "
            "the Zarr reader take one); this command needs a local store"
        )
    path = Path(name_or_path)
    if path.exists():
        return Store(path)
    stores = registered()
    if str(name_or_path) in stores:
        return Store(stores[str(name_or_path)])
    known = ", ".join(sorted(stores)) or "none registered"
    raise StoreError(f"{name_or_path}: no such store path or registered name (known: {known})")
