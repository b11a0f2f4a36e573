"""sGDML npz datasets: ``R`` (conformers, atoms, 3), ``z``, ``E`` and ``F``.

sGDML files carry ``r_unit`` and ``e_unit`` (usually Å and kcal/mol; forces in e_unit/r_unit) and
a ``theory`` string; the level comes from ``theory`` when the registry knows it, else from the user.
Arrays are loaded with ``allow_pickle=False``: an object array (which would unpickle, and so could
run code) is refused, never loaded.
"""

from __future__ import annotations

import numpy as np

from mfdata.levels import UnknownLevelError, resolve_level
from mfdata.readers._common import KeyMapping, atomic_numbers, load_npz, real_array
from mfdata.records import InvalidDataError, Label, Source, molecule_structures
from mfdata.units import UnitError, conversion_factor

# The members the reader uses; others (sGDML's md5, perms, name...) are never loaded.
_KEYS = ("R", "z", "E", "F", "r_unit", "e_unit", "theory")


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
    arrays = load_npz(path, _KEYS, "an sGDML npz")
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
    return conformers_source(
        path,
        "sgdml",
        arrays,
        names={"z": "z", "R": "R", "E": "E", "F": "F"},
        level_id=level_id,
        energy_unit=energy_unit,
        length_unit=length_unit,
    )


def conformers_source(
    path: str,
    reader: str,
    arrays: dict[str, np.ndarray],
    names: dict[str, str],
    level_id: str,
    energy_unit: str,
    length_unit: str,
) -> Source:
    """The conformers of one molecule (atomic numbers ``z``, geometries ``R``, energies ``E``,
    forces ``F`` optional; ``names``: each one's key in the file, for messages and the
    manifest) checked and in canonical units; forces are in ``energy_unit/length_unit``."""
    z_key, r_key, e_key, f_key = names["z"], names["R"], names["E"], names["F"]
    if arrays[z_key].ndim != 1:
        raise InvalidDataError(
            f"{path}: {z_key} has shape {arrays[z_key].shape}, expected (atoms,)"
        )
    z = atomic_numbers(arrays[z_key], path, z_key)
    xyz = real_array(arrays[r_key], path, r_key)
    energy = real_array(arrays[e_key], path, e_key)
    c = xyz.shape[0] if xyz.ndim else 0
    if xyz.shape != (c, len(z), 3) or energy.shape not in ((c,), (c, 1)):
        raise InvalidDataError(
            f"{path}: shapes disagree: {z_key} {z.shape}, {r_key} {xyz.shape} (expected "
            f"({c}, {len(z)}, 3)), {e_key} {energy.shape} (expected ({c},) or ({c}, 1))"
        )
    forces = None
    if f_key in arrays:
        forces = real_array(arrays[f_key], path, f_key)
        if forces.shape != xyz.shape:
            raise InvalidDataError(
                f"{path}: {f_key} has shape {forces.shape}, not {xyz.shape} like {r_key}"
            )
    force_unit = f"{energy_unit}/{length_unit}"
    try:
        structures = molecule_structures(
            np.tile(z, c),
            xyz.reshape(-1, 3) * conversion_factor(length_unit, "length"),
            np.full(c, len(z)),
        )
        e = KeyMapping(e_key, level_id, "energy", energy_unit).convert(energy.reshape(-1))
        units = {(level_id, "energy"): energy_unit}
        structures.labels[(level_id, "energy")] = Label(e, np.ones(c, bool))
        if forces is not None:
            f = KeyMapping(f_key, level_id, "forces", force_unit).convert(forces.reshape(-1, 3))
            structures.labels[(level_id, "forces")] = Label(f, np.ones(c, bool))
            units[(level_id, "forces")] = force_unit
    except UnitError as exc:
        raise InvalidDataError(f"{path}: {exc}") from exc
    keys = {(level_id, "energy"): e_key, (level_id, "forces"): f_key}
    return Source(
        path=path,
        reader=reader,
        structures=structures,
        source_units=units,
        keys=keys,
    )
