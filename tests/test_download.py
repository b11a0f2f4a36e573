"""``mfdata download``: files served by a real HTTP server on 127.0.0.1, cut at half and resumed
with a range request, corrupted and refused, restarted where the server ignores ranges, and then
converted by ``mfdata convert --catalog NAME`` with no file arguments.

The served bytes are real files of ../shared/data (acetylacetone, BOTNet-datasets), read from
there. The catalog entry that points at the server is a user entry in $MFKIT_HOME/catalogs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mfdata.catalog import CatalogError, find_entry, load_catalog, user_catalog_dir
from mfdata.download import DownloadError, download, download_dir
from mfdata.files import file_sha256
from mfdata.resources import catalog_dir
from mfdata.schema import UNKNOWN, CatalogEntry, CatalogFile
from tests.conftest import run_cli

DATA = "test_dihedral.xyz"  # 45 frames, 43,974 bytes
ISOLATED = "isolated_atoms.xyz"
MIRROR = "acac-mirror"


@dataclass
class Served:
    """What the server serves, how it misbehaves, and the requests it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_next: set[str] = field(default_factory=set)  # paths whose next answer stops at half
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class _Handler(BaseHTTPRequestHandler):
    """GET with ``Range: bytes=N-`` (206, or 416 past the end), which the standard library's
    SimpleHTTPRequestHandler does not support."""

    def do_GET(self) -> None:
        served: Served = self.server.served  # type: ignore[attr-defined]
        asked = self.headers.get("Range")
        served.requests.append((self.path, asked))
        body = served.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if asked is not None and not served.ignore_range:
            start = int(asked.removeprefix("bytes=").removesuffix("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in served.cut_next:
            served.cut_next.discard(self.path)
            self.wfile.write(body[start : len(body) // 2])
            self.close_connection = True  # the connection closes with half the bytes sent
            return
        self.wfile.write(body[start:])

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read ``Served.requests`` instead."""


@dataclass
class Server:
    served: Served
    base: str


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.served = Served()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(httpd.served, f"http://127.0.0.1:{httpd.server_address[1]}")  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _source(shared: Path, name: str) -> bytes:
    return (shared / "botnet_acac" / name).read_bytes()


def _mirror(
    server: Server,
    files: dict[str, bytes],
    *,
    licence: str = "MIT",
    known: bool = True,
) -> CatalogEntry:
    """A user catalog entry: the acac entry, its files served by ``server`` (with their sha256
    and size when ``known``; the bytes served may then be made to differ)."""
    data = yaml.safe_load(catalog_dir().joinpath("acac.yaml").read_text(encoding="utf-8"))
    data.update(name=MIRROR, aliases=[], licence=licence, files=[])
    for name, body in files.items():
        server.served.files[f"/acac/{name}"] = body
        data["files"].append(
            {
                "name": name,
                "url": f"{server.base}/acac/{name}",
                "sha256": hashlib.sha256(body).hexdigest() if known else UNKNOWN,
                "size": len(body) if known else UNKNOWN,
            }
        )
    user_catalog_dir().mkdir(parents=True, exist_ok=True)
    (user_catalog_dir() / f"{MIRROR}.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return find_entry(MIRROR)


def test_a_transfer_cut_at_half_resumes_from_there(shared, server, tmp_path):
    body = _source(shared, DATA)
    entry = _mirror(server, {DATA: body})
    server.served.cut_next.add(f"/acac/{DATA}")
    with pytest.raises(DownloadError) as cut:
        download(entry, tmp_path, echo=lambda _: None)
    half = len(body) // 2
    assert f"{server.base}/acac/{DATA}: connection closed after {half} of {len(body)} bytes" in (
        str(cut.value)
    )
    assert (tmp_path / f"{DATA}.part").stat().st_size == half
    assert not (tmp_path / DATA).exists()

    download(entry, tmp_path, echo=lambda _: None)
    assert server.served.requests[-1] == (f"/acac/{DATA}", f"bytes={half}-")
    assert file_sha256(tmp_path / DATA) == hashlib.sha256(body).hexdigest()
    assert not (tmp_path / f"{DATA}.part").exists()


def test_a_corrupted_file_is_refused_and_removed(shared, server, tmp_path):
    body = _source(shared, DATA)
    entry = _mirror(server, {DATA: body})
    flipped = bytearray(body)
    flipped[len(body) // 3] ^= 0x01
    server.served.files[f"/acac/{DATA}"] = bytes(flipped)
    with pytest.raises(DownloadError) as refused:
        download(entry, tmp_path, echo=lambda _: None)
    message = str(refused.value)
    assert "\n" not in message
    for part in (
        DATA,
        f"{server.base}/acac/{DATA}",
        hashlib.sha256(body).hexdigest(),
        hashlib.sha256(flipped).hexdigest(),
    ):
        assert part in message
    assert list(tmp_path.iterdir()) == []  # no final file, no .part: a rerun starts clean


def test_a_server_that_ignores_ranges_restarts_from_zero(shared, server, tmp_path):
    body = _source(shared, DATA)
    entry = _mirror(server, {DATA: body})
    server.served.cut_next.add(f"/acac/{DATA}")
    with pytest.raises(DownloadError):
        download(entry, tmp_path, echo=lambda _: None)
    server.served.ignore_range = True
    lines: list[str] = []
    download(entry, tmp_path, echo=lines.append)
    assert server.served.requests[-1] == (f"/acac/{DATA}", f"bytes={len(body) // 2}-")
    assert any("ignores ranges" in line for line in lines)
    assert (tmp_path / DATA).read_bytes() == body


def test_unknown_licence_and_checksum_are_said_and_the_checksum_recorded(shared, server, tmp_path):
    body = _source(shared, DATA)
    entry = _mirror(server, {DATA: body}, licence=UNKNOWN, known=False)
    lines: list[str] = []
    download(entry, tmp_path, echo=lines.append)
    assert "licence" in lines[0] and "unknown" in lines[0] and entry.url in lines[0]
    digest = hashlib.sha256(body).hexdigest()
    assert any("no sha256" in line and digest in line for line in lines)
    (record,) = json.loads((tmp_path / "downloads.json").read_text())["files"]
    assert (record["name"], record["sha256"], record["size"]) == (DATA, digest, len(body))

    asked = len(server.served.requests)
    download(entry, tmp_path, echo=lines.append)  # checked against the record: not fetched again
    assert len(server.served.requests) == asked
    assert lines[-1] == f"{DATA}: already downloaded and checked"


def test_a_complete_part_is_checked_not_fetched_again(shared, server, tmp_path):
    """A process killed between the transfer and the rename leaves a whole ``.part``: the server
    answers 416 to the range past its end, and the check renames it."""
    body = _source(shared, DATA)
    entry = _mirror(server, {DATA: body}, known=False)
    (tmp_path / f"{DATA}.part").write_bytes(body)
    download(entry, tmp_path, echo=lambda _: None)
    assert server.served.requests == [(f"/acac/{DATA}", f"bytes={len(body)}-")]
    assert (tmp_path / DATA).read_bytes() == body


def test_download_then_convert_with_the_catalog_alone(shared, server, tmp_path):
    _mirror(server, {DATA: _source(shared, DATA), ISOLATED: _source(shared, ISOLATED)})
    out = tmp_path / "store"
    early = run_cli("convert", "--catalog", MIRROR, "--out", out, check=False)
    assert early.returncode == 2 and f"mfdata download {MIRROR}" in early.stderr
    assert not out.exists()

    fetched = run_cli("download", MIRROR)
    assert str(download_dir(find_entry(MIRROR))) in fetched.stdout
    run_cli("convert", "--catalog", MIRROR, "--out", out)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    level = manifest["levels"]["pbe-d3-def2svp"]
    assert level["labels"]["energy"]["count"] == 45  # the isolated atoms are not structures
    assert set(level["atom_energies"]) == {"H", "C", "O"}  # found beside the download
    assert [Path(f["path"]).name for f in manifest["provenance"]["inputs"]] == [DATA, ISOLATED]


def test_an_entry_without_files_says_where_to_get_them(tmp_path):
    entry = find_entry("qm9")
    with pytest.raises(DownloadError, match=r"qm9: the catalog lists no files.*sdata\.2014\.22"):
        download(entry, tmp_path, echo=lambda _: None)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "../train.xyz"}, "name"),
        ({"name": "sub/train.xyz"}, "name"),
        ({"name": ".hidden"}, "name"),
        ({"name": "train.xyz.part"}, "name"),
        ({"name": "downloads.json"}, "name"),
        ({"url": "ftp://example.org/train.xyz"}, "url"),
        ({"sha256": "ABC"}, "sha256"),
        ({"size": -1}, "size"),
    ],
)
def test_unsafe_or_malformed_files_are_refused(change, field):
    good = {"name": "train.xyz", "url": "https://example.org/t.xyz", "sha256": UNKNOWN, "size": 1}
    CatalogFile.model_validate(good)
    with pytest.raises(ValidationError, match=field):
        CatalogFile.model_validate({**good, **change})


def test_a_user_entry_cannot_take_a_packaged_name(private_registry):
    folder = private_registry / "catalogs"
    folder.mkdir()
    text = catalog_dir().joinpath("acac.yaml").read_text(encoding="utf-8")
    (folder / "acac.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError, match=r"catalogs/acac\.yaml: entry 'acac' is defined twice"):
        load_catalog()
