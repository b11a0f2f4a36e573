"""``mfdata sample``: molecular geometries drawn from GFN2-xTB Langevin dynamics (tblite, ASE).

The frames are geometries to be labelled (``mfdata label``), not labels: the output extxyz holds
positions and, in each frame's ``info``, the charge and multiplicity (so labelling needs no
flags), the target temperature, the MD step and the seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from ase.build import molecule
from ase.collections import g2
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from tqdm import tqdm

from mfdata.calculators import calculator
from mfdata.errors import UsageError
from mfdata.files import atomic_file
from mfdata.levels import registry
from mfdata.records import InvalidDataError

MD_LEVEL = "gfn2-xtb"


def initial_structure(name_or_file: str) -> tuple[Atoms, bool]:
    """A structure file (its first frame), or an ``ase.build.molecule`` name (g2 set: 'CH3OH',
    'H2O', ...); and whether it came from ``ase.build``."""
    if Path(name_or_file).is_file():
        try:
            return ase.io.read(name_or_file, index=0), False
        except Exception as exc:  # ase raises many types for unreadable files
            raise InvalidDataError(f"{name_or_file}: cannot be read by ASE: {exc}") from exc
    if name_or_file in g2.names:
        return molecule(name_or_file), True
    raise InvalidDataError(
        f"{name_or_file!r}: neither a file nor an ase.build.molecule name (e.g. CH3OH, H2O, "
        "CH3CHO; see ase.collections.g2.names)"
    )


def _spin(
    atoms: Atoms, built: bool, charge: int | None, multiplicity: int | None
) -> tuple[int, int]:
    """Charge and multiplicity: given, else stated by the file's info, else ase.build's moments.

    ``ase.build.molecule`` builds neutral molecules and marks radicals by initial magnetic
    moments; a file must state what it is (info ``charge``, ``multiplicity``) or the flags must.
    """
    info = atoms.info
    if charge is None:
        charge = info.get("total_charge", info.get("charge"))
    if multiplicity is None:
        multiplicity = info.get("multiplicity")
    if charge is None and built:
        charge = 0
    if multiplicity is None and built:
        multiplicity = int(round(abs(atoms.get_initial_magnetic_moments().sum()))) + 1
    if charge is None or multiplicity is None:
        raise InvalidDataError(
            "the structure file states no charge or multiplicity (info 'charge', "
            "'multiplicity'); pass --charge and --multiplicity"
        )
    electrons = int(atoms.numbers.sum()) - int(charge)
    if (electrons + int(multiplicity) - 1) % 2 or multiplicity < 1:
        raise InvalidDataError(f"{electrons} electrons cannot have multiplicity {multiplicity}")
    return int(charge), int(multiplicity)


def sample(
    name_or_file: str,
    n: int,
    temperature: float,
    out: str | Path,
    *,
    seed: int = 0,
    timestep: float = 0.5,
    interval: int = 100,
    equilibration: int = 2000,
    friction: float = 0.01,
    charge: int | None = None,
    multiplicity: int | None = None,
) -> Path:
    """Write ``n`` frames, ``interval`` steps apart after ``equilibration`` steps, to ``out``.

    Langevin dynamics at ``temperature`` (K), ``timestep`` in fs, ``friction`` in 1/fs, with
    GFN2-xTB forces from tblite; velocities start from a Maxwell-Boltzmann distribution. The
    same arguments give the same frames on one machine with the same library versions and one
    thread (one seeded random generator drives both the velocities and the thermostat).
    """
    out = Path(out)
    if n < 1 or interval < 1 or equilibration < 0:
        raise UsageError("--n and --interval must be positive, --equilibration not negative")
    if temperature <= 0 or timestep <= 0 or friction <= 0:
        raise UsageError("--temperature, --timestep and friction must be positive")
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose another output path")
    atoms, built = initial_structure(name_or_file)
    charge, multiplicity = _spin(atoms, built, charge, multiplicity)
    if atoms.pbc.any():
        raise InvalidDataError(f"{name_or_file}: periodic; mfdata sample runs molecules")
    atoms = Atoms(numbers=atoms.numbers, positions=atoms.positions, constraint=FixCom())
    # one small molecule: OpenMP threads only add overhead (and spin on a busy machine); read
    # when tblite is first imported, so this holds unless the caller imported it before
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    atoms.calc = calculator(registry()[MD_LEVEL].compute, charge, multiplicity)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dynamics = Langevin(  # FixCom, not fixcm: ASE's advice for correct NVT sampling
        atoms,
        timestep * units.fs,
        temperature_K=temperature,
        friction=friction / units.fs,
        fixcm=False,
        rng=rng,
    )
    frames = []
    with tqdm(
        total=equilibration + n * interval, desc=f"MD {name_or_file}", unit=" steps", disable=None
    ) as bar:
        dynamics.attach(bar.update, interval=1)
        dynamics.run(equilibration)
        for _ in range(n):
            dynamics.run(interval)
            frame = Atoms(numbers=atoms.numbers, positions=atoms.positions)
            frame.info.update(
                charge=charge,
                multiplicity=multiplicity,
                temperature_K=temperature,
                step=dynamics.nsteps,
                seed=seed,
                md_level=MD_LEVEL,
            )
            frames.append(frame)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    return out
