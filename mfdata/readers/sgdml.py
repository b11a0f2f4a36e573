"""sGDML npz datasets: ``R`` (conformers, atoms, 3), ``z``, ``E`` and ``F``.

sGDML files carry ``r_unit`` and ``e_unit`` (usually Å and kcal/mol; forces in e_unit/r_unit) and
a ``theory`` string; the level comes from ``theory`` when the registry knows it, else from the user.
"""

from __future__ import annotations

import zipfile

import numpy as np

from mfdata.levels import UnknownLevelError, resolve_level
from mfdata.readers._common import KeyMapping
from mfdata.records import InvalidDataError, Label, Source, molecule_structures
from mfdata.units import UnitError, conversion_factor


def _text(data: np.lib.npyio.NpzFile, key: str) -> str | None:
    return str(data[key]) if key in data.files else None


def read_sgdml_npz(
    path: str,
    level: str | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
) -> Source:
    """Energies and forces of an sGDML dataset; arguments override what the file states."""
    try:
        data = np.load(path, allow_pickle=False)
        arrays = {k: data[k] for k in ("R", "z", "E", "F") if k in data.files}
        theory = _text(data, "theory")
        energy_unit = energy_unit or _text(data, "e_unit")
        length_unit = length_unit or _text(data, "r_unit")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidDataError(f"{path}: cannot be read as an sGDML npz: {exc}") from exc
    for key in ("R", "z", "E"):
        if key not in arrays:
            raise InvalidDataError(f"{path}: sGDML npz has no {key!r} array")
    if energy_unit is None or length_unit is None:
        raise InvalidDataError(
            f"{path}: the file does not state its units (e_unit, r_unit); give --units E=UNIT "
            "and --units R=UNIT"
        )
    try:
        level_id = resolve_level(level or theory or "").id
    except UnknownLevelError as exc:
        raise InvalidDataError(
            f"{path}: level of theory {theory!r} from the file is not known; state it with --level"
        ) from exc
    z, xyz = arrays["z"], arrays["R"]
    c = xyz.shape[0]
    energy = arrays["E"].reshape(-1)
    if xyz.shape != (c, len(z), 3) or energy.shape != (c,):
        raise InvalidDataError(
            f"{path}: shapes disagree: z {z.shape}, R {xyz.shape}, E {arrays['E'].shape}"
        )
    try:
        structures = molecule_structures(
            np.tile(z, c),
            xyz.reshape(-1, 3) * conversion_factor(length_unit, "length"),
            np.full(c, len(z)),
        )
        force_unit = f"{energy_unit}/{length_unit}"
        e = KeyMapping("E", level_id, "energy", energy_unit).convert(energy)
        units = {(level_id, "energy"): energy_unit}
        structures.labels[(level_id, "energy")] = Label(e, np.ones(c, bool))
        if "F" in arrays:
            if arrays["F"].shape != xyz.shape:
                raise InvalidDataError(f"{path}: F has shape {arrays['F'].shape}, not {xyz.shape}")
            f = KeyMapping("F", level_id, "forces", force_unit).convert(arrays["F"].reshape(-1, 3))
            structures.labels[(level_id, "forces")] = Label(f, np.ones(c, bool))
            units[(level_id, "forces")] = force_unit
    except UnitError as exc:
        raise InvalidDataError(f"{path}: {exc}") from exc
    return Source(path=path, reader="sgdml", structures=structures, source_units=units)
