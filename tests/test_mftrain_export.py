"""``mftrain export``: each head of a real two-head checkpoint as a nequip package that nequip's
ASE calculator loads, with the checkpoint's own energies and forces for that head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper

from mfdata.loading.samples import frame_transforms
from mfdata.store.store import Store
from tests.conftest import run_mftrain
from tests.test_mftrain_fit import train_two_heads

HEADS = ["wb97x-631gd", "ccsdt-star-cbs"]
TYPES = ["H", "C", "N", "O"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared):
    return train_two_heads(tmp_path_factory.mktemp("mftrain_export"), shared, "mftrain-export-ani")


def molecules(store) -> list[Atoms]:
    s, _ = Store(store).read()
    start = s.atom_start
    return [
        Atoms(
            numbers=s.numbers[start[i] : start[i + 1]],
            positions=s.positions[start[i] : start[i + 1]],
        )
        for i in range(len(start) - 1)
    ]


@pytest.mark.slow
def test_export_each_head_matches_the_checkpoint(trained, tmp_path):
    from nequip.integrations.ase import NequIPCalculator

    from mftrain.evaluate import load_model

    store, ckpt = trained
    model = load_model(ckpt)
    transforms = [ChemicalSpeciesToAtomTypeMapper(model_type_names=TYPES)] + frame_transforms(
        4.0, TYPES
    )
    mols = molecules(store)
    assert len(mols) == 8
    energies = {}
    for h, level in enumerate(HEADS):
        out = tmp_path / f"{level}.nequip.zip"
        proc = run_mftrain("export", ckpt, "--head", level, "--out", out)
        assert out.is_file() and str(out) in proc.stdout
        calc = NequIPCalculator._from_saved_model(str(out), chemical_species_to_atom_type_map=True)
        assert calc.model.model_dtype == torch.float64
        de, df = 0.0, 0.0
        energies[level] = []
        for atoms in mols:
            atoms.calc = calc
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            frame = from_ase(atoms)
            for t in transforms:
                frame = t(frame)
            frame[AtomicDataDict.DATASET_KEY] = torch.tensor([[h]])
            ref = model(frame)
            ref_energy = float(ref[AtomicDataDict.TOTAL_ENERGY_KEY].detach())
            ref_forces = ref[AtomicDataDict.FORCE_KEY].detach().numpy()
            assert ref_forces.dtype == np.float64
            de = max(de, abs(energy - ref_energy) / len(atoms))
            df = max(df, float(np.abs(forces - ref_forces).max()))
            energies[level].append(energy)
        print(f"{level}: max |dE| {de:.3g} eV/atom, max |dF| {df:.3g} eV/Å")
        assert de < 1e-6 and df < 1e-6, (level, de, df)
    # the two heads are different functions: each package kept its own head
    assert not np.allclose(energies[HEADS[0]], energies[HEADS[1]])


def test_export_refuses_unknown_head_and_existing_file(trained, tmp_path):
    _, ckpt = trained
    out = tmp_path / "x.nequip.zip"
    proc = run_mftrain("export", ckpt, "--head", "pbe-d3-def2svp", "--out", out, check=False)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.startswith("mftrain: error:") and "no head 'pbe-d3-def2svp'" in proc.stderr
    assert all(level in proc.stderr for level in HEADS)
    assert len(proc.stderr.strip().splitlines()) == 1

    out.write_bytes(b"")
    proc = run_mftrain("export", ckpt, "--head", HEADS[0], "--out", out, check=False)
    assert proc.returncode == 2 and "exists" in proc.stderr and out.read_bytes() == b""

    proc = run_mftrain("export", ckpt, "--head", HEADS[0], "--out", tmp_path / "m.pt", check=False)
    assert proc.returncode == 2 and ".nequip.zip" in proc.stderr
