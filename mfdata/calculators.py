"""ASE calculators for the levels mfkit computes itself: tblite (GFN-xTB) and PySCF.

A level's registry entry carries a :class:`~mfdata.schema.ComputeRecipe`; :func:`calculator`
turns it into an ASE calculator, so that ``mfdata label`` and ``mfdata sample`` compute exactly
what the registry states. tblite and PySCF are the optional extra ``mfkit[label]``; they are
imported only when a calculator is made.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree

from mfdata.errors import MfkitError
from mfdata.schema import ComputeRecipe

PACKAGES = {"tblite": "tblite", "pyscf": "pyscf"}  # program -> distribution that provides it


class CalculationError(MfkitError, RuntimeError):
    """A calculation that did not converge or failed inside the program."""


class MissingProgramError(MfkitError, ImportError):
    """The program a recipe needs is not installed."""


def program_version(program: str) -> str:
    """The installed version of ``program``; a clear error if the extra is not installed."""
    try:
        return version(PACKAGES[program])
    except PackageNotFoundError as exc:
        raise MissingProgramError(
            f"{program} is not installed; install the labelling extra: pip install 'mfkit[label]'"
        ) from exc


def calculator(recipe: ComputeRecipe, charge: int, multiplicity: int) -> Calculator:
    """An ASE calculator that runs ``recipe`` for a molecule of the given charge and spin."""
    if recipe.program == "tblite":
        from tblite.ase import TBLite

        options = {} if recipe.accuracy is None else {"accuracy": recipe.accuracy}
        return TBLite(
            method=recipe.method,
            charge=charge,
            multiplicity=multiplicity,
            verbosity=0,
            **options,
        )
    return PySCFCalculator(recipe=recipe, charge=charge, multiplicity=multiplicity)


class PySCFCalculator(Calculator):
    """Energy (and analytic forces where the recipe has them) of a molecule with PySCF.

    Builds ``gto.M`` from the Atoms (positions in Å) and runs the recipe's method: HF or
    Kohn-Sham DFT, MP2 or CCSD(T) on an HF reference. Results in eV and eV/Å.
    """

    implemented_properties = ["energy", "forces"]
    default_parameters = {"recipe": None, "charge": 0, "multiplicity": 1}

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        recipe: ComputeRecipe = self.parameters.recipe
        if "forces" in properties and "forces" not in recipe.labels:
            raise CalculationError(f"the recipe {recipe.method} computes no forces")
        from pyscf import cc, dft, gto, mp, scf
        from pyscf.data.elements import chemcore

        mol = gto.M(
            atom=list(zip(self.atoms.numbers.tolist(), self.atoms.positions.tolist(), strict=True)),
            unit="Angstrom",
            basis=recipe.basis,
            cart=recipe.cartesian,
            charge=int(self.parameters.charge),
            spin=int(self.parameters.multiplicity) - 1,
            verbose=0,
        )
        if recipe.method == "dft":
            mf = dft.KS(mol, xc=recipe.xc)
            if recipe.grid_level is not None:
                mf.grids.level = recipe.grid_level
        else:
            mf = scf.HF(mol)
        if recipe.conv_tol is not None:
            mf.conv_tol = recipe.conv_tol
        energy = mf.kernel()
        _check(mf.converged, "SCF")
        solver = mf
        frozen = chemcore(mol) if recipe.frozen_core else None
        if recipe.method == "mp2":
            solver = mp.MP2(mf, frozen=frozen)
            solver.kernel()
            energy = solver.e_tot
        elif recipe.method == "ccsd(t)":
            solver = cc.CCSD(mf, frozen=frozen)
            solver.kernel()
            _check(solver.converged, "CCSD")
            energy = solver.e_tot + solver.ccsd_t()
        self.results["energy"] = float(energy) * Hartree
        if "forces" in properties:  # analytic gradient of the converged solver
            gradient = solver.nuc_grad_method().kernel()
            self.results["forces"] = -np.asarray(gradient) * (Hartree / Bohr)


def _check(converged: bool, what: str) -> None:
    if not converged:
        raise CalculationError(f"{what} did not converge")
