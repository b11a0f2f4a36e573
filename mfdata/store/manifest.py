"""A store's ``manifest.json``: reading, validating and writing it, wherever the store lives.

Guarantees: a manifest is accepted only when it is a JSON object of a format version this mfkit
understands that validates as :class:`~mfdata.schema.DatasetManifest`; anything else is a
:class:`StoreError` (or a ``FormatVersionError``) naming the file, in one line. A local directory
whose name marks it as the unfinished output of an interrupted write is never a store, whatever
it holds. A manifest is replaced atomically: readers see the old one or the new one.

:func:`parse_manifest` works on the bytes alone, so a store read through fsspec is checked by the
same rules as a local one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import ValidationError

from mfdata.errors import MfkitError
from mfdata.files import atomic_write_text
from mfdata.schema import DatasetManifest, check_format_version

MANIFEST = "manifest.json"
PARTIAL_MARK = ".partial-"  # in the name of a directory being written: never a store
_PARTIAL_NAME = re.compile(r"^\..+\.partial-[0-9a-f]{8}$")  # what atomic_directory makes


class StoreError(MfkitError, ValueError):
    """A path that is not a valid store, or a store that fails verification."""


def parse_manifest(raw: bytes | str, store: str | Path) -> DatasetManifest:
    """The manifest of the store at ``store`` (a path or URL, for messages) from its bytes."""
    where = f"{store}/{MANIFEST}"
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"{where}: unreadable manifest: {exc}") from exc
    if not isinstance(data, dict):
        raise StoreError(f"{where}: invalid manifest: not a JSON object")
    check_format_version(str(data.get("format_version", "0")), store)
    try:
        return DatasetManifest.model_validate(data)
    except ValidationError as exc:  # one line for the CLI: the first problem, and a count
        errors = exc.errors()
        loc = ".".join(map(str, errors[0]["loc"])) or "top level"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise StoreError(f"{where}: invalid manifest: {loc}: {errors[0]['msg']}{more}") from exc


def read_manifest(directory: Path) -> DatasetManifest:
    """The manifest of the store directory ``directory``, checked by :func:`parse_manifest`."""
    if _PARTIAL_NAME.match(directory.resolve().name):
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


def write_manifest(directory: Path, manifest: DatasetManifest) -> None:
    """Replace ``directory/manifest.json`` atomically."""
    atomic_write_text(directory / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
