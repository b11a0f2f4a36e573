"""mftrain's multi-head model and masked loss, on batches from real stores (no training run)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nequip.data import AtomicDataDict
from nequip.utils.global_state import set_global_state

from mfdata.loading.lmdb_dataset import FidelityDataset
from mfdata.loading.samples import frame_transforms
from mftrain.loss import MultiFidelityLoss, weight_table
from mftrain.model import MultiHeadNequIPModel
from mftrain.nn import HEAD_KEY
from mftrain.training_module import MultiFidelityLightningModule
from tests.conftest import run_cli

LEVELS = ["wb97x-631gd", "ccsdt-star-cbs", "pbe-d3-def2svp"]
TYPES = ["H", "C", "N", "O"]
R_MAX = 4.0


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shared):
    """ANI-1x sample (DFT energies+forces, CC energies on 6 of 8) and 20 acac frames (PBE+D3)."""
    from ase.io import read, write

    root = tmp_path_factory.mktemp("mftrain_model")
    ani, acac = root / "ani", root / "acac"
    run_cli(
        "convert",
        shared / "modelforge_testdata" / "ani1_n5.hdf5",
        "--out",
        ani,
        "--name",
        "mftrain-model-ani",
    )
    write(root / "acac.xyz", read(shared / "botnet_acac" / "train_300K.xyz", ":20"))
    run_cli(
        "convert",
        root / "acac.xyz",
        "--level",
        "pbe-d3-def2svp",
        "--out",
        acac,
        "--name",
        "mftrain-model-acac",
    )
    for store in (ani, acac):
        run_cli("pack", store)
    return [str(ani), str(acac)]


@pytest.fixture(scope="module")
def dataset(stores):
    return FidelityDataset(
        stores, LEVELS, type_names=TYPES, transforms=frame_transforms(R_MAX, TYPES)
    )


def model_config(levels=LEVELS, **extra) -> dict:
    config = {
        "seed": 0,
        "model_dtype": "float64",
        "type_names": TYPES,
        "r_max": R_MAX,
        "levels": list(levels),
        "num_layers": 1,
        "l_max": 1,
        "num_features": 8,
        "radial_mlp_depth": 1,
        "radial_mlp_width": 8,
        "avg_num_neighbors": 8.0,
        # very different shifts per head, so the head that served a frame is visible
        "per_level_energy_shifts": {
            lvl: dict.fromkeys(TYPES, -100.0 * (i + 1)) for i, lvl in enumerate(levels)
        },
        "per_level_energy_scales": dict.fromkeys(levels, 0.5),
    }
    config.update(extra)
    return config


def build(**extra):
    set_global_state()
    return MultiHeadNequIPModel(**model_config(**extra))


def batch_of(dataset, head: str, count: int = 4) -> dict:
    ids = dataset.pools[head][:count]
    return AtomicDataDict.batched_from_list([dataset[int(i)] for i in ids])


def test_heads_are_keyed_by_level_and_chosen_per_frame(dataset):
    model = build()
    state = model.state_dict()
    for level in LEVELS:
        assert any(f"energy_heads.heads.{level}.per_type_energy_scale_shift" in k for k in state)
    assert AtomicDataDict.DATASET_KEY in model.model_input_fields
    frames = [dataset[int(dataset.pools[level][0])] for level in LEVELS]
    out = model(AtomicDataDict.batched_from_list(frames))
    per_atom = (out[AtomicDataDict.TOTAL_ENERGY_KEY].view(-1) / out["num_atoms"]).detach()
    # each frame's energy per atom sits near its own head's shift (-100, -200, -300 eV)
    assert per_atom.numpy() == pytest.approx([-100.0, -200.0, -300.0], abs=5.0)
    assert torch.isfinite(out[AtomicDataDict.FORCE_KEY]).all()
    heads = out[HEAD_KEY]
    assert heads.tolist() == torch.repeat_interleave(torch.arange(3), out["num_atoms"]).tolist()


def test_one_head_model_without_dataset_field(dataset):
    model = build(levels=["pbe-d3-def2svp"])
    frame = dataset[int(dataset.pools["pbe-d3-def2svp"][0])]
    frame.pop(AtomicDataDict.DATASET_KEY)
    out = model(frame)
    assert out[AtomicDataDict.TOTAL_ENERGY_KEY].shape == (1, 1)
    with pytest.raises(RuntimeError, match="needs the `dataset` field"):
        build()(frame)


def test_head_index_outside_the_heads_is_refused(dataset):
    """A `dataset` index with no head is an error, never silently head 0."""
    model = build()
    frames = [dataset[int(dataset.pools[level][0])] for level in LEVELS]
    for wrong in (len(LEVELS), -1):
        batch = AtomicDataDict.batched_from_list(frames)
        batch[AtomicDataDict.DATASET_KEY][1] = wrong
        with pytest.raises(ValueError, match=f"outside the model's 3 head.*{wrong}"):
            model(batch)


def test_head_index_traces_with_symbolic_shapes():
    """nequip's compile mode traces the model with symbolic shapes (``make_fx``): the head index
    traces (its value check, which cannot be traced, is eager only) and gives eager's heads."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from mftrain.nn import HeadIndex

    index = HeadIndex(num_heads=3)

    def heads(types, batch, dataset):
        data = {
            AtomicDataDict.ATOM_TYPE_KEY: types,
            AtomicDataDict.BATCH_KEY: batch,
            AtomicDataDict.DATASET_KEY: dataset,
        }
        return index(data)[HEAD_KEY]

    types = torch.zeros(7, dtype=torch.long)
    batch = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    dataset = torch.tensor([[2], [0], [1]])
    traced = make_fx(heads, tracing_mode="symbolic")(types, batch, dataset)
    assert traced(types, batch, dataset).tolist() == [2, 2, 0, 0, 0, 1, 1]
    other = torch.tensor([0, 1, 1, 1, 1])
    assert (
        traced(types[:5], other, dataset[:2]).tolist()
        == heads(types[:5], other, dataset[:2]).tolist()
    )


def test_bad_head_config_is_refused():
    with pytest.raises(ValueError, match="keys must be the levels"):
        build(per_level_energy_scales={"wb97x-631gd": 1.0})
    with pytest.raises(ValueError, match="keyed by level id"):
        build(levels=["wB97X/6-31G(d)"], per_level_energy_shifts=None, per_level_energy_scales=None)


def hand_loss(out, batch, table, levels, per_atom=True) -> float:
    """The documented loss, in numpy: per label, the sum over levels of w x the level's MSE over
    its present entries."""
    head = batch["dataset"].view(-1).numpy()
    n = batch["num_atoms"].numpy()
    e_pred = out["total_energy"].detach().view(-1).numpy()
    e_true = batch["total_energy"].view(-1).numpy()
    err = (e_pred - e_true) / (n if per_atom else 1)
    atom_head = np.repeat(head, n)
    f_true = batch["forces"].numpy()
    total = 0.0
    for h, level in enumerate(levels):
        ok = (head == h) & np.isfinite(e_true)
        if ok.any() and table[level]["energy"] > 0:
            total += table[level]["energy"] * float(np.mean(err[ok] ** 2))
        if "forces" not in out:
            continue
        ok = (atom_head == h) & np.isfinite(f_true).all(axis=1)
        if ok.any() and table[level]["forces"] > 0:
            sq = (out["forces"].detach().numpy()[ok] - f_true[ok]) ** 2
            total += table[level]["forces"] * float(np.mean(sq))
    return total


def test_level_weight_does_not_depend_on_its_share_of_the_batch(dataset):
    """Three copies of one level's frame weigh as much as one: each level is averaged before it
    is weighted, so `weight 100` means the same under every level mixing."""
    model = build()
    one = [dataset[int(dataset.pools[level][0])] for level in LEVELS]
    many = one + [one[0], one[0]]
    loss = MultiFidelityLoss(LEVELS, level_coeffs={LEVELS[-1]: {"energy": 100.0}})
    values = []
    for frames in (one, many):
        batch = AtomicDataDict.batched_from_list(frames)
        values.append(float(loss(model(dict(batch)), batch)["weighted_sum"].detach()))
    assert values[0] == pytest.approx(values[1], rel=1e-10)


def test_masked_loss_matches_hand_computation(dataset):
    model = build()
    frames = [dataset[int(i)] for level in LEVELS for i in dataset.pools[level][:3]]
    batch = AtomicDataDict.batched_from_list(frames)
    assert torch.isnan(batch["forces"]).any(), "the CC frames have no forces (NaN)"
    for per_atom in (True, False):
        level_coeffs = {"pbe-d3-def2svp": {"forces": 0.5}, "ccsdt-star-cbs": {"energy": 3.0}}
        loss = MultiFidelityLoss(LEVELS, level_coeffs=level_coeffs, per_atom_energy=per_atom)
        out = model(dict(batch))
        got = loss(out, batch)
        table = weight_table(LEVELS, None, level_coeffs)
        expected = hand_loss(out, batch, table, LEVELS, per_atom)
        assert math.isfinite(float(got["weighted_sum"].detach()))
        assert float(got["weighted_sum"].detach()) == pytest.approx(expected, rel=1e-10)
    epoch = loss.compute()
    head = batch["dataset"].view(-1).numpy()
    err = (out["total_energy"].detach().view(-1) - batch["total_energy"].view(-1)).numpy()
    per_atom = err / batch["num_atoms"].numpy()
    for h, level in enumerate(LEVELS):
        expected = np.abs(per_atom[head == h][np.isfinite(per_atom[head == h])]).mean()
        assert float(epoch[f"{level}/energy_per_atom_mae"]) == pytest.approx(expected, rel=1e-10)
    f_err = (out["forces"].detach() - batch["forces"]).numpy()[
        np.repeat(head, batch["num_atoms"]) == 0
    ]
    assert float(epoch["wb97x-631gd/forces_rmse"]) == pytest.approx(
        np.sqrt(np.mean(f_err**2)), rel=1e-10
    )
    assert set(epoch) >= {"weighted_sum", "energy", "forces", "ccsdt-star-cbs/energy_per_atom_mae"}
    assert "ccsdt-star-cbs/forces_mae" not in epoch, "no forces at CC level: nothing logged"
    assert all(math.isfinite(float(v)) for v in epoch.values())


def test_batch_without_forces_has_finite_loss_and_no_force_gradient(dataset):
    batch = batch_of(dataset, "ccsdt-star-cbs")
    assert not batch["forces_present"].any()
    model = build()
    # forces only: the batch has none, so the loss is 0, finite, and gives zero gradients
    loss = MultiFidelityLoss(LEVELS, coeffs={"energy": 0.0, "forces": 1.0})
    out = loss(model(dict(batch)), batch)
    assert set(out) == {"weighted_sum"}, "no NaN force term is reported"
    assert float(out["weighted_sum"].detach()) == 0.0
    out["weighted_sum"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(float(g.abs().max()) == 0.0 for g in grads)

    # energy and forces: the loss equals the energy loss alone, gradients included
    model.zero_grad()
    both = MultiFidelityLoss(LEVELS)(model(dict(batch)), batch)["weighted_sum"]
    both.backward()
    g_both = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    energy = MultiFidelityLoss(LEVELS, coeffs={"forces": 0.0})(model(dict(batch)), batch)
    energy["weighted_sum"].backward()
    assert float(both) == pytest.approx(float(energy["weighted_sum"]), rel=1e-12)
    for a, p in zip(g_both, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad)


def test_training_step_skips_the_force_pass_without_force_labels(dataset):
    set_global_state()
    loss = {"_target_": "mftrain.loss.MultiFidelityLoss", "levels": LEVELS}
    module = MultiFidelityLightningModule(
        model={"_target_": "mftrain.model.MultiHeadNequIPModel", **model_config()},
        num_datasets={"train": 1, "val": 1, "test": 0, "predict": 0},
        optimizer={"_target_": "torch.optim.Adam", "lr": 0.01},
        loss=loss,
        val_metrics=loss,
        provenance={"levels": LEVELS},
    )
    outputs = []
    fso = module.model["sole_model"].model  # nequip's ForceStressOutput
    fso.register_forward_hook(lambda mod, args, out: outputs.append(set(out)))
    with pytest.warns(UserWarning, match="self.log"):
        energy_only = module.training_step(batch_of(dataset, "ccsdt-star-cbs"), 0)
        with_forces = module.training_step(batch_of(dataset, "wb97x-631gd"), 1)
    assert AtomicDataDict.FORCE_KEY not in outputs[0], "no force pass for a batch without forces"
    assert AtomicDataDict.FORCE_KEY in outputs[1]
    assert fso.do_derivatives, "the force pass is switched back on"
    assert torch.isfinite(energy_only) and torch.isfinite(with_forces)
    energy_only.backward()
    assert module.hparams["provenance"] == {"levels": LEVELS}
