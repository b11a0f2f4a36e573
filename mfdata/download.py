"""``mfdata download``: a catalog entry's files, fetched over HTTP(S), resumed, checked, recorded.

Each file is written to ``NAME.part`` beside its final name and renamed only once its size and
sha256 match the catalog, so a file at its final name has always been checked. An interrupted
transfer keeps its ``.part``, and the next run asks for the rest with ``Range: bytes=N-`` (a
server that answers with the whole file instead starts it over). A file that fails its check is
removed, so a rerun starts clean. Where the catalog does not know a checksum, the one computed
is recorded in ``DIR/downloads.json`` (atomically), for later checks and for the user to pin.
"""

from __future__ import annotations

import fcntl
import http.client
import os
import re
import urllib.error
import urllib.request
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from mfdata.catalog import find_entry
from mfdata.errors import MfkitError
from mfdata.files import atomic_write_text, file_sha256, writing
from mfdata.home import home
from mfdata.progress import Echo
from mfdata.schema import (
    DOWNLOAD_LOG,
    PART_SUFFIX,
    UNKNOWN,
    CatalogEntry,
    CatalogFile,
    DownloadedFile,
    DownloadLog,
)
from mfdata.store.lock import locked
from mfdata.store.manifest import StoreError, parse_json_object, validated

BLOCK = 1 << 20  # bytes read from the network at a time
LOG_LOCK = ".downloads.lock"  # catalog file names never start with a dot
TIMEOUT_S = 60  # for connecting and for each read
# Content-Range of a 206 (``bytes START-END/TOTAL``) or a 416 (``bytes */TOTAL``)
CONTENT_RANGE = re.compile(r"^bytes (?:(\d+)-\d+|\*)/(\d+|\*)$")


class DownloadError(MfkitError):
    """A file that could not be fetched, or whose bytes are not what the catalog says."""


def download_dir(entry: CatalogEntry) -> Path:
    """Where ``mfdata download NAME`` puts an entry's files unless told otherwise, and where
    ``mfdata convert --catalog NAME`` looks for them."""
    return home() / "downloads" / entry.name


def download(entry: CatalogEntry, directory: Path | None = None, echo: Echo = print) -> Path:
    """Fetch every file ``entry`` lists into ``directory`` (default :func:`download_dir`) and
    return the directory; files already there and checked are kept. An entry that lists no
    files is an error naming where to get them."""
    directory = download_dir(entry) if directory is None else directory
    if entry.licence == UNKNOWN:
        echo(f"{entry.name}: the licence of {entry.title} is unknown; check {entry.url}")
    if not entry.files:
        raise DownloadError(
            f"{entry.name}: the catalog lists no files to download; get them from {entry.url}"
        )
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
    for file in entry.files:
        _fetch(entry, file, directory, echo)
    return directory


def catalog_sources(name: str) -> list[Path]:
    """The downloaded files of catalog entry ``name`` that ``mfdata convert`` reads, each checked
    (size and sha256); the entry's isolated-atom file is left to be found beside them."""
    entry = find_entry(name)
    directory = download_dir(entry)
    if not entry.files:
        raise DownloadError(
            f"{entry.name}: the catalog lists no files to download; give the files to convert"
        )
    log = _read_log(directory, entry)
    missing = [f.name for f in entry.files if not _checked(f, directory / f.name, log)]
    if missing:
        raise DownloadError(
            f"{directory}: {', '.join(missing)} not downloaded or failing their checks; run "
            f"'mfdata download {entry.name}', or give the files to convert"
        )
    isolated = entry.reader.isolated_atoms_file if entry.reader is not None else None
    return [directory / f.name for f in entry.files if f.name != isolated]


def _fetch(entry: CatalogEntry, file: CatalogFile, directory: Path, echo: Echo) -> None:
    """One file: kept if it is there and checked, else transferred, checked and renamed."""
    target = directory / file.name
    if _checked(file, target, _read_log(directory, entry)):
        echo(f"{file.name}: already downloaded and checked")
        return
    part = directory / f"{file.name}{PART_SUFFIX}"
    with writing(part), open(part, "ab") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"{part}: another process is downloading it") from None
        _transfer(file, handle, echo)
        handle.flush()
        os.fsync(handle.fileno())
        digest = _check(file, part)
        os.replace(part, target)
    if file.sha256 == UNKNOWN:
        echo(f"{file.name}: the catalog has no sha256; it is {digest} (recorded in {DOWNLOAD_LOG})")
    record = DownloadedFile(
        name=file.name,
        url=file.url,
        size=target.stat().st_size,
        sha256=digest,
        downloaded=datetime.now(timezone.utc),
    )
    log_path = directory / DOWNLOAD_LOG
    with locked(directory / LOG_LOCK, str(log_path)):  # downloads of other files of the entry
        kept = [r for r in _read_log(directory, entry).files if r.name != file.name]
        updated = DownloadLog(entry=entry.name, files=[*kept, record])
        atomic_write_text(log_path, updated.model_dump_json(indent=2) + "\n")
    echo(f"{file.name}: downloaded and checked ({record.size} bytes)")


def _transfer(file: CatalogFile, handle: BinaryIO, echo: Echo) -> None:
    """Append the rest of ``file`` to the open ``.part``: from its current size where the server
    honours the range, from the start where it does not. A broken transfer keeps what came."""
    offset = handle.seek(0, os.SEEK_END)
    if file.size != UNKNOWN and offset >= file.size:
        return  # complete (or too long): the check decides
    headers = {"User-Agent": f"mfkit/{version('mfkit')}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(file.url, headers=headers), timeout=TIMEOUT_S
        )
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not offset:
            raise DownloadError(f"{file.url}: HTTP {exc.code} {exc.reason}") from None
        _, total = _content_range(exc.headers.get("Content-Range", ""))
        if total is None or total == offset:
            return  # nothing beyond the .part's size: the check decides
        echo(f"{file.name}: {handle.name} is not a part of the file; starting again")
        handle.seek(0)
        handle.truncate()
        _transfer(file, handle, echo)
        return
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _interrupted(file, handle, getattr(exc, "reason", exc)) from None
    with response:
        if response.status == 206:
            start, _ = _content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                raise DownloadError(
                    f"{file.url}: asked for bytes from {offset}, the server sent from {start}"
                )
        elif offset:
            echo(f"{file.name}: the server ignores ranges; starting again from byte 0")
            handle.seek(0)
            handle.truncate()
            offset = 0
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        received = 0
        with tqdm(
            total=None if expected is None else offset + expected,
            initial=offset,
            desc=file.name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            leave=False,
            mininterval=0.5,
            disable=None,
        ) as bar:
            try:
                while block := response.read(BLOCK):
                    handle.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                raise _interrupted(file, handle, exc) from None
    if expected is not None and received < expected:
        raise _interrupted(file, handle, f"connection closed after {received} of {expected} bytes")


def _interrupted(file: CatalogFile, handle: BinaryIO, reason: object) -> DownloadError:
    """The one line for a transfer that broke off; the ``.part`` stays for the next run."""
    handle.flush()
    kept = handle.tell()
    then = f"{kept} bytes kept in {handle.name}: rerun to resume" if kept else "rerun to retry"
    return DownloadError(f"{file.url}: {reason}; {then}")


def _content_range(header: str) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header; None where it does not say."""
    match = CONTENT_RANGE.match(header.strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (
        int(start) if start is not None else None,
        int(total) if total.isdigit() else None,
    )


def _check(file: CatalogFile, part: Path) -> str:
    """The sha256 of a finished ``.part``; one that cannot be the file is removed (a rerun
    starts clean), one that is short is kept (a rerun resumes)."""
    size = part.stat().st_size
    if file.size != UNKNOWN and size < file.size:
        raise DownloadError(
            f"{file.url}: the transfer ended at {size} of {file.size} bytes; {part} kept: "
            "rerun to resume"
        )
    if file.size != UNKNOWN and size > file.size:
        part.unlink()
        raise DownloadError(
            f"{file.name} from {file.url}: {size} bytes, the catalog expects {file.size}; the "
            "download was removed (a rerun fetches it again)"
        )
    digest = file_sha256(part)
    if file.sha256 != UNKNOWN and digest != file.sha256:
        part.unlink()
        raise DownloadError(
            f"{file.name} from {file.url}: sha256 is {digest}, the catalog expects "
            f"{file.sha256}; the download was removed (a rerun fetches it again)"
        )
    return digest


def _checked(file: CatalogFile, path: Path, log: DownloadLog) -> bool:
    """Whether ``path`` holds ``file``: its size and sha256 are the catalog's, or, where the
    catalog does not know them, what was recorded when it was downloaded from the same URL."""
    if not path.is_file():
        return False
    recorded = next((r for r in log.files if r.name == file.name and r.url == file.url), None)
    sha256, size = file.sha256, file.size
    if recorded is not None:
        sha256 = recorded.sha256 if sha256 == UNKNOWN else sha256
        size = recorded.size if size == UNKNOWN else size
    if sha256 == UNKNOWN or (size != UNKNOWN and path.stat().st_size != size):
        return False
    return file_sha256(path) == sha256


def _read_log(directory: Path, entry: CatalogEntry) -> DownloadLog:
    """What was downloaded into ``directory`` (nothing yet where there is no record); a record
    of another entry's files is an error, so two entries never share a directory."""
    path = directory / DOWNLOAD_LOG
    if not path.is_file():
        return DownloadLog(entry=entry.name)
    try:
        data = parse_json_object(path.read_bytes(), path, "record of downloads")
        log = validated(DownloadLog, data, path, "record of downloads")
    except StoreError as exc:
        raise DownloadError(f"{exc}; remove it and rerun") from None
    if log.entry != entry.name:
        raise DownloadError(f"{path}: records the files of {log.entry}, not {entry.name}")
    return log
