"""Each head's initial per-type shift and scale, from the stores' per-level statistics.

The shift of head ``L`` for element ``X`` is ``L``'s reference energy of ``X`` (eV per atom:
a least-squares fit on composition, or isolated-atom energies where the store or the level
registry has them; see ``mfdata.stats``), averaged over the stores that have ``L`` by their number
of energies. Isolated-atom energies leave the binding energy, a few eV per atom, to the network,
so their shifts also take the mean per-atom binding energy (as MACE's E0s plus its mean
interaction energy do): every head starts centred on its data. The scale is ``L``'s force RMS.
What the data cannot give is filled and said so:

- an element of the model with no reference at ``L`` (``L``'s structures never contain it) takes
  the mean reference of that element over the other levels, else 0;
- a level without forces (energies only, e.g. CCSD(T)) takes the RMS of the other levels' force
  RMS, else 1.

A delta head (strategy ``delta``) learns a level difference, so it starts from the difference's
statistics instead (:func:`delta_initialisation`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from mfdata.schema import LevelStatistics
from mfdata.store.store import Store


@dataclass
class HeadInit:
    shifts: dict[str, dict[str, float]]  # level -> type name -> eV
    scales: dict[str, float]  # level -> eV/Å
    methods: dict[str, list[str]]  # level -> reference methods used (per store)
    notes: list[str] = field(default_factory=list)


def _level_stats(stores: Sequence[Store], level: str) -> list[LevelStatistics]:
    return [
        s.manifest.statistics.levels[level] for s in stores if level in s.manifest.statistics.levels
    ]


def _energy_spread(stores: Sequence[Store], level: str) -> float | None:
    """The standard deviation of ``level``'s per-atom energies after its reference energies."""
    found = [s for s in _level_stats(stores, level) if s.energy_per_atom_std and s.n_energies]
    n = sum(s.n_energies for s in found)
    return math.sqrt(sum(s.n_energies * s.energy_per_atom_std**2 for s in found) / n) if n else None


def _force_rms(stores: Sequence[Store], level: str) -> float | None:
    found = [s for s in _level_stats(stores, level) if s.force_rms is not None and s.n_forces > 0]
    n = sum(s.n_forces for s in found)
    return math.sqrt(sum(s.n_forces * s.force_rms**2 for s in found) / n) if n else None


def head_initialisation(
    stores: Sequence[Store], levels: Sequence[str], type_names: Sequence[str]
) -> HeadInit:
    refs: dict[str, dict[str, float]] = {}
    rms: dict[str, float | None] = {}
    methods: dict[str, list[str]] = {}
    for level in levels:
        found = _level_stats(stores, level)
        totals: dict[str, list[float]] = {}
        for stats in found:
            n = max(stats.n_energies, 1)
            binding = 0.0  # the mean binding energy, left by isolated-atom references only
            if stats.reference_method == "isolated_atoms":
                binding = stats.energy_per_atom_mean or 0.0
            for symbol, energy in stats.reference_energies.items():
                totals.setdefault(symbol, [0.0, 0.0])
                totals[symbol][0] += n * (energy + binding)
                totals[symbol][1] += n
        refs[level] = {symbol: s / n for symbol, (s, n) in totals.items()}
        methods[level] = sorted({s.reference_method for s in found if s.reference_method})
        rms[level] = _force_rms(stores, level)

    notes = []
    shifts: dict[str, dict[str, float]] = {}
    for level in levels:
        row = {}
        filled = []
        for symbol in type_names:
            if symbol in refs[level]:
                row[symbol] = refs[level][symbol]
                continue
            others = [refs[o][symbol] for o in levels if o != level and symbol in refs[o]]
            row[symbol] = sum(others) / len(others) if others else 0.0
            filled.append(symbol)
        if filled:
            notes.append(
                f"{level}: no reference energy for {' '.join(filled)} (not in its structures); "
                "used the mean of the other levels' (or 0)"
            )
        shifts[level] = row
    known = [v for v in rms.values() if v is not None]
    fallback = math.sqrt(sum(v * v for v in known) / len(known)) if known else 1.0
    scales = {}
    for level in levels:
        if rms[level] is None:
            scales[level] = fallback
            notes.append(
                f"{level}: no forces, so its energy scale is the other levels' force RMS "
                f"({fallback:.4g} eV/Å)"
                if known
                else f"{level}: no forces in the data: energy scale 1"
            )
        else:
            scales[level] = rms[level]
    return HeadInit(shifts, scales, methods, notes)


def delta_initialisation(
    stores: Sequence[Store], init: HeadInit, bases: dict[str, str]
) -> HeadInit:
    """``init`` with each delta head's shift and scale those of ``E_level - E_base``.

    The shift of element ``X`` is the per-element offset of the two levels' alignment
    (``mfdata stats``: a fit of the energy difference on composition, over the structures labelled
    at both), averaged over stores by shared structures; an element without one takes the
    difference of the two levels' reference energies. The scale is a force scale, like every other
    head's, estimated without the level's own forces: the base level's force RMS times the ratio of
    the spread of the difference (the alignment's per-atom residual RMS, what the offsets leave) to
    the spread of the base level's per-atom energies. Where one of them is missing it stays the
    level's own scale. Notes say what was filled; the methods say which estimate was used.
    """
    shifts = {level: dict(row) for level, row in init.shifts.items()}
    scales = dict(init.scales)
    methods = {level: list(found) for level, found in init.methods.items()}
    # the delta heads do not start from their own level's statistics: drop what was said of those
    notes = [n for n in init.notes if not any(n.startswith(f"{level}: ") for level in bases)]
    for level, base in bases.items():
        totals: dict[str, list[float]] = {}
        n_residual, sq_residual = 0, 0.0
        for store in stores:
            for a in store.manifest.statistics.alignments:
                if {a.from_level, a.to_level} != {level, base}:
                    continue
                sign = 1.0 if a.to_level == level else -1.0
                for symbol, offset in a.offsets.items():
                    totals.setdefault(symbol, [0.0, 0.0])
                    totals[symbol][0] += a.n_shared * sign * offset
                    totals[symbol][1] += a.n_shared
                if a.n_shared > a.rank:
                    n_residual += a.n_shared
                    sq_residual += a.n_shared * a.residual_rms_per_atom**2
        row, filled = {}, []
        for symbol in shifts[level]:
            if symbol in totals and totals[symbol][1] > 0:
                row[symbol] = totals[symbol][0] / totals[symbol][1]
            else:
                row[symbol] = init.shifts[level][symbol] - init.shifts[base][symbol]
                filled.append(symbol)
        shifts[level] = row
        method = f"delta from {base}: alignment offsets"
        if filled:
            notes.append(
                f"{level} (delta from {base}): no alignment offset for {' '.join(filled)} "
                f"(no structure labelled at both with it); used the difference of the two "
                "levels' reference energies"
            )
            method += " (reference differences for " + " ".join(filled) + ")"
        residual = math.sqrt(sq_residual / n_residual) if n_residual else 0.0
        spread = _energy_spread(stores, base)
        base_forces = _force_rms(stores, base)
        if residual > 0 and spread and base_forces:
            scales[level] = base_forces * residual / spread
            method += (
                f"; scale {scales[level]:.4g} eV/Å = {base}'s force RMS {base_forces:.4g} x the "
                f"spread of the difference {residual:.4g} / {base}'s spread {spread:.4g} eV/atom"
            )
        else:
            notes.append(
                f"{level} (delta from {base}): no residual of the level alignment, spread of "
                f"{base}'s energies or {base} forces to scale the difference by; kept the level's "
                f"own energy scale ({scales[level]:.4g})"
            )
        methods[level] = [method]
    return HeadInit(shifts, scales, methods, notes)
