"""``mftrain eval``: the JSON metrics match a hand computation on a small real store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import (
    ChemicalSpeciesToAtomTypeMapper,
    NeighborListTransform,
    NonPeriodicCellTransform,
)

from mfdata.store.store import Store
from tests.conftest import run_cli, run_mftrain
from tests.test_mftrain_fit import train_two_heads

HEADS = ["wb97x-631gd", "ccsdt-star-cbs"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared):
    return train_two_heads(tmp_path_factory.mktemp("mftrain_eval"), shared, "mftrain-eval-ani")


def hand_metrics(ckpt, store, structures: np.ndarray) -> dict:
    """Each structure alone through nequip's own checkpoint loader and transforms, then numpy."""
    from nequip.model import ModelFromCheckpoint
    from nequip.utils.global_state import set_global_state

    set_global_state()
    model = ModelFromCheckpoint(str(ckpt))["sole_model"].eval()
    types = ["H", "C", "N", "O"]
    transforms = [
        ChemicalSpeciesToAtomTypeMapper(model_type_names=types),
        NonPeriodicCellTransform(override_cell=True),
        NeighborListTransform(r_max=4.0),
    ]
    s, _ = Store(store).read()
    start = s.atom_start
    out = {}
    for h, level in enumerate(HEADS):
        energy = s.labels[(level, "energy")]
        forces = s.labels.get((level, "forces"))
        e_err, n_atoms, f_err = [], [], []
        for i in structures:
            has_e = bool(energy.present[i])
            has_f = forces is not None and bool(forces.present[i])
            if not (has_e or has_f):
                continue
            atoms = Atoms(
                numbers=s.numbers[start[i] : start[i + 1]],
                positions=s.positions[start[i] : start[i + 1]],
            )
            frame = from_ase(atoms)
            for t in transforms:
                frame = t(frame)
            frame[AtomicDataDict.DATASET_KEY] = torch.tensor([[h]])
            pred = model(frame)
            if has_e:
                e_err.append(float(pred["total_energy"].detach()) - float(energy.values[i]))
                n_atoms.append(len(atoms))
            if has_f:
                ref = forces.values[start[i] : start[i + 1]]
                f_err.append((pred["forces"].detach().numpy() - ref).reshape(-1))
        e = np.array(e_err)
        per_atom = e / np.array(n_atoms)
        result = {
            "n_energy": len(e),
            "energy_mae_per_atom": np.mean(np.abs(per_atom)),
            "energy_rmse_per_atom": np.sqrt(np.mean(per_atom**2)),
            "energy_mae_per_structure": np.mean(np.abs(e)),
            "energy_rmse_per_structure": np.sqrt(np.mean(e**2)),
        }
        if f_err:
            f = np.concatenate(f_err)
            result.update(
                n_forces=len(f_err),
                n_force_components=len(f),
                forces_mae=np.mean(np.abs(f)),
                forces_rmse=np.sqrt(np.mean(f**2)),
            )
        out[level] = result
    return out


def test_eval_json_matches_hand_computation(trained, tmp_path):
    store, ckpt = trained
    proc = run_mftrain("eval", ckpt, "--data", store, "--json", "--plots", tmp_path)
    result = json.loads(proc.stdout)
    assert list(result) == HEADS
    expected = hand_metrics(ckpt, store, np.arange(8))
    assert result["wb97x-631gd"]["n"] == 8 and result["ccsdt-star-cbs"]["n"] == 6
    assert "forces_mae" not in result["ccsdt-star-cbs"], "no CC forces: none reported"
    for level in HEADS:
        for key, value in expected[level].items():
            assert result[level][key] == pytest.approx(float(value), rel=1e-6), (level, key)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "parity_ccsdt-star-cbs.png",
        "parity_wb97x-631gd.png",
    ]

    # a split part: the structures of that part only (in process: the code the CLI runs)
    from mfdata.split import read_split
    from mftrain.evaluate import evaluate, format_table

    on_test = evaluate(ckpt, str(store), split="default:test", echo=print)
    test_ids = np.flatnonzero(read_split(Store(store), "default")[1] == 2)
    expected = hand_metrics(ckpt, store, test_ids)
    assert set(on_test.metrics) == set(expected)
    for level, metrics in on_test.metrics.items():
        assert metrics["n"] == len(test_ids) or level == "ccsdt-star-cbs"
        assert metrics["energy_mae_per_atom"] == pytest.approx(
            float(expected[level]["energy_mae_per_atom"]), rel=1e-6
        )
    table = format_table(on_test.metrics)
    assert "wb97x-631gd" in table and "meV/atom" in table


def test_eval_refuses_a_store_without_the_models_levels(trained, tmp_path, shared):
    _, ckpt = trained
    from ase.io import read, write

    write(tmp_path / "acac.xyz", read(shared / "botnet_acac" / "train_300K.xyz", ":5"))
    run_cli(
        "convert", tmp_path / "acac.xyz", "--level", "pbe-d3-def2svp", "--out", tmp_path / "acac"
    )
    proc = run_mftrain("eval", ckpt, "--data", tmp_path / "acac", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mftrain: error:") and "none of the model's levels" in proc.stderr
