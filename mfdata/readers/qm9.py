"""QM9 (Ramakrishnan et al. 2014): one XYZ-like text file per molecule, released as one archive.

The layout is the data descriptor's (Scientific Data 1, 140022 (2014), Tables 2 and 3): each
``dsgdb9nsd_NNNNNN.xyz`` holds, on line 1, the atom count n; on line 2, ``gdb`` and the molecule's
index, then 15 tab-separated scalars: rotational constants A B C (GHz), dipole moment mu (Debye),
polarisability alpha (Bohr^3), homo lumo gap (Hartree), r2 (Bohr^2), zpve (Hartree), U0 U H G
(Hartree) and Cv (cal/mol K); then n lines ``symbol x y z mulliken_charge`` (Å, e); then a line of
harmonic frequencies (cm^-1), a line of two SMILES and a line of two InChI. Some numbers use
Mathematica's ``*^`` exponent notation (``1.2345*^-6`` is 1.2345e-6). The release ships the
133,885 files as one archive, ``dsgdb9nsd.xyz.tar.bz2``.

All values are at B3LYP/6-31G(2df,p) (Gaussian 09). Stored: positions, the electronic energy
U0 - zpve (U0 is the internal energy at 0 K, which includes the zero-point energy) and the Mulliken
charges; the gdb index is each molecule's source id. The other scalars and the frequencies are
named at conversion and listed in the manifest, not stored; the dipole is a magnitude only, so it
is no dipole label. An archive is read member by member in its own order, one in memory at a time.
"""

from __future__ import annotations

import lzma
import math
import re
import tarfile
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers as ATOMIC_NUMBERS

from mfdata.levels import resolve_level
from mfdata.progress import progress
from mfdata.records import InvalidDataError, Label, Source, molecule_structures
from mfdata.units import conversion_factor

QM9_LEVEL = "b3lyp-631g2dfp"
UNITS = {"energy": "Hartree", "charges": "e"}
KEYS = {"energy": "U0 - zpve", "charges": "mulliken_charge"}
DIMENSIONS = (("energy", "energy"), ("charges", "charge"))
# Line 2 after "gdb <index>", in the data descriptor's order (Table 2).
SCALARS = ("A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve")
SCALARS += ("U0", "U", "H", "G", "Cv")
UNREAD = sorted([*SCALARS, "frequencies"])
# archive suffix -> tarfile's mode for it
ARCHIVE_MODES = {
    ".tar": "r:",
    ".tar.bz2": "r:bz2",
    ".tbz2": "r:bz2",
    ".tar.gz": "r:gz",
    ".tgz": "r:gz",
    ".tar.xz": "r:xz",
}
ARCHIVE_SUFFIXES = tuple(ARCHIVE_MODES)
SUFFIXES = (".xyz", *ARCHIVE_SUFFIXES)
MEMBER_NAME = re.compile(r"dsgdb9nsd_\d+\.xyz")
# A molecule file is under 2 kB; anything far larger is not one and is not read into memory.
MAX_FILE_BYTES = 1 << 20
# What a damaged archive raises while its headers or members are read.
TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)


@dataclass
class Molecule:
    """One file's molecule: its gdb index, atoms, positions (Å), Mulliken charges (e) and
    U0 - zpve (Hartree)."""

    index: str
    numbers: list[int]
    positions: list[float]  # x y z of each atom, flat
    charges: list[float]
    energy: float


def _number(token: str, where: str) -> float:
    """``token`` as a float, ``*^`` read as an exponent; anything else is bad input (``float``
    alone would take ``1_0`` and non-ASCII digits)."""
    text = token.replace("*^", "e") if "*" in token else token
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or "_" in text or not text.isascii():
        raise InvalidDataError(f"{where} is {token!r}, not a number")
    return value


def _finite(value: float, token: str, where: str) -> float:
    if not math.isfinite(value):
        raise InvalidDataError(f"{where} is {token!r}, not a finite number")
    return value


def _atom_like(line: str) -> bool:
    """A line that starts with an element-like word and has columns after it (SMILES and InChI
    lines have two columns, the frequency line starts with a number)."""
    tokens = line.split()
    return len(tokens) >= 3 and tokens[0].isalpha()


def parse_molecule(data: bytes, where: str) -> Molecule:
    """One molecule file's contents; ``where`` (the file, and the archive member) starts every
    error message."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidDataError(f"{where}: not a text file: {exc}") from exc
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InvalidDataError(f"{where}: empty file")
    count = lines[0].split()
    if len(count) != 1 or not count[0].isdigit() or int(count[0]) < 1:
        raise InvalidDataError(f"{where}: line 1 is {lines[0]!r}, not an atom count")
    n = int(count[0])
    if len(lines) < 2:
        raise InvalidDataError(f"{where}: truncated: the file ends after line 1 (the atom count)")
    index, scalars = _properties(lines[1], where)
    for name in ("U0", "zpve"):
        _finite(scalars[name][0], scalars[name][1], f"{where}: line 2: {name} (the energy)")
    rest = lines[2:]
    k = 0
    while k < len(rest) and _atom_like(rest[k]):
        k += 1
    if k != n:
        ends = " and the file ends there (truncated)" if k == len(rest) else ""
        raise InvalidDataError(f"{where}: line 1 gives {n} atoms, but {k} atom lines follow{ends}")
    numbers: list[int] = []
    positions: list[float] = []
    charges: list[float] = []
    for number, line in enumerate(rest[:n], start=3):
        z, xyz, charge = _atom(line, f"{where}: line {number}")
        numbers.append(z)
        positions.extend(xyz)
        charges.append(charge)
    tail = len(rest) - n
    if tail < 3:
        missing = ("harmonic frequencies", "SMILES", "InChI")[tail:]
        named = " and ".join([", ".join(missing[:-1]), missing[-1]] if tail == 0 else missing)
        raise InvalidDataError(
            f"{where}: truncated: the file ends at line {len(lines)}, without its {named} "
            f"line{'s' if len(missing) > 1 else ''}"
        )
    if tail > 3:
        raise InvalidDataError(
            f"{where}: {len(lines)} lines, expected {n + 5} for {n} atoms: unexpected content "
            f"from line {n + 6} ({lines[n + 5][:40]!r})"
        )
    energy = scalars["U0"][0] - scalars["zpve"][0]
    return Molecule(index, numbers, positions, charges, energy)


def _properties(line: str, where: str) -> tuple[str, dict[str, tuple[float, str]]]:
    """The gdb index and the 15 scalars of line 2, each as (value, token)."""
    tokens = line.split()
    if not tokens or tokens[0] != "gdb":
        raise InvalidDataError(
            f"{where}: line 2 does not start with 'gdb' ({line[:40]!r}): not a QM9 molecule file"
        )
    if len(tokens) < 2 or not tokens[1].isdigit():
        found = repr(tokens[1]) if len(tokens) > 1 else "missing"
        raise InvalidDataError(f"{where}: line 2: the gdb index is {found}, not an integer")
    values = tokens[2:]
    if len(values) != len(SCALARS):
        raise InvalidDataError(
            f"{where}: line 2: {len(values)} values after 'gdb {tokens[1]}', expected "
            f"{len(SCALARS)} ({' '.join(SCALARS)})"
        )
    scalars = {
        name: (_number(token, f"{where}: line 2: {name}"), token)
        for name, token in zip(SCALARS, values, strict=True)
    }
    return str(int(tokens[1])), scalars


def _atom(line: str, where: str) -> tuple[int, tuple[float, float, float], float]:
    """(atomic number, position, Mulliken charge) of one atom line."""
    tokens = line.split()
    if len(tokens) != 5:
        raise InvalidDataError(
            f"{where}: {len(tokens)} columns, expected 5 (symbol x y z mulliken_charge)"
        )
    symbol = tokens[0]
    number = ATOMIC_NUMBERS.get(symbol, 0)
    if number < 1:  # ase's 'X' (a dummy atom) is 0
        raise InvalidDataError(f"{where}: unknown element symbol {symbol!r}")
    x, y, z = (
        _finite(_number(token, f"{where}: {axis}"), token, f"{where}: {axis}")
        for axis, token in zip("xyz", tokens[1:4], strict=True)
    )
    charge = _number(tokens[4], f"{where}: Mulliken charge")
    return number, (x, y, z), _finite(charge, tokens[4], f"{where}: Mulliken charge")


def is_archive(path: str) -> bool:
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def _looks_like_qm9(head: bytes) -> bool:
    """The first lines of a QM9 molecule file: an atom count, then ``gdb <index>``."""
    lines = head.decode("utf-8", "replace").splitlines()
    if len(lines) < 2:
        return False
    second = lines[1].split()
    return lines[0].strip().isdigit() and len(second) > 1 and second[0] == "gdb"


def is_qm9(path: str) -> bool:
    """A QM9 molecule file, or an archive whose first file is one (by name or content)."""
    try:
        if not is_archive(path):
            with open(path, "rb") as f:
                return _looks_like_qm9(f.read(4096))
        with _open_archive(path) as tar:
            for _ in range(16):  # directories may come first
                member = tar.next()
                if member is None or member.issym() or member.islnk():
                    return False
                if member.isfile():
                    handle = tar.extractfile(member)
                    head = handle.read(4096) if handle is not None else b""
                    named = MEMBER_NAME.fullmatch(Path(member.name).name) is not None
                    return named or _looks_like_qm9(head)
    except (*TAR_ERRORS, InvalidDataError):
        return False
    return False


def _read_file(path: str) -> bytes:
    size = Path(path).stat().st_size
    if size > MAX_FILE_BYTES:
        raise InvalidDataError(
            f"{path}: {size} bytes, too large for one QM9 molecule file (a .xyz of the "
            "release is under 2 kB; give the archive as a .tar, .tar.bz2 or .tar.gz)"
        )
    with open(path, "rb") as f:
        return f.read()


def _open_archive(path: str) -> tarfile.TarFile:
    """The archive at ``path``, opened with the compression its suffix names."""
    name = Path(path).name.lower()
    suffix = max((s for s in ARCHIVE_MODES if name.endswith(s)), key=len)
    try:
        return tarfile.open(path, ARCHIVE_MODES[suffix], tarinfo=_Header)
    except TAR_ERRORS as exc:
        truncated, reason = _reason(exc)
        what = "truncated" if truncated else f"cannot be read as a {suffix} archive"
        raise InvalidDataError(f"{path}: {what}: {reason}") from exc


def _reason(exc: BaseException) -> tuple[bool, str]:
    """Whether ``exc`` says the file is cut short, and what it says, on one line (tarfile
    reports a bzip2 file cut within its first block as 'not a bzip2 file')."""
    cause = exc.__cause__ if isinstance(exc.__cause__, EOFError) else exc
    text = " ".join(str(cause).split()) or type(cause).__name__
    return isinstance(cause, EOFError) or "unexpected end of data" in text, text


def _members(path: str, skipped: list[str]) -> Iterator[tuple[str, bytes]]:
    """(name, contents) of each .xyz file of the archive at ``path``, in the archive's order,
    one in memory at a time; directories are passed over, other files' names go to
    ``skipped``. A damaged or truncated archive is bad input naming the last member read."""
    last = "its start"
    with _open_archive(path) as tar:
        while True:
            try:
                member = tar.next()
            except TAR_ERRORS as exc:
                raise _damaged(path, last, exc) from exc
            if member is None:
                _check_end(path, tar, last)
                return
            name = member.name
            if member.isdir():
                continue
            if not member.isfile():
                raise InvalidDataError(
                    f"{path}: member {name}: a link or special file, not a molecule file"
                )
            if not name.lower().endswith(".xyz"):
                skipped.append(name)
                continue
            if member.size > MAX_FILE_BYTES:
                raise InvalidDataError(
                    f"{path}: member {name}: {member.size} bytes, too large for one QM9 "
                    "molecule file"
                )
            try:
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
            except TAR_ERRORS as exc:
                raise _damaged(path, f"member {name}", exc) from exc
            if len(data) != member.size:
                raise InvalidDataError(
                    f"{path}: member {name}: truncated: {len(data)} of {member.size} bytes"
                )
            last = f"member {name}"
            yield name, data


def _damaged(path: str, last: str, exc: BaseException) -> InvalidDataError:
    truncated, reason = _reason(exc)
    what = "truncated" if truncated else "damaged"
    return InvalidDataError(f"{path}: archive {what} after {last}: {reason}")


class _Header(tarfile.TarInfo):
    """A member header that leaves on its archive the error that stopped the reading of
    headers: tarfile takes a cut or damaged header after the first for the end of the archive
    without a word, and only the end-of-archive marker (a zero block) is one."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(archive)
        except tarfile.HeaderError as exc:
            archive.stopped_by = exc  # type: ignore[attr-defined]
            raise


def _check_end(path: str, tar: tarfile.TarFile, last: str) -> None:
    """The archive ended on its end-of-archive marker, not on a cut or damaged header."""
    stopped_by = getattr(tar, "stopped_by", None)
    if isinstance(stopped_by, tarfile.EOFHeaderError):
        return
    if stopped_by is None or isinstance(
        stopped_by, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)
    ):
        raise InvalidDataError(f"{path}: archive truncated after {last}: no end-of-archive marker")
    raise InvalidDataError(f"{path}: archive damaged after {last}: {stopped_by}")


def read_qm9(path: str, level: str = QM9_LEVEL) -> Source:
    """Positions, U0 - zpve and Mulliken charges of one QM9 .xyz file, or of every molecule of
    a tar archive of them (plain, bzip2, gzip or xz)."""
    level_id = resolve_level(level).id
    factors = {kind: conversion_factor(UNITS[kind], kind_of) for kind, kind_of in DIMENSIONS}
    numbers, positions, charges = array("B"), array("d"), array("d")
    n_atoms, energy = array("i"), array("d")
    ids: list[str] = []
    names: list[str] = []  # archive member of each molecule, for messages
    skipped: list[str] = []
    if is_archive(path):
        members: Iterator[tuple[str, bytes]] = _members(path, skipped)
    else:
        members = iter([("", _read_file(path))])
    for name, data in progress(members, f"reading {path}", " molecules"):
        molecule = parse_molecule(data, f"{path}: member {name}" if name else path)
        numbers.extend(molecule.numbers)
        positions.extend(molecule.positions)
        charges.extend(molecule.charges)
        n_atoms.append(len(molecule.numbers))
        energy.append(molecule.energy)
        ids.append(molecule.index)
        names.append(name)
    if not ids:
        raise InvalidDataError(f"{path}: no QM9 molecule (.xyz) files found in the archive")
    structures = molecule_structures(
        np.frombuffer(numbers, dtype=np.uint8),
        np.frombuffer(positions, dtype=np.float64).reshape(-1, 3).copy(),
        np.frombuffer(n_atoms, dtype=np.int32),
    )
    n = structures.n_structures
    structures.labels[(level_id, "energy")] = Label(
        np.frombuffer(energy, dtype=np.float64) * factors["energy"], np.ones(n, bool)
    )
    structures.labels[(level_id, "charges")] = Label(
        np.frombuffer(charges, dtype=np.float64) * factors["charges"], np.ones(n, bool)
    )

    def describe(i: int) -> str:
        return f"member {names[i]} (gdb {ids[i]})" if names[i] else f"gdb {ids[i]}"

    source = Source(
        path=path,
        reader="qm9",
        structures=structures,
        source_units={(level_id, kind): unit for kind, unit in UNITS.items()},
        ids=np.array(ids),
        describe=describe,
        keys={(level_id, kind): key for kind, key in KEYS.items()},
        unread_keys=list(UNREAD),
    )
    source.notes.append(
        f"{path}: energy is U0 - zpve (the electronic energy); properties not "
        f"stored: {', '.join(UNREAD)}"
    )
    if skipped:
        shown = ", ".join(skipped[:3]) + (
            f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        )
        source.notes.append(f"{path}: {len(skipped)} archive members not read (not .xyz): {shown}")
    return source
