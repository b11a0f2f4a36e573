"""The local registry: the stores a user has converted, found by name.

A JSON file ``stores.json`` under ``$MFKIT_HOME`` (default: ``$XDG_DATA_HOME/mfkit``, else
``~/.local/share/mfkit``) maps store names to absolute paths. Wherever a STORE is asked for, a
registered name works as well as a path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mfdata.files import atomic_write_text
from mfdata.store.manifest import StoreError
from mfdata.store.store import Store


def home() -> Path:
    if "MFKIT_HOME" in os.environ:
        return Path(os.environ["MFKIT_HOME"])
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "mfkit"


def _registry_file() -> Path:
    return home() / "stores.json"


def registered() -> dict[str, str]:
    """Store name -> path."""
    path = _registry_file()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise StoreError(f"{path}: unreadable store registry: {exc}") from exc
    return {str(k): str(v) for k, v in data.items()}


def register(name: str, path: str | Path) -> None:
    """Record ``name`` -> ``path``; a name already used by another existing store is an error."""
    check_name_free(name, path)
    stores = registered()
    stores[name] = str(Path(path).resolve())
    file = _registry_file()
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, json.dumps(stores, indent=2, sort_keys=True) + "\n")


def check_name_free(name: str, path: str | Path) -> None:
    """Fail before any work when ``name`` belongs to another existing store."""
    old = registered().get(name)
    taken = old is not None and (Path(old) / "manifest.json").is_file()
    if taken and old != str(Path(path).resolve()):
        raise StoreError(
            f"store name {name!r} is already registered for {old}; choose another with --name"
        )


def open_store(name_or_path: str | Path) -> Store:
    """A store by path, or by its registered name."""
    path = Path(name_or_path)
    if path.exists():
        return Store(path)
    stores = registered()
    if str(name_or_path) in stores:
        return Store(stores[str(name_or_path)])
    known = ", ".join(sorted(stores)) or "none registered"
    raise StoreError(f"{name_or_path}: no such store path or registered name (known: {known})")
