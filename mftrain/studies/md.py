"""A short MD stability check of an exported head.

:func:`md_check` runs a nequip package (one head exported by ``mftrain export``, through
nequip's ASE calculator) in Langevin dynamics and then in NVE, and reports the NVE energy drift
and any atoms that fly apart (a bond graph at ``bond_factor`` times the covalent radii that
splits into more fragments than the starting structure has). Short runs like these catch the
common failures of a potential trained on little data (holes, exploding forces), not subtle
ones. A model that fails (NaN, an exception in a step) gives a result with ``stable`` False and
the failure named, not an exception.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import NeighborList, natural_cutoffs
from nequip.integrations.ase import NequIPCalculator
from scipy.sparse.csgraph import connected_components


@dataclass
class MDCheck:
    """What :func:`md_check` measured; energies per atom, times in ps."""

    temperature_K: float
    timestep_fs: float
    langevin_steps: int
    nve_steps: int
    n_atoms: int
    drift_ev_per_atom_per_ps: float | None  # slope of the NVE total energy; None if it failed
    nve_energy_std_ev_per_atom: float | None
    mean_temperature_K: float | None  # over the NVE part
    fragments_start: int
    fragments_max: int
    detached_atoms: list[int]  # atoms outside the largest fragment when it first split
    first_split_step: int | None  # steps since the start of the Langevin part
    stable: bool  # no split and finite energies throughout
    failure: str | None = None
    nve_time_ps: list[float] = field(default_factory=list)
    nve_energy_ev_per_atom: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The numbers without the per-step series (for JSON tables)."""
        data = asdict(self)
        data.pop("nve_time_ps")
        data.pop("nve_energy_ev_per_atom")
        return data


def fragments(atoms: Atoms, bond_factor: float) -> np.ndarray:
    """Fragment index of every atom: connected components of the bond graph (a bond: closer
    than ``bond_factor`` times the sum of the covalent radii)."""
    cutoffs = natural_cutoffs(atoms, mult=bond_factor)
    nl = NeighborList(cutoffs, self_interaction=False, bothways=True, skin=0.0)
    nl.update(atoms)
    _, labels = connected_components(nl.get_connectivity_matrix(sparse=True), directed=False)
    return labels


def md_check(
    package: str | Path,
    atoms: Atoms,
    temperature_K: float = 300.0,
    timestep_fs: float = 0.5,
    langevin_steps: int = 200,
    nve_steps: int = 400,
    seed: int = 0,
    bond_factor: float = 1.5,
    friction_per_fs: float = 0.01,
) -> MDCheck:
    """Langevin at ``temperature_K`` from ``atoms``, then NVE, with the model in ``package``."""
    atoms = atoms.copy()
    atoms.calc = NequIPCalculator._from_saved_model(
        str(package), chemical_species_to_atom_type_map=True
    )
    n = len(atoms)
    start = fragments(atoms, bond_factor)
    n_start = int(start.max()) + 1
    record: dict[str, Any] = {"max": n_start, "detached": [], "first": None, "failure": None}

    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K, rng=rng)
    dt = timestep_fs * units.fs
    langevin = Langevin(
        atoms,
        dt,
        temperature_K=temperature_K,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    nve = VelocityVerlet(atoms, dt)

    def watch() -> None:
        labels = fragments(atoms, bond_factor)
        count = int(labels.max()) + 1
        record["max"] = max(record["max"], count)
        if count > n_start and record["first"] is None:
            largest = np.bincount(labels).argmax()
            record["first"] = langevin.nsteps + nve.nsteps
            record["detached"] = [int(i) for i in np.flatnonzero(labels != largest)]

    langevin.attach(watch, interval=1)
    times, energies, temperatures = [], [], []

    def log_nve() -> None:  # also called before the first step
        times.append(nve.nsteps * timestep_fs / 1000.0)
        energies.append(float(atoms.get_total_energy()) / n)
        temperatures.append(float(atoms.get_temperature()))

    nve.attach(watch, interval=1)
    nve.attach(log_nve, interval=1)
    try:
        langevin.run(langevin_steps)
        nve.run(nve_steps)
    except (RuntimeError, ValueError, FloatingPointError) as exc:  # e.g. NaN in the model
        record["failure"] = f"{type(exc).__name__}: {exc}"[:300]
    finite = bool(energies) and bool(np.all(np.isfinite(energies)))
    drift = std = mean_t = None
    if finite and len(energies) > 2:
        drift = float(np.polyfit(times, energies, 1)[0])
        std = float(np.std(energies))
        mean_t = float(np.mean(temperatures))
    if not finite and record["failure"] is None:
        record["failure"] = "non-finite energies in NVE" if energies else "no NVE steps ran"
    return MDCheck(
        temperature_K=temperature_K,
        timestep_fs=timestep_fs,
        langevin_steps=langevin_steps,
        nve_steps=nve_steps,
        n_atoms=n,
        drift_ev_per_atom_per_ps=drift,
        nve_energy_std_ev_per_atom=std,
        mean_temperature_K=mean_t,
        fragments_start=n_start,
        fragments_max=record["max"],
        detached_atoms=record["detached"],
        first_split_step=record["first"],
        stable=record["first"] is None and record["failure"] is None and finite,
        failure=record["failure"],
        nve_time_ps=times,
        nve_energy_ev_per_atom=energies,
    )
