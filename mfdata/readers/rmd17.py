"""Revised MD17 (Christensen and von Lilienfeld 2020): one npz per molecule.

``nuclear_charges`` (atoms,), ``coords`` (conformers, atoms, 3) in Å, ``energies`` in kcal/mol and
``forces`` in kcal/mol/Å at PBE/def2-SVP, as the release's readme on figshare
(doi:10.6084/m9.figshare.12672038) describes them. The file states neither units nor level, so
both are the release's; ``old_indices``, ``old_energies`` and ``old_forces`` (the MD17 frame and
its original, noisier labels) are not read. Arrays are loaded without unpickling.
"""

from __future__ import annotations

from mfdata.levels import resolve_level
from mfdata.readers._common import load_npz, npz_members
from mfdata.readers.sgdml import conformers_source
from mfdata.records import InvalidDataError, Source

RMD17_LEVEL = "pbe-def2svp"
ENERGY_UNIT = "kcal/mol"
LENGTH_UNIT = "Å"
_NAMES = {"z": "nuclear_charges", "R": "coords", "E": "energies", "F": "forces"}


def is_rmd17(path: str) -> bool:
    """An npz with revised MD17's arrays (not sGDML's ``z``, ``R``, ``E``)."""
    return {"nuclear_charges", "coords", "energies"} <= npz_members(path)


def read_rmd17_npz(path: str, level: str = RMD17_LEVEL) -> Source:
    """Energies and forces of one revised-MD17 molecule, in eV and eV/Å."""
    arrays = load_npz(path, _NAMES.values(), "a revised MD17 npz")
    for key in ("nuclear_charges", "coords", "energies"):
        if key not in arrays:
            raise InvalidDataError(f"{path}: revised MD17 npz has no {key!r} array")
    source = conformers_source(
        path,
        "rmd17",
        arrays,
        names=_NAMES,
        level_id=resolve_level(level).id,
        energy_unit=ENERGY_UNIT,
        length_unit=LENGTH_UNIT,
    )
    source.unread_keys = sorted(npz_members(path) - set(_NAMES.values()))
    if source.unread_keys:
        source.notes.append(f"{path}: arrays not read: {', '.join(source.unread_keys)}")
    return source
