"""What every reader shares: key mappings, unit conversion, and checked access to source arrays.

Readers read through these helpers so that a damaged or malformed file becomes one
:class:`InvalidDataError` naming the file and the group or record, never a library exception.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import h5py
import numpy as np

from mfdata.errors import UsageError
from mfdata.levels import resolve_level
from mfdata.records import InvalidDataError, Label, Source, molecule_structures
from mfdata.schema import LABEL_KINDS, PER_VOLUME, LabelKind, label_kind
from mfdata.units import UnitError, conversion_factor


@dataclass(frozen=True)
class KeyMapping:
    """A source key stored as ``label`` (energy, forces, gradient...) at level ``level``."""

    key: str
    level: str  # level id
    label: str
    unit: str
    optional: bool = False  # True: a key no record has is skipped, not an error

    @property
    def kind(self) -> LabelKind:
        return label_kind(self.label)[0]

    @property
    def per_volume(self) -> bool:
        """True for a quantity per cell (a virial) that becomes its label divided by the volume."""
        return self.label in PER_VOLUME

    @property
    def dimension(self) -> str:
        """What the source unit measures: the label's dimension, or energy for a virial."""
        return "energy" if self.per_volume else self.kind.dimension

    def convert(self, values: np.ndarray, volume: np.ndarray | None = None) -> np.ndarray:
        """Values in the canonical unit of the label kind (gradients become forces; a virial,
        with the cell ``volume`` of each row in Å³, becomes the stress -virial / volume)."""
        kind, sign = label_kind(self.label)
        factor = sign * conversion_factor(self.unit, self.dimension)
        values = np.asarray(values)
        keep = values.dtype.kind == "f" and kind.name != "energy"
        out = values.astype(values.dtype if keep else np.float64, copy=True)
        out *= factor
        if self.per_volume:
            if volume is None:
                raise ValueError(f"{self.key}: a {self.label} needs the cell volume")
            out /= np.asarray(volume).reshape(-1, *([1] * (out.ndim - 1)))
        return out


def parse_mapping(text: str) -> tuple[str, str, str]:
    """``KEY=LEVEL:LABEL`` -> (key, level id, label)."""
    key, sep, target = text.partition("=")
    level, sep2, label = target.rpartition(":")
    if not (sep and sep2 and key and level and label):
        raise UsageError(
            f"--map {text!r}: expected KEY=LEVEL:LABEL, e.g. Emp2=mp2-augccpvdz:energy"
        )
    return checked_mapping(key, level, label)


def checked_mapping(key: str, level: str, label: str) -> tuple[str, str, str]:
    """(key, level id, label) with the level resolved (an id or an alias) and the label known."""
    try:
        label_kind(label)
    except ValueError as exc:  # schema's label check predates UsageError
        raise UsageError(f"--map {key}={level}:{label}: {exc}") from exc
    return key, resolve_level(level).id, label


# What h5py raises for a missing, damaged or unreadable object: a corrupt file surfaces as any of
# these, never as a crash, so readers map them to InvalidDataError naming the file and group.
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)


@contextmanager
def open_h5(path: str) -> Iterator[h5py.File]:
    """``path`` opened read-only; a file HDF5 cannot open is bad input, not a crash."""
    try:
        f = h5py.File(path, "r")
    except H5_ERRORS as exc:
        raise InvalidDataError(f"{path}: cannot be read as HDF5: {exc}") from exc
    with f:
        yield f


def h5_name(key: str | bytes) -> str:
    """A member name for messages (h5py gives bytes for names that are not UTF-8)."""
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


def h5_keys(path: str, group: h5py.Group, where: str) -> list[str | bytes]:
    """The member names of ``group``; a damaged index is bad input naming ``where``."""
    try:
        return list(group.keys())
    except H5_ERRORS as exc:
        raise InvalidDataError(f"{path}: {where}: cannot list its members: {exc}") from exc


def h5_groups(path: str, f: h5py.File) -> list[tuple[str, h5py.Group]]:
    """Every top-level group, by display name; anything else at the top level is an error.

    A top-level dataset is refused rather than skipped: skipping would drop data silently.
    """
    out = []
    for key in h5_keys(path, f, "top level"):
        name = h5_name(key)
        try:
            obj = f[key]
        except H5_ERRORS as exc:
            raise InvalidDataError(f"{path}: group {name}: cannot be opened: {exc}") from exc
        if not isinstance(obj, h5py.Group):
            raise InvalidDataError(
                f"{path}: {name}: expected a group of conformers, found a dataset"
            )
        out.append((name, obj))
    return out


def h5_dataset(path: str, group: h5py.Group, key: str | bytes, where: str) -> h5py.Dataset:
    """The dataset ``key`` of ``group``; missing, not a dataset or unreadable is an error."""
    try:
        obj = group.get(key)
    except H5_ERRORS as exc:
        raise InvalidDataError(f"{path}: {where}: {h5_name(key)}: cannot be opened: {exc}") from exc
    if obj is None:
        raise InvalidDataError(f"{path}: {where}: no {h5_name(key)!r} dataset")
    if not isinstance(obj, h5py.Dataset):
        raise InvalidDataError(f"{path}: {where}: {h5_name(key)} is a group, not a dataset")
    return obj


def h5_read(path: str, dataset: h5py.Dataset, where: str) -> np.ndarray:
    """All values of ``dataset`` as an array; a damaged chunk is bad input, not a crash."""
    try:
        return np.asarray(dataset[()])
    except H5_ERRORS as exc:
        name = h5_name(dataset.name or "")
        raise InvalidDataError(f"{path}: {where}: {name}: cannot be read: {exc}") from exc


def h5_real(path: str, group: h5py.Group, key: str, where: str) -> np.ndarray:
    """The dataset ``key`` of ``group`` as real numbers (see :func:`real_array`)."""
    values = h5_read(path, h5_dataset(path, group, key, where), where)
    return real_array(values, path, f"{where}: {key}")


def h5_attr(path: str, dataset: h5py.Dataset, attr: str, where: str) -> object | None:
    try:
        return dataset.attrs.get(attr)
    except H5_ERRORS as exc:
        raise InvalidDataError(
            f"{path}: {where}: attribute {attr!r}: cannot be read: {exc}"
        ) from exc


def real_array(values: np.ndarray, path: str, where: str) -> np.ndarray:
    """``values`` as floating point; strings, booleans, complex or records are bad input.

    float32 and float64 are kept (ANI stores float32 geometries); integers become float64.
    """
    values = np.asarray(values)
    kind = values.dtype.kind
    if kind == "f":
        if values.dtype in (np.float32, np.float64):
            return values
        return values.astype(np.float32 if values.dtype.itemsize < 4 else np.float64)
    if kind in "iu":
        return values.astype(np.float64)
    raise InvalidDataError(f"{path}: {where}: values have type {values.dtype}, not real numbers")


def atomic_numbers(values: np.ndarray, path: str, where: str) -> np.ndarray:
    """``values`` as uint8 atomic numbers, checked before the cast so that 257 never becomes 1."""
    values = np.asarray(values)
    kind = values.dtype.kind
    integral = kind in "iu" or (
        kind == "f" and bool(np.isfinite(values).all()) and bool((values == np.round(values)).all())
    )
    if not integral:
        raise InvalidDataError(
            f"{path}: {where}: atomic numbers have type {values.dtype}"
            f"{'' if kind != 'f' else ' with non-integer values'}, not integers"
        )
    bad = np.flatnonzero(((values < 1) | (values > 118)).reshape(-1))
    if len(bad):
        at = np.unravel_index(bad[0], values.shape)
        place = f"conformer {at[0]} atom {at[1]}" if values.ndim == 2 else f"atom {at[0]}"
        raise InvalidDataError(
            f"{path}: {where}: atomic number {values.reshape(-1)[bad[0]]} ({place}) "
            "is not an element"
        )
    return values.astype(np.uint8)


# What reading a damaged npz raises: zip structure, deflate stream, npy header, object arrays.
NPZ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    RuntimeError,  # an encrypted member
    NotImplementedError,  # an unsupported zip version or compression method
    struct.error,
    zipfile.BadZipFile,
    zlib.error,
)


def npz_members(path: str) -> set[str]:
    """The array names of an npz archive, from its zip index (nothing is loaded)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {name.removesuffix(".npy") for name in archive.namelist()}
    except NPZ_ERRORS:
        return set()


def load_npz(path: str, keys: Iterable[str], what: str) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the npz at ``path`` (those it has), without unpickling anything:
    an object array, which would unpickle and so could run code, is refused."""
    if not zipfile.is_zipfile(path):
        raise InvalidDataError(f"{path}: not an npz (zip) archive")
    try:
        data = np.load(path, allow_pickle=False)
    except NPZ_ERRORS as exc:
        raise InvalidDataError(f"{path}: cannot be read as {what}: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InvalidDataError(f"{path}: not an npz archive (a single array)")
    arrays = {}
    with data:
        for name in keys:
            if name not in data.files:
                continue
            try:
                arrays[name] = np.asarray(data[name])
            except NPZ_ERRORS as exc:
                raise InvalidDataError(f"{path}: array {name!r}: cannot be read: {exc}") from exc
    return arrays


class ConformerBlocks:
    """Blocks of conformers of one molecule each (an HDF5 group), gathered while a file is read
    and joined into one columnar :class:`Source` at the end."""

    def __init__(self) -> None:
        self.numbers: list[np.ndarray] = []
        self.positions: list[np.ndarray] = []
        self.n_atoms: list[np.ndarray] = []
        self.labels: dict[str, list[np.ndarray]] = {}
        self.group: list[np.ndarray] = []
        self.names: list[str] = []  # one per block, for messages
        self.groups: dict[str, int] = {}

    def add(
        self, name: str, group: str, z: np.ndarray, xyz: np.ndarray, **labels: np.ndarray
    ) -> None:
        """Conformers ``xyz`` (conformers, atoms, 3) of atoms ``z``, with labels by kind (one
        value or one row per atom per conformer), named ``name`` in messages."""
        c = len(xyz)
        self.numbers.append(np.tile(z, c))
        self.positions.append(xyz.reshape(-1, 3))
        self.n_atoms.append(np.full(c, len(z)))
        for kind, values in labels.items():
            per_atom = LABEL_KINDS[kind].per == "atom"
            self.labels.setdefault(kind, []).append(
                values.reshape(c * len(z), -1) if per_atom else values.reshape(c, -1)
            )
        self.group.append(np.full(c, self.groups.setdefault(group, len(self.groups))))
        self.names.append(name)

    def source(
        self, path: str, reader: str, level_id: str, units: dict[str, str], keys: dict[str, str]
    ) -> Source:
        """The blocks as one source at ``level_id``; ``units`` and ``keys`` by label kind."""
        structures = molecule_structures(
            np.concatenate(self.numbers),
            np.concatenate(self.positions),
            np.concatenate(self.n_atoms),
            group=np.concatenate(self.group),
            group_names=list(self.groups),
        )
        n = structures.n_structures
        for kind, values in self.labels.items():
            label = LABEL_KINDS[kind]
            try:
                factor = conversion_factor(units[kind], label.dimension)
            except UnitError as exc:
                raise InvalidDataError(f"{path}: {kind}: {exc}") from exc
            joined = np.concatenate(values).astype(np.float64) * factor
            rows = len(joined)
            structures.labels[(level_id, kind)] = Label(
                joined.reshape(rows, *label.shape), np.ones(n, bool)
            )
        start = np.cumsum([0, *(len(n_block) for n_block in self.n_atoms)])

        def describe(i: int) -> str:
            b = int(np.searchsorted(start, i, side="right") - 1)
            return f"{self.names[b]} conformer {i - start[b]}"

        return Source(
            path=path,
            reader=reader,
            structures=structures,
            source_units={(level_id, kind): units[kind] for kind in self.labels},
            describe=describe,
            keys={(level_id, kind): keys[kind] for kind in self.labels},
        )
