"""Each head's initial per-type shift and scale, from the stores' per-level statistics.

The shift of head ``L`` for element ``X`` is ``L``'s reference energy of ``X`` (eV per atom:
isolated-atom energies where the store has them, else a least-squares fit on composition; see
``mfdata.stats``), averaged over the stores that have ``L`` by their number of energies. The scale
is ``L``'s force RMS. What the data cannot give is filled and said so:

- an element of the model with no reference at ``L`` (``L``'s structures never contain it) takes
  the mean reference of that element over the other levels, else 0;
- a level without forces (energies only, e.g. CCSD(T)) takes the RMS of the other levels' force
  RMS, else 1.
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
            for symbol, energy in stats.reference_energies.items():
                totals.setdefault(symbol, [0.0, 0.0])
                totals[symbol][0] += n * energy
                totals[symbol][1] += n
        refs[level] = {symbol: s / n for symbol, (s, n) in totals.items()}
        methods[level] = sorted({s.reference_method for s in found if s.reference_method})
        with_forces = [s for s in found if s.force_rms is not None and s.n_forces > 0]
        if with_forces:
            n = sum(s.n_forces for s in with_forces)
            rms[level] = math.sqrt(sum(s.n_forces * s.force_rms**2 for s in with_forces) / n)
        else:
            rms[level] = None

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
