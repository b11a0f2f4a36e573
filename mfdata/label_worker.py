"""The worker side of ``mfdata label``: one task computes a batch of structures.

Kept apart from :mod:`mfdata.label` so that a Dask worker imports only what a calculation needs
(not the readers and the store). A task is a function of its arguments alone (the recipe as JSON,
the program version the run was planned with, the structures), so a worker that was restarted,
or joined the cluster late, computes it the same.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache

import numpy as np
from ase import Atoms
from ase.calculators.calculator import all_changes

from mfdata.calculators import CalculationError, calculator, program_version
from mfdata.schema import ComputeRecipe


@lru_cache(maxsize=8)
def _recipe(recipe_json: str, version: str) -> ComputeRecipe:
    """The task's recipe, parsed once per worker; refused where another program version runs."""
    recipe = ComputeRecipe.model_validate_json(recipe_json)
    found = program_version(recipe.program)
    if found != version:
        raise CalculationError(
            f"this worker has {recipe.program} {found}, the run was planned with {version}"
        )
    return recipe


def _compute(
    recipe_json: str,
    version: str,
    labels: list[str],
    index: int,
    numbers: np.ndarray,
    positions: np.ndarray,
    charge: int,
    multiplicity: int,
) -> dict:
    """One structure's labels (eV, eV/Å), the wall time, and where it ran; or the error it
    raised. A function of its arguments alone, so a restarted worker computes it the same."""
    from distributed import get_worker

    atoms = Atoms(numbers=numbers, positions=positions)
    start = time.perf_counter()
    try:
        calc = calculator(_recipe(recipe_json, version), charge, multiplicity)
        calc.calculate(atoms, properties=labels, system_changes=all_changes)
        values = {k: np.asarray(calc.results[k], dtype=np.float64) for k in labels}
    except Exception as exc:  # a program failure, reported with the structure that caused it
        return {"i": index, "error": f"{type(exc).__name__}: {exc}"}
    record: dict = {"i": index, "seconds": round(time.perf_counter() - start, 4)}
    record["pid"] = os.getpid()
    record["worker"] = get_worker().address
    for label, value in values.items():
        if not np.isfinite(value).all():
            return {"i": index, "error": f"{label} is not finite"}
        record[label] = value.reshape(-1).tolist() if label == "forces" else float(value)
    return record


def compute_batch(
    recipe_json: str, version: str, labels: list[str], tasks: list[tuple]
) -> list[dict]:
    """One record per task ``(index, numbers, positions, charge, multiplicity)``."""
    return [_compute(recipe_json, version, labels, *task) for task in tasks]
