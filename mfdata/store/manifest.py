"""A store's ``manifest.json``: reading, validating and writing it, wherever the store lives.

Guarantees: a manifest is accepted only when it is a JSON object of a format version this mfkit
understands that validates as :class:`~mfdata.schema.DatasetManifest` and whose
``manifest_checksum`` (when it has one: every manifest mfkit 1.1 writes) matches its other fields;
anything else (deeply nested JSON included) is a :class:`StoreError` (or a ``FormatVersionError``)
naming the file, in one line. A local directory whose name marks it as the unfinished output of
an interrupted write is never a store, whatever it holds. A manifest is replaced atomically:
readers see the old one or the new one.

:func:`parse_json_object` is the one reader of every JSON file mfkit finds in a store or the
registry (manifests, LMDB layouts, saved selections, ``stores.json``): one-line errors naming the
file, deep nesting included.

:func:`parse_manifest` works on the bytes alone, so a store read through fsspec is checked by the
same rules as a local one.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mfdata.errors import MfkitError
from mfdata.files import atomic_write_text
from mfdata.levels import learn_levels
from mfdata.schema import FORMAT_VERSION, DatasetManifest, check_format_version

MANIFEST = "manifest.json"
PARTIAL_MARK = ".partial-"  # in the name of a directory being written: never a store
PARTIAL_NAME = re.compile(r"^\..+\.partial-[0-9a-f]{8}$")  # what atomic_directory makes
M = TypeVar("M", bound=BaseModel)


class StoreError(MfkitError, ValueError):
    """A path that is not a valid store, or a store that fails verification."""


def parse_json_object(raw: bytes | str, where: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in ``raw``, read from the file ``where`` (a store's or the registry's).

    The one reader of the JSON files mfkit finds in stores and the registry: anything but a
    JSON object, hostile nesting included (``json`` raises RecursionError), is a one-line
    :class:`StoreError` naming the file, never a traceback.
    """
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise StoreError(f"{where}: unreadable {what}: RecursionError") from exc
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError: one line each
        raise StoreError(f"{where}: unreadable {what}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise StoreError(f"{where}: invalid {what}: not a JSON object")
    return data


def validated(model: type[M], data: dict[str, Any], where: str | Path, what: str) -> M:
    """``data`` as ``model``; a validation error is one line: the first problem, and a count."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        loc = ".".join(map(str, errors[0]["loc"])) or "top level"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise StoreError(f"{where}: invalid {what}: {loc}: {errors[0]['msg']}{more}") from exc


def parse_manifest(raw: bytes | str, store: str | Path) -> DatasetManifest:
    """The manifest of the store at ``store`` (a path or URL, for messages) from its bytes."""
    where = f"{store}/{MANIFEST}"
    data = parse_json_object(raw, where, "manifest")
    check_format_version(str(data.get("format_version", "0")), store)
    manifest = validated(DatasetManifest, data, where, "manifest")
    recorded = manifest.manifest_checksum
    if recorded is not None and recorded != manifest_digest(manifest):
        raise StoreError(
            f"{where}: manifest checksum mismatch: the file was changed outside mfkit or is "
            "corrupted (its statistics, splits or counts cannot be trusted)"
        )
    # a store defines its own levels: they resolve wherever it is read, registered or not
    learn_levels(s.definition for s in manifest.levels.values() if s.definition is not None)
    return manifest


def json_digest(data: Any) -> str:
    """sha256 of the canonical JSON of ``data`` (sorted keys, no spaces): what the checksum a
    JSON file carries of its own other fields covers."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_digest(manifest: DatasetManifest) -> str:
    """sha256 of the canonical JSON of every field but ``manifest_checksum``."""
    return json_digest(manifest.model_dump(mode="json", exclude={"manifest_checksum"}))


def read_manifest(directory: Path) -> DatasetManifest:
    """The manifest of the store directory ``directory``, checked by :func:`parse_manifest`."""
    if PARTIAL_NAME.match(directory.resolve().name):
        raise StoreError(
            f"{directory}: the unfinished output of an interrupted conversion, not a store; "
            "delete it and convert again"
        )
    path = directory / MANIFEST
    if not path.is_file():
        raise StoreError(f"{directory}: not an mfkit store (no {MANIFEST})")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{path}: unreadable manifest: {exc}") from exc
    return parse_manifest(raw, directory)


def sealed(manifest: DatasetManifest) -> DatasetManifest:
    """``manifest`` in this mfkit's format version and with its checksum: what is written."""
    manifest = manifest.model_copy(update={"format_version": FORMAT_VERSION})
    return manifest.model_copy(update={"manifest_checksum": manifest_digest(manifest)})


def manifest_text(manifest: DatasetManifest) -> str:
    """The text of ``manifest.json`` for a :func:`sealed` manifest."""
    return manifest.model_dump_json(indent=2) + "\n"


def write_manifest(directory: Path, manifest: DatasetManifest) -> DatasetManifest:
    """Replace ``directory/manifest.json`` atomically, in this mfkit's format version and with
    its checksum; return what was written."""
    manifest = sealed(manifest)
    atomic_write_text(directory / MANIFEST, manifest_text(manifest))
    return manifest
