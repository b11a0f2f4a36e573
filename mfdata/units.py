"""Units: every value is converted to eV, Å, eV/Å and eV/Å³ on the way in.

A unit is written as an energy, an optional ``/length`` or ``/length^3`` suffix, as source files
and users write them: ``Hartree``, ``kcal/mol``, ``Hartree/Bohr``, ``kJ/mol/nm``, ``eV/Å^3``.
Constants come from :mod:`ase.units`. An unknown unit is an error, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ase import units as ase_units

from mfdata.errors import MfkitError

ENERGY_UNITS: dict[str, float] = {
    "ev": 1.0,
    "mev": 1e-3,
    "hartree": ase_units.Hartree,
    "ha": ase_units.Hartree,
    "eh": ase_units.Hartree,
    "rydberg": ase_units.Rydberg,
    "ry": ase_units.Rydberg,
    "kcal/mol": ase_units.kcal / ase_units.mol,
    "kj/mol": ase_units.kJ / ase_units.mol,
}

LENGTH_UNITS: dict[str, float] = {
    "å": 1.0,
    "a": 1.0,
    "ang": 1.0,
    "angstrom": 1.0,
    "bohr": ase_units.Bohr,
    "a0": ase_units.Bohr,
    "nm": 10.0,
    "pm": 0.01,
}

CHARGE_UNITS: dict[str, float] = {"e": 1.0, "elementary_charge": 1.0}

DIPOLE_UNITS: dict[str, float] = {
    "e*å": 1.0,
    "e*a": 1.0,
    "e*ang": 1.0,
    "e*angstrom": 1.0,
    "e*bohr": ase_units.Bohr,
    "elementary_charge*bohr": ase_units.Bohr,
    "debye": ase_units.Debye,
}

CANONICAL_UNITS: dict[str, str] = {
    "energy": "eV",
    "length": "Å",
    "force": "eV/Å",
    "stress": "eV/Å^3",
    "charge": "e",
    "dipole": "e*Å",
}

_PRESSURE_UNITS: dict[str, float] = {"gpa": ase_units.GPa, "kbar": 0.1 * ase_units.GPa}


class UnitError(MfkitError, ValueError):
    """A unit string that is not known, or that measures another quantity."""


@dataclass(frozen=True)
class Unit:
    """A parsed unit: what it measures and the factor that converts it to the canonical unit."""

    text: str
    dimension: str
    factor: float


def _normalise(text: str) -> str:
    text = text.strip().lower().replace(" ", "").replace("angstroms", "angstrom")
    text = text.replace("**", "^").replace("³", "^3").replace("ångström", "angstrom")
    return text


def parse_unit(text: str) -> Unit:
    """Parse a unit string into its dimension and its factor to the canonical unit."""
    norm = _normalise(text)
    for table, dimension in (
        (LENGTH_UNITS, "length"),
        (CHARGE_UNITS, "charge"),
        (DIPOLE_UNITS, "dipole"),
        (_PRESSURE_UNITS, "stress"),
    ):
        if norm in table:
            return Unit(text, dimension, table[norm])
    for energy_name in sorted(ENERGY_UNITS, key=len, reverse=True):
        if not norm.startswith(energy_name):
            continue
        rest = norm[len(energy_name) :]
        energy = ENERGY_UNITS[energy_name]
        if rest == "":
            return Unit(text, "energy", energy)
        match = re.fullmatch(r"/([a-zå0-9]+)(\^3)?", rest)
        if match and match.group(1) in LENGTH_UNITS:
            length = LENGTH_UNITS[match.group(1)]
            if match.group(2):
                return Unit(text, "stress", energy / length**3)
            return Unit(text, "force", energy / length)
    known = sorted({*ENERGY_UNITS, *LENGTH_UNITS, "hartree/bohr", "kcal/mol/å", "ev/å^3", "gpa"})
    raise UnitError(f"unknown unit {text!r}; known units include: {', '.join(known)}")


def conversion_factor(unit: str, dimension: str) -> float:
    """Factor that converts values in ``unit`` to the canonical unit of ``dimension``."""
    parsed = parse_unit(unit)
    if parsed.dimension != dimension:
        raise UnitError(
            f"unit {unit!r} measures {parsed.dimension}, but a {dimension} unit is needed "
            f"(canonical: {CANONICAL_UNITS[dimension]})"
        )
    return parsed.factor


def same_unit(a: str, b: str) -> bool:
    """Whether two unit strings name the same unit (``kcal/mol/Ang`` and ``kcal/mol/Å`` do);
    strings mfkit cannot parse are the same only when they are written alike."""
    try:
        unit_a, unit_b = parse_unit(a), parse_unit(b)
    except UnitError:
        return _normalise(a) == _normalise(b)
    return unit_a.dimension == unit_b.dimension and abs(unit_a.factor / unit_b.factor - 1) < 1e-9
