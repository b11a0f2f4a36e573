"""Readers, one per source format, and ``read_source``: the one entry point that picks them.

Every reader returns a :class:`mfdata.records.Source` in canonical units with level ids.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from mfdata.levels import resolve_level
from mfdata.readers._common import H5_ERRORS, KeyMapping, h5_keys, h5_name, open_h5, parse_mapping
from mfdata.readers.ani import read_ani2x_h5, read_ani_h5
from mfdata.readers.ase_io import ase_mappings, read_ase
from mfdata.readers.sgdml import read_sgdml_npz
from mfdata.readers.spice import read_spice_h5
from mfdata.records import InvalidDataError, Source, validate

FORMATS = ("ani1x", "ani2x", "spice", "sgdml", "ase-db", "extxyz", "ase")

__all__ = [
    "FORMATS",
    "KeyMapping",
    "detect_format",
    "parse_mapping",
    "read_ani2x_h5",
    "read_ani_h5",
    "read_ase",
    "read_sgdml_npz",
    "read_source",
    "read_spice_h5",
]


def _hdf5_format(path: str) -> str:
    with open_h5(path) as f:
        names = h5_keys(path, f, "top level")
        first = None
        if names:
            try:
                first = f.get(names[0])
            except H5_ERRORS as exc:
                raise InvalidDataError(f"{path}: group {h5_name(names[0])}: {exc}") from exc
        where = f"group {h5_name(names[0])}" if names else ""
        keys = (
            {h5_name(k) for k in h5_keys(path, first, where)}
            if isinstance(first, h5py.Group)
            else set()
        )
    if {"atomic_numbers", "conformations"} <= keys:
        return "spice"
    if {"atomic_numbers", "coordinates"} <= keys:
        return "ani1x"
    if {"species", "coordinates", "energies"} <= keys:
        return "ani2x"
    raise InvalidDataError(
        f"{path}: HDF5 layout not recognised (first group has {sorted(keys)}); mfkit reads the "
        "ANI-1x/ANI-1ccx, ANI-2x and SPICE release layouts"
    )


def detect_format(path: str) -> str:
    """The format of ``path``, from its suffix and, for HDF5, its layout."""
    suffix = Path(path).suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return _hdf5_format(path)
    if suffix == ".npz":
        return "sgdml"
    if suffix == ".db":
        return "ase-db"
    if suffix in (".xyz", ".extxyz"):
        return "extxyz"
    return "ase"


def read_source(
    path: str,
    format: str | None = None,
    *,
    level: str | None = None,
    maps: list[tuple[str, str, str]] = (),
    units: dict[str, str] | None = None,
    pbc: bool | None = None,
    isolated_atoms: tuple[str, str] | None = None,
    all_isolated: bool = False,
    group_key: str | None = None,
    id_key: str | None = None,
    maps_optional: bool = False,
) -> Source:
    """Read ``path`` with the reader of its format and check it.

    ``level`` names the level of a single-level file (ASE formats: it takes ASE's standard keys
    energy, forces and stress); ``maps`` are (key, level id, label) for any other key, with
    ``units`` by key. HDF5 releases need neither. A mapped key that no record has is an error,
    unless ``maps_optional`` (one of several files, where the caller checks the union).
    """
    units = units or {}
    if not Path(path).is_file():
        raise InvalidDataError(f"{path}: no such file")
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise InvalidDataError(f"{path}: unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if id_key is not None and fmt not in ("ase", "ase-db", "extxyz"):
        raise InvalidDataError(f"{path}: {fmt} files have no id key; link them by geometry")
    if fmt == "ani1x":
        source = read_ani_h5(path)
    elif fmt == "ani2x":
        source = read_ani2x_h5(path, level or "wb97x-631gd")
    elif fmt == "spice":
        source = read_spice_h5(path, level or "wb97md3bj-def2tzvppd")
    elif fmt == "sgdml":
        source = read_sgdml_npz(path, level, units.get("E"), units.get("R"))
    else:
        all_maps = list(maps)
        implied: list[str] = []
        if level is not None:
            mapped = {key for key, _, _ in all_maps}
            implied = [k for k in ("energy", "forces", "stress") if k not in mapped]
            all_maps += [(k, resolve_level(level).id, k) for k in implied]
        optional = [key for key, _, _ in all_maps] if maps_optional else implied
        if not all_maps:
            raise InvalidDataError(
                f"{path}: say which level of theory the labels are at: --level LEVEL for ASE's "
                "energy, forces and stress keys, or --map KEY=LEVEL:LABEL"
            )
        ase_format = {"ase-db": "db", "extxyz": "extxyz", "ase": None}[fmt]
        source = read_ase(
            path,
            ase_mappings(all_maps, units, path, optional=optional),
            format=ase_format,
            pbc=pbc,
            isolated_atoms=isolated_atoms,
            all_isolated=all_isolated,
            group_key=group_key,
            id_key=id_key,
        )
    validate(source)
    return source
