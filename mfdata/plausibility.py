"""Values implausible for their stated unit: what catches a file read in the wrong unit.

Why: a wrong unit crashes nothing. MD17 (kcal/mol) read as eV gives forces 23 times too large and
a model trains on them. Three checks, each on physics that holds for every level of theory:

- **Forces**: an RMS above 10 eV/Å over a whole level is not a training set (MD and
  normal-mode sampled sets lie near 1 eV/Å, rattled or high-temperature ones a few eV/Å).
- **Total energies**: the Thomas-Fermi energy, -0.7687 Z^(7/3) Hartree per atom, binds more than
  any real atom (all-electron energies are 65-90 % of it); a level whose energies bind more than
  that (median over structures) is in a smaller unit than stated (kcal/mol read as eV).
  Pseudopotential and referenced energies are smaller still, so they always pass.
- **Spread between levels**: on the structures two levels share, their energies vary alike once
  per-element offsets are removed (methods differ by percent, not by factors); spreads that
  differ by a unit ratio (27.2 for Hartree/eV, 23.1 for eV/(kcal/mol)...) mean one level is in
  the wrong unit.

A finding names the level, the label, the stated unit and the likely one; the caller adds the file
and the key, and refuses the data unless the user overrides (recorded in the manifest).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.units import Hartree

from mfdata.linking import concatenate
from mfdata.records import (
    InvalidDataError,
    Label,
    LabelKey,
    Source,
    Structures,
    empty_structures,
)
from mfdata.schema import StoreStatistics
from mfdata.stats import (
    Composition,
    composition,
    fit_per_element,
    save_statistics,
    store_statistics,
)
from mfdata.store.store import Store
from mfdata.store.zarr_store import read_verified
from mfdata.units import UnitError, parse_unit

MAX_FORCE_RMS = 10.0  # eV/Å
THOMAS_FERMI = 0.7687 * Hartree  # eV: |E_TF| = THOMAS_FERMI * Z^(7/3) per atom
MAX_THOMAS_FERMI_RATIO = 1.2  # median |E| / |E_TF| allowed (all-electron atoms: 0.65-0.92)
TYPICAL_THOMAS_FERMI_RATIO = 0.75  # light-element all-electron energies
MAX_SPREAD_RATIO = 8.0  # spreads of two levels on shared structures
MIN_SHARED = 5  # structures two levels must share for the spread check
# Units a file in the wrong unit is likely to be in, by what they measure.
CANDIDATES = {
    "energy": ("eV", "meV", "Hartree", "kcal/mol", "kJ/mol", "Ry"),
    "force": ("eV/Å", "meV/Å", "Hartree/Bohr", "Hartree/Å", "kcal/mol/Å", "kJ/mol/Å", "Ry/Bohr"),
}


@dataclass(frozen=True)
class Finding:
    """A label whose values are implausible in the unit the source states."""

    level: str
    label: str  # label kind: energy or forces
    stated: str  # the source unit
    problem: str  # what is implausible, with the numbers
    likely: str | None  # the unit that would make the values plausible, if one does

    def message(self, where: str) -> str:
        """One line naming ``where`` (file and key), the problem and the likely unit."""
        likely = f"; likely in {self.likely}" if self.likely else ""
        return f"{where} ({self.level} {self.label}, stated {self.stated}): {self.problem}{likely}"


def check_plausible(
    comp: Composition,
    energies: Mapping[str, Label],
    force_rms: Mapping[str, float],
    units: Mapping[LabelKey, str],
) -> list[Finding]:
    """Every finding over the levels' energies (per structure, eV) and force RMS (eV/Å);
    ``units`` are the source units by (level, label), as the manifest records them."""
    bound = _thomas_fermi(comp)
    n_atoms = comp.counts.sum(axis=1)
    terms = {}
    for level, label in energies.items():
        present = label.present & (bound > 0)
        terms[level] = (label.values[present], bound[present], n_atoms[present])
    return _findings(force_rms, terms, comp, energies, units)


def _thomas_fermi(comp: Composition) -> np.ndarray:
    """Each structure's Thomas-Fermi energy magnitude (eV)."""
    return comp.counts @ (THOMAS_FERMI * comp.numbers.astype(np.float64) ** (7 / 3))


EnergyTerms = tuple[np.ndarray, np.ndarray, np.ndarray]  # energies, their bound, atom counts


def _findings(
    force_rms: Mapping[str, float],
    terms: Mapping[str, EnergyTerms],
    comp: Composition,
    energies: Mapping[str, Label],
    units: Mapping[LabelKey, str],
) -> list[Finding]:
    """The three checks; the spread check on ``comp`` and ``energies``, which need hold only
    the structures that have two energy levels or more."""
    found = [
        finding
        for level, rms in force_rms.items()
        if (finding := _forces(level, rms, units.get((level, "forces"), "eV/Å"))) is not None
    ]
    for level, (values, bound, n_atoms) in terms.items():
        finding = _energies(level, values, bound, n_atoms, units.get((level, "energy"), "eV"))
        if finding is not None:
            found.append(finding)
    levels = sorted(energies)
    for i, a in enumerate(levels):
        for b in levels[i + 1 :]:
            finding = _spread(comp, a, b, energies, units)
            if finding is not None:
                found.append(finding)
    return found


def _stated(unit: str) -> float | None:
    """The factor of a stated unit; None where it is not one unit (a merge of several)."""
    try:
        return parse_unit(unit).factor
    except UnitError:
        return None


def _likely(
    stated: str, dimension: str, scale: float, target: float, top: float, within: float = np.inf
) -> str | None:
    """The candidate unit that brings ``scale`` (a value read in the stated unit) closest to
    ``target`` without passing ``top`` and within a factor ``within``; None if none does, if
    that is the stated unit, or if the stated unit is not one unit."""
    factor = _stated(stated)
    if factor is None:
        return None
    best, distance = None, np.log(within)
    for unit in CANDIDATES[dimension]:
        value = scale * parse_unit(unit).factor / factor
        if value <= top and abs(np.log(value / target)) < distance:
            best, distance = unit, abs(np.log(value / target))
    if best is None or np.isclose(parse_unit(best).factor, factor):
        return None
    return best


def _forces(level: str, rms: float, stated: str) -> Finding | None:
    if not rms > MAX_FORCE_RMS:
        return None
    likely = _likely(stated, "force", rms, 1.0, MAX_FORCE_RMS)
    return Finding(
        level,
        "forces",
        stated,
        f"force RMS {rms:.3g} eV/Å, above the {MAX_FORCE_RMS:g} eV/Å of any training set",
        likely,
    )


def _energies(
    level: str, values: np.ndarray, bound: np.ndarray, n_atoms: np.ndarray, stated: str
) -> Finding | None:
    """``values``: the energies of the structures that have one, with their bounds."""
    if not len(values):
        return None
    ratio = float(np.median(np.abs(values) / bound))
    if not ratio > MAX_THOMAS_FERMI_RATIO:
        return None
    likely = _likely(stated, "energy", ratio, TYPICAL_THOMAS_FERMI_RATIO, 1.0)
    per_atom = float(np.median(values / n_atoms))
    return Finding(
        level,
        "energy",
        stated,
        f"energies (median {per_atom:.6g} eV/atom) bind {ratio:.3g} times more than the "
        "Thomas-Fermi energy of their atoms (real atoms: at most 0.92 times)",
        likely,
    )


def _spread(
    comp: Composition, a: str, b: str, energies: Mapping[str, Label], units: Mapping[LabelKey, str]
) -> Finding | None:
    shared = energies[a].present & energies[b].present
    if int(shared.sum()) < MIN_SHARED:
        return None
    spread = {}
    for level in (a, b):
        fit = fit_per_element(comp, shared, energies[level].values)
        counts = comp.counts[shared][:, fit.columns]
        residual = (energies[level].values[shared] - counts @ fit.energies) / counts.sum(axis=1)
        spread[level] = float(residual.std())
    if min(spread.values()) <= 0:
        return None
    wide, narrow = (b, a) if spread[b] > spread[a] else (a, b)
    ratio = spread[wide] / spread[narrow]
    if ratio < MAX_SPREAD_RATIO:
        return None
    stated = units.get((wide, "energy"), "eV")
    likely = _likely(stated, "energy", ratio, 1.0, np.inf, within=1.5)
    if likely is None:  # not a unit ratio: two very different levels, not a unit error
        return None
    other = _likely(units.get((narrow, "energy"), "eV"), "energy", 1 / ratio, 1.0, np.inf, 1.5)
    if other is not None:
        likely += f", or {narrow} is in {other}"
    return Finding(
        wide,
        "energy",
        stated,
        f"on the {int(shared.sum())} structures it shares with {narrow}, its energies spread "
        f"{ratio:.3g} times wider (per atom, after per-element offsets); one of the two is in "
        f"another unit",
        likely,
    )


class RunningFindings:
    """What the checks need of converted structures, gathered a part (an input file) at a time,
    so a conversion file by file is checked as one in memory: force sums of squares; per
    structure with an energy, the energy, its Thomas-Fermi bound and atom count; and the
    structures with two energy levels or more (the spread check fits their compositions)."""

    def __init__(self) -> None:
        self.squares: dict[str, tuple[float, int]] = {}
        self.terms: dict[str, list[EnergyTerms]] = {}
        self.shared: list[Structures] = []
        self.keys: set[LabelKey] = set()

    def add(self, s: Structures) -> None:
        self.keys.update(s.labels)
        comp = composition(s.numbers, s.n_atoms)
        bound, n_atoms = _thomas_fermi(comp), comp.counts.sum(axis=1)
        n_energies = np.zeros(s.n_structures, dtype=np.int64)
        for (level, kind), label in s.labels.items():
            if kind == "forces" and label.present.any():
                values = label.values[s.atom_mask(label.present)].astype(np.float64)
                total, count = self.squares.get(level, (0.0, 0))
                self.squares[level] = (total + float(np.sum(values**2)), count + values.size)
            if kind == "energy":
                present = label.present & (bound > 0)
                part = (label.values[present], bound[present], n_atoms[present])
                self.terms.setdefault(level, []).append(part)
                n_energies += label.present
        if (n_energies >= 2).any():
            self.shared.append(s.select(np.flatnonzero(n_energies >= 2)))

    def findings(self, sources: Sequence[Source]) -> list[str]:
        """The findings as messages naming the files and keys they came from."""
        force_rms = {level: float(np.sqrt(t / n)) for level, (t, n) in self.squares.items()}
        terms = {
            level: tuple(np.concatenate(column) for column in zip(*parts, strict=True))
            for level, parts in self.terms.items()
        }
        shared = concatenate(self.shared) if self.shared else empty_structures()
        energies = {
            level: shared.labels.get(
                (level, "energy"),
                Label(np.zeros(shared.n_structures), np.zeros(shared.n_structures, dtype=bool)),
            )
            for level in terms
        }
        units = {
            key: ", ".join(sorted({u for src in sources if (u := src.source_units.get(key))}))
            for key in self.keys
        }
        comp = composition(shared.numbers, shared.n_atoms)
        found = _findings(force_rms, terms, comp, energies, units)
        return [f.message(_where(f, sources)) for f in found]


def source_findings(structures: Structures, sources: Sequence[Source]) -> list[str]:
    """The findings on linked ``structures`` as messages naming the files and keys they came
    from (``convert`` refuses them unless overridden)."""
    running = RunningFindings()
    running.add(structures)
    return running.findings(sources)


def _where(finding: Finding, sources: Sequence[Source]) -> str:
    """The files and keys a label came from."""
    key = (finding.level, finding.label)
    return "; ".join(
        f"{src.path}: key {src.keys.get(key, finding.label)!r}"
        for src in sources
        if key in src.source_units
    )


def store_findings(store: Store, statistics: StoreStatistics) -> list[str]:
    """The findings on a store as messages naming it (force RMS from ``statistics``, energies
    read from the store)."""
    levels = [level for level, s in store.manifest.levels.items() if "energy" in s.labels]
    names = ["atoms/numbers", "structures/n_atoms"]
    names += [f"labels/{level}/energy/{part}" for level in levels for part in ("values", "present")]
    a = read_verified(store.zarr_path, names, store.manifest, store.path)
    comp = composition(a["atoms/numbers"], a["structures/n_atoms"])
    energies = {
        level: Label(a[f"labels/{level}/energy/values"], a[f"labels/{level}/energy/present"])
        for level in levels
    }
    force_rms = {
        level: s.force_rms for level, s in statistics.levels.items() if s.force_rms is not None
    }
    units = {
        (level, kind): ", ".join(label.source_units)
        for level, summary in store.manifest.levels.items()
        for kind, label in summary.labels.items()
    }
    found = check_plausible(comp, energies, force_rms, units)
    return [f.message(str(store.path)) for f in found]


def checked_statistics(
    store: Store, allow_implausible: bool = False
) -> tuple[StoreStatistics, list[str]]:
    """A store's statistics unless a finding refuses them; a store whose manifest records an
    override (or ``allow_implausible``) keeps them, and the findings are returned for the user
    to see."""
    stats = store_statistics(store)
    found = store_findings(store, stats)
    if found and not (allow_implausible or store.manifest.provenance.implausible_allowed):
        raise InvalidDataError(
            "values implausible for their stated unit: "
            + " | ".join(found)
            + " (convert again with the right --units; if the values are right, run mfdata stats "
            "--allow-implausible, which the manifest records)"
        )
    return stats, found


def update_checked_statistics(
    path: str | Path, allow_implausible: bool = False
) -> tuple[StoreStatistics, list[str]]:
    """``mfdata stats``: :func:`checked_statistics`, saved in the store's manifest (with
    ``allow_implausible``, the override recorded)."""
    stats, found = checked_statistics(Store(path), allow_implausible)
    save_statistics(path, stats, found if allow_implausible else [])
    return stats, found
