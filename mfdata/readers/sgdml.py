"""sGDML npz datasets: ``R`` (conformers, atoms, 3), ``z``, ``E`` and ``F``.

sGDML files carry ``r_unit`` and ``e_unit`` (usually Å and kcal/mol; forces in e_unit/r_unit) and
a ``theory`` string; the level comes from ``theory`` when the registry knows it, else from the user.
Arrays are loaded with ``allow_pickle=False``: an object array (which would unpickle, and so could
run code) is refused, never loaded.
"""

from __future__ import annotations

import struct
import zipfile
import zlib

import numpy as np

from mfdata.levels import UnknownLevelError, resolve_level
from mfdata.readers._common import KeyMapping, atomic_numbers, real_array
from mfdata.records import InvalidDataError, Label, Source, molecule_structures
from mfdata.units import UnitError, conversion_factor

# What reading a damaged npz raises: zip structure, deflate stream, npy header, object arrays.
_NPZ_ERRORS = (
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


# The members the reader uses; others (sGDML's md5, perms, name...) are never loaded.
_KEYS = ("R", "z", "E", "F", "r_unit", "e_unit", "theory")


def _load(path: str) -> dict[str, np.ndarray]:
    """The arrays of the npz at ``path`` that the reader uses, without unpickling anything."""
    if not zipfile.is_zipfile(path):
        raise InvalidDataError(f"{path}: not an npz (zip) archive")
    try:
        data = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as exc:
        raise InvalidDataError(f"{path}: cannot be read as an sGDML npz: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InvalidDataError(f"{path}: not an npz archive (a single array)")
    arrays = {}
    with data:
        for name in _KEYS:
            if name not in data.files:
                continue
            try:
                arrays[name] = np.asarray(data[name])
            except _NPZ_ERRORS as exc:
                raise InvalidDataError(f"{path}: array {name!r}: cannot be read: {exc}") from exc
    return arrays


def _text(path: str, arrays: dict[str, np.ndarray], key: str) -> str | None:
    """A text field (``theory``, ``e_unit``, ``r_unit``): a single string, or absent."""
    if key not in arrays:
        return None
    value = arrays[key]
    if value.size != 1 or value.dtype.kind not in "US":
        raise InvalidDataError(
            f"{path}: {key!r} should be one string, but is {value.dtype} of shape {value.shape}"
        )
    value = value.reshape(-1)[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_sgdml_npz(
    path: str,
    level: str | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
) -> Source:
    """Energies and forces of an sGDML dataset; arguments override what the file states."""
    level_id = resolve_level(level).id if level is not None else None
    arrays = _load(path)
    for key in ("R", "z", "E"):
        if key not in arrays:
            raise InvalidDataError(f"{path}: sGDML npz has no {key!r} array")
    theory = _text(path, arrays, "theory")
    energy_unit = energy_unit or _text(path, arrays, "e_unit")
    length_unit = length_unit or _text(path, arrays, "r_unit")
    if energy_unit is None or length_unit is None:
        raise InvalidDataError(
            f"{path}: the file does not state its units (e_unit, r_unit); give --units E=UNIT "
            "and --units R=UNIT"
        )
    if level_id is None:
        if theory is None:
            raise InvalidDataError(
                f"{path}: the file names no level of theory ('theory'); state it with --level"
            )
        try:
            level_id = resolve_level(theory).id
        except UnknownLevelError as exc:
            raise InvalidDataError(
                f"{path}: level of theory {theory!r} from the file is not known; state it with "
                "--level"
            ) from exc
    if arrays["z"].ndim != 1:
        raise InvalidDataError(f"{path}: z has shape {arrays['z'].shape}, expected (atoms,)")
    z = atomic_numbers(arrays["z"], path, "z")
    xyz = real_array(arrays["R"], path, "R")
    energy = real_array(arrays["E"], path, "E")
    c = xyz.shape[0] if xyz.ndim else 0
    if xyz.shape != (c, len(z), 3) or energy.shape not in ((c,), (c, 1)):
        raise InvalidDataError(
            f"{path}: shapes disagree: z {z.shape}, R {xyz.shape} (expected ({c}, {len(z)}, 3)), "
            f"E {energy.shape} (expected ({c},) or ({c}, 1))"
        )
    forces = None
    if "F" in arrays:
        forces = real_array(arrays["F"], path, "F")
        if forces.shape != xyz.shape:
            raise InvalidDataError(f"{path}: F has shape {forces.shape}, not {xyz.shape} like R")
    force_unit = f"{energy_unit}/{length_unit}"
    try:
        structures = molecule_structures(
            np.tile(z, c),
            xyz.reshape(-1, 3) * conversion_factor(length_unit, "length"),
            np.full(c, len(z)),
        )
        e = KeyMapping("E", level_id, "energy", energy_unit).convert(energy.reshape(-1))
        units = {(level_id, "energy"): energy_unit}
        structures.labels[(level_id, "energy")] = Label(e, np.ones(c, bool))
        if forces is not None:
            f = KeyMapping("F", level_id, "forces", force_unit).convert(forces.reshape(-1, 3))
            structures.labels[(level_id, "forces")] = Label(f, np.ones(c, bool))
            units[(level_id, "forces")] = force_unit
    except UnitError as exc:
        raise InvalidDataError(f"{path}: {exc}") from exc
    keys = {(level_id, "energy"): "E", (level_id, "forces"): "F"}
    return Source(path=path, reader="sgdml", structures=structures, source_units=units, keys=keys)
