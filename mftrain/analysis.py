"""Checks and comparisons of trained models: a short MD stability check, and linear CKA.

- :func:`md_check` runs an exported head (a nequip package, through nequip's ASE calculator)
  in Langevin dynamics and then in NVE, and reports the NVE energy drift and any atoms that fly
  apart (a bond graph at ``bond_factor`` times the covalent radii that splits into more
  fragments than the starting structure has). Short runs like these catch the common failures of
  a potential trained on little data (holes, exploding forces), not subtle ones.
- :func:`linear_cka` is the linear centred kernel alignment of two representations of the same
  samples (Kornblith et al. 2019): 1 for representations equal up to an orthogonal transform and
  an isotropic scaling, near 0 for unrelated ones. :func:`backbone_features` gives a model's
  representation: the node features after its last interaction layer, one row per atom.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------- MD check


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

    def summary(self) -> dict:
        """The numbers without the per-step series (for JSON tables)."""
        data = asdict(self)
        data.pop("nve_time_ps")
        data.pop("nve_energy_ev_per_atom")
        return data


def fragments(atoms, bond_factor: float) -> np.ndarray:
    """Fragment index of every atom: connected components of the bond graph (a bond: closer
    than ``bond_factor`` times the sum of the covalent radii)."""
    from ase.neighborlist import NeighborList, natural_cutoffs
    from scipy.sparse.csgraph import connected_components

    cutoffs = natural_cutoffs(atoms, mult=bond_factor)
    nl = NeighborList(cutoffs, self_interaction=False, bothways=True, skin=0.0)
    nl.update(atoms)
    _, labels = connected_components(nl.get_connectivity_matrix(sparse=True), directed=False)
    return labels


def md_check(
    package: str | Path,
    atoms,
    temperature_K: float = 300.0,
    timestep_fs: float = 0.5,
    langevin_steps: int = 200,
    nve_steps: int = 400,
    seed: int = 0,
    bond_factor: float = 1.5,
    friction_per_fs: float = 0.01,
) -> MDCheck:
    """Langevin at ``temperature_K`` from ``atoms``, then NVE, with the model in ``package``."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet
    from nequip.integrations.ase import NequIPCalculator

    atoms = atoms.copy()
    atoms.calc = NequIPCalculator._from_saved_model(
        str(package), chemical_species_to_atom_type_map=True
    )
    n = len(atoms)
    start = fragments(atoms, bond_factor)
    n_start = int(start.max()) + 1
    record = {"max": n_start, "detached": [], "first": None, "failure": None}

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


# --------------------------------------------------------------------------- CKA


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same ``n`` samples, ``(n, p)`` and ``(n, q)``:
    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs two (n, features) arrays of one n: {x.shape}, {y.shape}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if norm == 0:
        raise ValueError("CKA of a constant representation is undefined")
    return float(cross / norm)


def backbone_features(ckpt: str | Path, store: str | Path, level: str | None = None) -> np.ndarray:
    """Node features after the last interaction layer of checkpoint ``ckpt``'s backbone, for every
    atom of every structure of ``store`` in store order (frames given to head ``level``, default
    the first head; it matters only where the level is a backbone input). Every structure must
    have a label at ``level``, so that rows of two models line up."""
    import torch
    from nequip.data import AtomicDataDict

    from mfdata.loader import FidelityDataset, frame_transforms
    from mftrain.evaluate import checkpoint_info, load_model

    info = checkpoint_info(ckpt)
    level = level or info["levels"][0]
    if level not in info["levels"]:
        raise ValueError(f"{ckpt}: no head {level!r} (heads: {', '.join(info['levels'])})")
    model = load_model(ckpt)
    layers = {}
    for name, module in model.named_modules():
        found = re.search(r"layer(\d+)_convnet$", name)
        if found:
            layers[int(found.group(1))] = module
    if not layers:
        raise ValueError(f"{ckpt}: no interaction layers (layerN_convnet) in the model")
    dataset = FidelityDataset(
        [str(store)],
        info["levels"],
        type_names=info["type_names"],
        dtype=info["model_dtype"],
        transforms=frame_transforms(info["r_max"], info["type_names"]),
    )
    chosen = np.flatnonzero(dataset.sample_head == info["levels"].index(level))
    n_structures = dataset.store_n_atoms[0].shape[0]
    if len(chosen) != n_structures:
        raise ValueError(f"{store}: {n_structures - len(chosen)} structures have no {level} label")
    captured: list[torch.Tensor] = []
    hook = layers[max(layers)].register_forward_hook(
        lambda module, inputs, output: captured.append(
            output[AtomicDataDict.NODE_FEATURES_KEY].detach().double()
        )
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, chosen.tolist()),
        batch_size=32,
        collate_fn=AtomicDataDict.batched_from_list,
    )
    try:
        for batch in loader:
            model(batch)
    finally:
        hook.remove()
    return torch.cat(captured).numpy()
