"""``mftrain.calculator.MultiFidelityCalculator``: one head of a real checkpoint of every strategy
as an ASE calculator, with the energies and forces of the exported package in nequip's own ASE
calculator and of the checkpoint's model evaluated directly (1e-6 eV/atom in float64, 1e-4 in
float32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper

from mfdata.loading.samples import frame_transforms
from mftrain.calculator import MultiFidelityCalculator
from mftrain.evaluate import load_model
from mftrain.export import export_head
from tests.conftest import run_mftrain
from tests.test_mftrain_export import molecules
from tests.test_mftrain_variants import (
    LEVELS,
    R_MAX,
    TYPES,
    check_eval,
    make_store,
    variant_config,
)

SECTIONS = {
    "single": {"data": {"levels": LEVELS[:1]}},
    "multihead": {},
    "delta": {"delta": {"bases": {"ccsdt-star-cbs": "wb97x-631gd"}}},
    "fidelity_embedding": {"fidelity_embedding": {"num_features": 4}},
}
TOLERANCE = {"float64": 1e-6, "float32": 1e-4}  # eV/atom and eV/Å


@pytest.fixture(scope="module")
def store(tmp_path_factory, shared) -> Path:
    return make_store(tmp_path_factory.mktemp("mftrain_calc"), shared, "mftrain-calculator")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, store):
    """A few training steps of a strategy at a precision, through ``mftrain fit``; cached."""
    made: dict[tuple[str, str], Path] = {}

    def make(strategy: str, precision: str) -> Path:
        if (strategy, precision) not in made:
            root = tmp_path_factory.mktemp(f"{strategy}_{precision}")
            sections = {"data": {"levels": LEVELS}, **SECTIONS[strategy]}
            config = variant_config(
                root / "config.yaml",
                store,
                strategy,
                trainer={"max_steps": 4, "precision": precision},
                **sections,
            )
            run_mftrain("fit", config, "--out", root / "run")
            made[strategy, precision] = root / "run" / "last.ckpt"
        return made[strategy, precision]

    return make


def direct(model, atoms: Atoms, head: int) -> tuple[float, np.ndarray]:
    """The checkpoint's model on one frame of head ``head``, with mfkit's own transforms."""
    frame = from_ase(atoms)
    transforms = [ChemicalSpeciesToAtomTypeMapper(model_type_names=TYPES)]
    for t in transforms + frame_transforms(R_MAX, TYPES):
        frame = t(frame)
    frame[AtomicDataDict.DATASET_KEY] = torch.tensor([[head]])
    out = model(frame)
    return (
        float(out[AtomicDataDict.TOTAL_ENERGY_KEY].detach()),
        out[AtomicDataDict.FORCE_KEY].detach().double().numpy(),
    )


def worst(calc, reference, mols: list[Atoms]) -> tuple[float, float, list[float]]:
    """Largest |ΔE| per atom and |ΔF| of ``calc`` against ``reference(atoms)``, and the energies."""
    de = df = 0.0
    energies = []
    for atoms in mols:
        atoms = atoms.copy()
        atoms.calc = calc
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        ref_energy, ref_forces = reference(atoms)
        de = max(de, abs(energy - ref_energy) / len(atoms))
        df = max(df, float(np.abs(forces - ref_forces).max()))
        energies.append(energy)
    return de, df, energies


def cases():
    fast = {("delta", "float32")}
    for strategy in SECTIONS:
        for precision in ("float64", "float32"):
            if strategy == "single" and precision == "float32":
                continue
            marks = () if (strategy, precision) in fast else (pytest.mark.slow,)
            yield pytest.param(strategy, precision, marks=marks, id=f"{strategy}-{precision}")


@pytest.mark.parametrize("strategy,precision", list(cases()))
def test_calculator_matches_package_and_checkpoint(
    strategy, precision, checkpoint, store, tmp_path
):
    from nequip.integrations.ase import NequIPCalculator

    ckpt = checkpoint(strategy, precision)
    mols = molecules(store)
    model = load_model(ckpt)
    dtype = getattr(torch, precision)
    tol = TOLERANCE[precision]
    levels = SECTIONS[strategy].get("data", {}).get("levels", LEVELS)
    energies = {}
    for h, level in enumerate(levels):
        calc = MultiFidelityCalculator.from_checkpoint(ckpt, head=level, device="cpu")
        assert calc.level == level and calc.model.model_dtype == dtype
        package = export_head(ckpt, level, tmp_path / f"{level}.nequip.zip")
        packaged = NequIPCalculator._from_saved_model(
            str(package), chemical_species_to_atom_type_map=True
        )
        assert packaged.model.model_dtype == dtype

        def by_package(atoms, packaged=packaged):
            twin = atoms.copy()
            twin.calc = packaged
            return twin.get_potential_energy(), twin.get_forces()

        de, df, energies[level] = worst(calc, by_package, mols)
        print(f"{strategy} {precision} {level}: vs package |dE| {de:.2g} eV/atom, |dF| {df:.2g}")
        assert de < tol and df < tol
        de, df, _ = worst(calc, lambda atoms, h=h: direct(model, atoms, h), mols)
        print(f"{strategy} {precision} {level}: vs checkpoint |dE| {de:.2g} eV/atom, |dF| {df:.2g}")
        assert de < tol and df < tol

        # the package serves its level whatever `dataset` a frame carries
        data = packaged.atoms_to_data(mols[0])
        alone = float(packaged.model(dict(data))[AtomicDataDict.TOTAL_ENERGY_KEY].detach())
        for other in range(len(levels)):
            data[AtomicDataDict.DATASET_KEY] = torch.tensor([[other]])
            found = float(packaged.model(dict(data))[AtomicDataDict.TOTAL_ENERGY_KEY].detach())
            assert found == alone
    if len(levels) == 2:
        assert not np.allclose(energies[LEVELS[0]], energies[LEVELS[1]]), "two different heads"


def test_unknown_head_is_refused_naming_the_heads(checkpoint):
    ckpt = checkpoint("delta", "float32")
    with pytest.raises(ValueError) as caught:
        MultiFidelityCalculator.from_checkpoint(ckpt, head="pbe-d3-def2svp")
    message = str(caught.value)
    assert str(ckpt) in message and "no head 'pbe-d3-def2svp'" in message
    assert "wb97x-631gd, ccsdt-star-cbs (wb97x-631gd + Δ)" in message
    with pytest.raises(ValueError, match="no head 'not-a-level'"):
        MultiFidelityCalculator.from_checkpoint(ckpt, head="not-a-level")
    with pytest.raises(FileNotFoundError):
        MultiFidelityCalculator.from_checkpoint(ckpt.with_name("missing.ckpt"), head=LEVELS[0])
    assert MultiFidelityCalculator.from_checkpoint(ckpt, head="ccsd(t)_cbs").level == LEVELS[1]


def test_eval_scores_a_delta_checkpoint(checkpoint, store, tmp_path):
    """`mftrain eval` (CLI) on a float32 delta checkpoint: the CC numbers are base + Δ's."""
    check_eval(checkpoint("delta", "float32").parent, store, tmp_path, atol=TOLERANCE["float32"])
