"""Per-level statistics: reference energies, per-atom energy spread, force RMS, level alignment.

Why: methods differ by hundreds of eV in total energy, so every training head needs its own
per-type shift (per-element reference energies) and scale (force RMS); and a user who mixes
levels wants to know how far apart two levels are on the structures they share once a
per-element offset is removed. The numbers live in the manifest (not in the checksummed arrays),
so computing them never changes a store's identity.

Everything is columnar numpy: the composition matrix comes from one ``bincount`` over
(structure, element), and fits run on the unique compositions with their counts as weights,
which is the same least-squares problem as one row per structure, at a fraction of the size.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from ase.data import chemical_symbols

from mfdata.levels import isolated_atom_energies
from mfdata.records import Label, Structures
from mfdata.schema import LevelAlignment, LevelStatistics, StoreStatistics
from mfdata.store.lock import store_lock
from mfdata.store.manifest import write_manifest
from mfdata.store.store import Store
from mfdata.store.zarr_store import (
    ATOM_CHUNK,
    StreamChecksum,
    array_checksum,
    check_checksums,
    reading_zarr,
)

# Structures per block when counting compositions: bounds the per-atom index array's memory.
_BLOCK_STRUCTURES = 1 << 20
_FORCE_BLOCK_ATOMS = ATOM_CHUNK * 16


class StatisticsWarning(UserWarning):
    """Statistics that the data cannot fully determine (e.g. a rank-deficient composition)."""


@dataclass
class Composition:
    """Element counts per structure, and the distinct compositions (fits run on those)."""

    numbers: np.ndarray  # atomic numbers of the columns, (n_elements,)
    counts: np.ndarray  # int64, (n_structures, n_elements)
    unique: np.ndarray  # int64, (n_unique, n_elements)
    inverse: np.ndarray  # int64, (n_structures,): row of ``unique`` for each structure

    @property
    def symbols(self) -> list[str]:
        return [chemical_symbols[z] for z in self.numbers]


def composition(numbers: np.ndarray, n_atoms: np.ndarray) -> Composition:
    """Count the atoms of each element in each structure, without a per-structure loop."""
    numbers = np.asarray(numbers)
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    elements = np.unique(numbers).astype(np.int64)
    k = len(elements)
    column = np.full(256, -1, dtype=np.int64)
    column[elements] = np.arange(k)
    n = len(n_atoms)
    counts = np.zeros((n, k), dtype=np.int64)
    start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(n_atoms, out=start[1:])
    for b0 in range(0, n, _BLOCK_STRUCTURES):
        b1 = min(n, b0 + _BLOCK_STRUCTURES)
        block = n_atoms[b0:b1]
        rows = np.repeat(np.arange(b1 - b0, dtype=np.int64) * k, block)
        key = rows + column[numbers[start[b0] : start[b1]]]
        counts[b0:b1] = np.bincount(key, minlength=(b1 - b0) * k).reshape(b1 - b0, k)
    unique, inverse = _unique_rows(counts)
    return Composition(elements, counts, unique, inverse)


def _unique_rows(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows and the inverse map; one integer key per row when it fits (much faster)."""
    if counts.shape[0] == 0:
        return counts[:0], np.zeros(0, dtype=np.int64)
    base = [int(m) + 1 for m in counts.max(axis=0)]
    if int(np.prod(base, dtype=object)) < 2**62:
        mult = np.cumprod([1, *base[:-1]], dtype=np.int64)
        _, first, inverse = np.unique(counts @ mult, return_index=True, return_inverse=True)
        return counts[first], inverse.reshape(-1)
    unique, inverse = np.unique(counts, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)


@dataclass
class Fit:
    """Per-element energies fitted to per-structure values on a subset of structures."""

    columns: np.ndarray  # columns of the composition the subset uses (elements present)
    energies: np.ndarray  # eV per atom, one per column
    rank: int
    method: str  # "least_squares" or "minimum_norm"


def fit_per_element(comp: Composition, mask: np.ndarray, values: np.ndarray) -> Fit:
    """Least squares of ``values[mask]`` on composition; minimum-norm where rank-deficient.

    Where the compositions do not determine every element (one molecule: all rows alike), the
    answer is one common per-atom offset plus the minimum-norm correction that the compositions
    do determine; with full rank this is the ordinary least-squares solution.
    """
    inverse = comp.inverse[mask]
    y = np.asarray(values, dtype=np.float64)[mask]
    n_unique = len(comp.unique)
    weight = np.bincount(inverse, minlength=n_unique).astype(np.float64)
    total = np.bincount(inverse, weights=y, minlength=n_unique)
    used = weight > 0
    columns = np.flatnonzero(comp.unique[used].any(axis=0))
    c = comp.unique[used][:, columns].astype(np.float64)
    w, y_mean = weight[used], total[used] / weight[used]
    n_atoms = c.sum(axis=1)
    offset = float(np.sum(w * n_atoms * y_mean) / np.sum(w * n_atoms**2))
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    rank = int(np.sum(s > s.max() * max(c.shape) * np.finfo(float).eps))
    basis = vt[:rank].T  # row space of the composition matrix: where the data says something
    sw = np.sqrt(w)
    a = np.linalg.lstsq(sw[:, None] * (c @ basis), sw * (y_mean - n_atoms * offset), rcond=None)[0]
    energies = offset + basis @ a
    method = "least_squares" if rank == len(columns) else "minimum_norm"
    return Fit(columns, energies, rank, method)


def _rank(comp: Composition, mask: np.ndarray) -> tuple[np.ndarray, int]:
    used = np.zeros(len(comp.unique), dtype=bool)
    used[comp.inverse[mask]] = True
    columns = np.flatnonzero(comp.unique[used].any(axis=0))
    return columns, int(np.linalg.matrix_rank(comp.unique[used][:, columns].astype(np.float64)))


def _rank_warning(what: str, n: int, fit: Fit, comp: Composition) -> str:
    symbols = " ".join(comp.symbols[c] for c in fit.columns)
    return (
        f"{what}: the compositions of its {n} structures determine only {fit.rank} of "
        f"{len(fit.columns)} per-element energies ({symbols}): rank-deficient composition "
        "matrix (e.g. a single molecule); used the minimum-norm fit (one common per-atom offset "
        "plus what the compositions determine), which is not a physical per-element energy"
    )


def _level_statistics(
    level: str,
    comp: Composition,
    energy: Label | None,
    forces: tuple[float, int, int] | None,
    atom_energies: Mapping[str, float],
) -> LevelStatistics:
    stats = LevelStatistics()
    if forces is not None:
        sum_sq, n_components, n_structures = forces
        stats.n_forces = n_structures
        if n_components:
            stats.force_rms = float(np.sqrt(sum_sq / n_components))
    if energy is None or not energy.present.any():
        return stats
    present = energy.present
    n = int(present.sum())
    stats.n_energies = n
    columns, rank = _rank(comp, present)
    symbols = [comp.symbols[c] for c in columns]
    atom_energies, source = isolated_atom_energies(level, atom_energies)
    missing = [s for s in symbols if s not in atom_energies]
    if atom_energies and not missing:
        method, ref = "isolated_atoms", np.array([atom_energies[s] for s in symbols])
        stats.reference_source = source
    else:
        if atom_energies:
            stats.warnings.append(
                f"{level}: isolated-atom energies ({source}) lack {' '.join(missing)}: fitted all "
                "reference "
                "energies by least squares on composition instead"
            )
        fit = fit_per_element(comp, present, energy.values)
        method, ref, rank = fit.method, fit.energies, fit.rank
        if method == "minimum_norm":
            stats.warnings.append(
                _rank_warning(level, n, fit, comp)
                + "; give isolated-atom energies (convert --isolated-atoms) for physical ones"
            )
    counts = comp.counts[present][:, columns]
    per_atom = (energy.values[present] - counts @ ref) / counts.sum(axis=1)
    stats.reference_method = method
    stats.reference_energies = {s: float(e) for s, e in zip(symbols, ref, strict=True)}
    stats.rank, stats.n_elements = rank, len(columns)
    stats.energy_per_atom_mean = float(per_atom.mean())
    stats.energy_per_atom_std = float(per_atom.std())
    return stats


def _alignment(
    level_a: str, level_b: str, comp: Composition, a: Label, b: Label
) -> LevelAlignment | None:
    shared = a.present & b.present
    n = int(shared.sum())
    if n == 0:
        return None
    difference = np.where(shared, b.values - a.values, 0.0)
    fit = fit_per_element(comp, shared, difference)
    counts = comp.counts[shared][:, fit.columns]
    residual = difference[shared] - counts @ fit.energies
    per_atom = residual / counts.sum(axis=1)
    found = []
    if fit.method == "minimum_norm":
        found.append(_rank_warning(f"{level_b} - {level_a}", n, fit, comp))
    return LevelAlignment(
        from_level=level_a,
        to_level=level_b,
        n_shared=n,
        method=fit.method,  # type: ignore[arg-type]
        rank=fit.rank,
        n_elements=len(fit.columns),
        offsets={comp.symbols[c]: float(e) for c, e in zip(fit.columns, fit.energies, strict=True)},
        residual_rms_per_structure=float(np.sqrt(np.mean(residual**2))),
        residual_mae_per_structure=float(np.mean(np.abs(residual))),
        residual_rms_per_atom=float(np.sqrt(np.mean(per_atom**2))),
        residual_mae_per_atom=float(np.mean(np.abs(per_atom))),
        warnings=found,
    )


def _statistics(
    numbers: np.ndarray,
    n_atoms: np.ndarray,
    levels: list[str],
    energies: Mapping[str, Label],
    forces: Mapping[str, tuple[float, int, int]],
    atom_energies: Mapping[str, Mapping[str, float]],
) -> StoreStatistics:
    comp = composition(numbers, n_atoms)
    result = StoreStatistics()
    for level in levels:
        if level in energies or level in forces:
            result.levels[level] = _level_statistics(
                level, comp, energies.get(level), forces.get(level), atom_energies.get(level, {})
            )
    labelled = [level for level in levels if level in energies]
    for i, level_a in enumerate(labelled):
        for level_b in labelled[i + 1 :]:
            found = _alignment(level_a, level_b, comp, energies[level_a], energies[level_b])
            if found is not None:
                result.alignments.append(found)
    for message in all_warnings(result):
        warnings.warn(message, StatisticsWarning, stacklevel=3)
    return result


def all_warnings(stats: StoreStatistics) -> list[str]:
    """Every warning recorded in ``stats``, levels first."""
    found = [w for level in stats.levels.values() for w in level.warnings]
    return found + [w for alignment in stats.alignments for w in alignment.warnings]


def compute_statistics(
    structures: Structures, atom_energies: Mapping[str, Mapping[str, float]] | None = None
) -> StoreStatistics:
    """Statistics of structures in memory; ``atom_energies``: isolated-atom eV by level, symbol."""
    s = structures
    levels = sorted({level for level, _ in s.labels})
    energies = {lvl: s.labels[(lvl, "energy")] for lvl in levels if (lvl, "energy") in s.labels}
    forces = {
        level: _force_sums(label.values, label.present, s.n_atoms)
        for (level, kind), label in s.labels.items()
        if kind == "forces"
    }
    return _statistics(s.numbers, s.n_atoms, levels, energies, forces, atom_energies or {})


def store_statistics(store: Store) -> StoreStatistics:
    """Statistics of a store, reading only atomic numbers, energies and (streamed) forces,
    each checked against the manifest's checksums (one sha256 pass over the bytes read)."""
    energies: dict[str, Label] = {}
    forces: dict[str, tuple[float, int, int]] = {}
    with reading_zarr(store.path):
        root = zarr.open_group(store.zarr_path, mode="r", zarr_format=3)
        read = {n: root[n][...] for n in ("atoms/numbers", "structures/n_atoms")}
        labels = dict(root["labels"].groups()) if "labels" in root else {}
        for level, group in labels.items():
            kinds = dict(group.groups())
            for kind in ("energy", "forces"):
                if kind in kinds:
                    name = f"labels/{level}/{kind}/present"
                    read[name] = root[name][...]
            if "energy" in kinds:
                name = f"labels/{level}/energy/values"
                read[name] = root[name][...]
        checksums = {name: array_checksum(array) for name, array in read.items()}
        n_atoms = read["structures/n_atoms"].astype(np.int64)
        check_checksums(store.path, store.manifest, checksums)
        for level, group in labels.items():
            kinds = dict(group.groups())
            if "energy" in kinds:
                energies[level] = Label(
                    read[f"labels/{level}/energy/values"], read[f"labels/{level}/energy/present"]
                )
            if "forces" in kinds:
                name, values = f"labels/{level}/forces/values", kinds["forces"]["values"]
                if values.shape[0] != len(read["atoms/numbers"]):  # its checksum cannot match
                    check_checksums(store.path, store.manifest, {name: "wrong shape"})
                digest = StreamChecksum(values.dtype, values.shape)
                present = read[f"labels/{level}/forces/present"]
                forces[level] = _force_sums(values, present, n_atoms, digest)
                check_checksums(store.path, store.manifest, {name: digest.hexdigest()})
    atom_energies = {level: s.atom_energies for level, s in store.manifest.levels.items()}
    return _statistics(
        read["atoms/numbers"], n_atoms, store.levels, energies, forces, atom_energies
    )


def _force_sums(
    values: np.ndarray | zarr.Array,
    present: np.ndarray,
    n_atoms: np.ndarray,
    digest: StreamChecksum | None = None,
) -> tuple[float, int, int]:
    """Sum of squared force components over structures with forces, a block of atoms at a time
    (``values`` may be a Zarr array: without a ``digest`` to feed every block, a block is read
    only when one of its atoms is wanted)."""
    atoms = np.repeat(present, n_atoms)
    total, count = 0.0, 0
    for a0 in range(0, len(atoms), _FORCE_BLOCK_ATOMS):
        keep = atoms[a0 : a0 + _FORCE_BLOCK_ATOMS]
        if digest is None and not keep.any():
            continue
        block = np.asarray(values[a0 : a0 + len(keep)])
        if digest is not None:
            digest.update(block)
        if keep.any():
            f = (block if keep.all() else block[keep]).astype(np.float64, copy=False)
            total += float(np.einsum("ij,ij->", f, f))
            count += f.size
    return total, count, int(present.sum())


def update_statistics(path: str | Path) -> StoreStatistics:
    """Compute a store's statistics and save them in its manifest (atomically; checksum kept),
    under the store's lock (the manifest is re-read inside it: no other writer's change is lost).
    """
    stats = store_statistics(Store(path))
    save_statistics(path, stats)
    return stats


def save_statistics(
    path: str | Path, stats: StoreStatistics, implausible_allowed: Sequence[str] = ()
) -> None:
    """Save ``stats`` in the store's manifest (atomically, under the store's lock; checksum
    kept), adding the plausibility findings the user overrode to its provenance."""
    with store_lock(Path(path)):
        current = Store(path)  # re-read inside the lock: no other writer's change is lost
        provenance = current.manifest.provenance
        allowed = provenance.implausible_allowed
        allowed = allowed + [m for m in implausible_allowed if m not in allowed]
        update = {
            "statistics": stats,
            "provenance": provenance.model_copy(update={"implausible_allowed": allowed}),
        }
        write_manifest(current.path, current.manifest.model_copy(update=update))


def format_statistics(stats: StoreStatistics) -> str:
    """The text ``mfdata stats`` prints."""
    lines = []
    for level, s in stats.levels.items():
        lines.append(f"{level}: {s.n_energies} energies, {s.n_forces} with forces")
        if s.reference_method is not None:
            refs = "  ".join(f"{sym} {e:.6f}" for sym, e in s.reference_energies.items())
            lines.append(
                f"  reference energies ({s.reference_method}, rank {s.rank} of "
                f"{s.n_elements} elements), eV: {refs}"
            )
            lines.append(
                f"  energy per atom after referencing: mean {s.energy_per_atom_mean:.6f} "
                f"std {s.energy_per_atom_std:.6f} eV/atom"
            )
        if s.force_rms is not None:
            lines.append(f"  force RMS {s.force_rms:.6f} eV/Å (per component)")
    for a in stats.alignments:
        offsets = "  ".join(f"{sym} {e:.6f}" for sym, e in a.offsets.items())
        lines.append(
            f"{a.to_level} - {a.from_level}: {a.n_shared} shared structures, offsets "
            f"({a.method}, rank {a.rank} of {a.n_elements}), eV: {offsets}"
        )
        lines.append(
            f"  residual RMS {a.residual_rms_per_structure:.6f} eV "
            f"({a.residual_rms_per_atom:.6f} eV/atom), MAE {a.residual_mae_per_structure:.6f} eV "
            f"({a.residual_mae_per_atom:.6f} eV/atom)"
        )
    return "\n".join(lines) if lines else "no energies or forces in this store"
