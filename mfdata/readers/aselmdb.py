"""fairchem's ASE-LMDB files (``*.aselmdb``: OMol25, OPoly26, OMat24), read through
ase-db-backends.

Rows are read as fairchem's ``AseDBDataset`` sees them: ``row.toatoms()`` with the row's ``data``
merged into ``atoms.info``, so that OMol25's ``charge``, ``spin`` (the multiplicity 2S+1) and
``data_id`` are where the ASE reader (:mod:`mfdata.readers.ase_io`) looks for them; the energy,
forces and stress are the rows' calculator results, in ASE's units as fairchem writes them.

Nothing read here runs code: ase-db-backends stores each row as zlib-compressed JSON decoded by
``ase.io.jsonio`` (numbers, strings, lists, arrays of plain dtypes and a fixed list of ASE
objects), never a pickle. What the backend does not check is checked first: that the file is an
LMDB environment whose pages all lie inside the file (LMDB maps the file, and reading a page past
the end of a truncated file kills the process with SIGBUS), and that its row counter matches the
rows it holds (the backend lists every id up to the counter before reading anything).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator

import lmdb
from ase import Atoms
from ase_db_backends.aselmdb import RESERVED_KEYS, LMDBDatabase, decode_bytestream

from mfdata.records import InvalidDataError

# What decoding a damaged row raises: zlib, JSON (ValueError), ase's row and array builders.
_ROW_ERRORS = (
    lmdb.Error,
    zlib.error,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    AssertionError,
)


def iter_aselmdb(path: str) -> Iterator[Atoms]:
    """Every row of the file at ``path`` as Atoms, ``data`` merged into ``info`` (fairchem's
    view); one file open at a time, read row by row."""
    n_rows = _check_environment(path)
    try:
        db = LMDBDatabase(path, readonly=True, readahead=False)
    except _ROW_ERRORS as exc:
        raise InvalidDataError(f"{path}: cannot be read as an aselmdb file: {exc}") from exc
    try:
        if len(db.ids) != n_rows:
            raise InvalidDataError(
                f"{path}: its row counter lists {len(db.ids)} rows, but it holds {n_rows}"
            )
        for record, row_id in enumerate(db.ids):
            yield _atoms(path, db, record, row_id)
    finally:
        db.close()


def _atoms(path: str, db: LMDBDatabase, record: int, row_id: int) -> Atoms:
    try:
        row = db.get(id=row_id)
        atoms = row.toatoms()
        data = row.data
    except _ROW_ERRORS as exc:
        raise InvalidDataError(
            f"{path}: record {record} (row id {row_id}): cannot be read: {type(exc).__name__}: "
            f"{exc}"
        ) from exc
    atoms.info.update(data)
    return atoms


def _check_environment(path: str) -> int:
    """The number of rows of the LMDB file at ``path``, after checking that every page lies
    inside the file and that the row counter (``nextid``) is not larger than the rows held."""
    try:
        env = lmdb.open(path, subdir=False, readonly=True, lock=False, readahead=False)
    except lmdb.Error as exc:
        raise InvalidDataError(f"{path}: not an LMDB (aselmdb) file: {exc}") from exc
    try:
        pages = env.info()["last_pgno"] + 1
        page_size = env.stat()["psize"]
        size = os.path.getsize(path)
        if pages * page_size > size:
            raise InvalidDataError(
                f"{path}: truncated: its pages need {pages * page_size} bytes, the file has {size}"
            )
        with env.begin() as txn:
            reserved = [key for key in RESERVED_KEYS if txn.get(key.encode("ascii")) is not None]
            n_rows = env.stat()["entries"] - len(reserved)
            next_id = _counter(path, txn.get(b"nextid"))
    finally:
        env.close()
    if next_id - 1 > n_rows + _MAX_DELETED:
        raise InvalidDataError(
            f"{path}: its row counter (nextid {next_id}) is far beyond the {n_rows} rows it holds"
        )
    return n_rows


# Deleted rows a file may have beyond those it holds: fairchem's shards have none.
_MAX_DELETED = 1_000_000


def _counter(path: str, raw: bytes | None) -> int:
    if raw is None:
        return 1
    try:
        value = decode_bytestream(raw, decompress=True, json_decode=True)
    except _ROW_ERRORS as exc:
        raise InvalidDataError(f"{path}: row counter (nextid) cannot be read: {exc}") from exc
    if not isinstance(value, int) or value < 1:
        raise InvalidDataError(f"{path}: row counter (nextid) is {value!r}, not a row number")
    return value
