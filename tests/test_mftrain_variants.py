"""Strategies ``delta`` and ``fidelity_embedding`` on the ANI-1x sample (ωB97X/6-31G(d) energies
and forces, CCSD(T)*/CBS energies on 6 of 8 structures): the models' arithmetic, their training
through ``mftrain fit``, ``mftrain eval`` on their checkpoints, and bad configurations refused
before any training step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from nequip.data import AtomicDataDict
from nequip.model.modify_utils import modify
from nequip.utils.global_state import set_global_state

from mfdata.loading.lmdb_dataset import FidelityDataset
from mfdata.loading.samples import frame_transforms
from mfdata.store.store import Store
from mftrain.config import ConfigError, validate_config
from mftrain.model import MultiHeadNequIPModel
from mftrain.strategies import plan
from tests.conftest import run_cli, run_mftrain
from tests.test_mftrain_fit import column, metrics, tiny_config

LEVELS = ["wb97x-631gd", "ccsdt-star-cbs"]
TYPES = ["H", "C", "N", "O"]
R_MAX = 4.0
BASE_HEAD = "model.func.energy_heads.heads.wb97x-631gd."
DELTA_HEAD = "model.func.energy_heads.heads.ccsdt-star-cbs."


def make_store(root: Path, shared: Path, name: str) -> Path:
    """The ANI-1x sample as a packed store with statistics and a 4/2/2 split."""
    store = root / "ani"
    run_cli(
        "convert", shared / "modelforge_testdata" / "ani1_n5.hdf5", "--out", store, "--name", name
    )
    run_cli("pack", store)
    run_cli("stats", store)
    run_cli("split", store, "--name", "default", "--fractions", "0.5,0.25,0.25", "--seed", "1")
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory, shared) -> Path:
    return make_store(tmp_path_factory.mktemp("mftrain_variants"), shared, "mftrain-variants")


@pytest.fixture(scope="module")
def dataset(store):
    return FidelityDataset(
        [str(store)], LEVELS, type_names=TYPES, transforms=frame_transforms(R_MAX, TYPES)
    )


def variant_config(path: Path, store: Path, strategy: str, **sections) -> Path:
    """``tiny_config`` with ``strategy`` and the given sections."""
    tiny_config(path, [str(store)], **sections)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["strategy"] = strategy
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def build(**extra):
    config = {
        "seed": 0,
        "model_dtype": "float64",
        "type_names": TYPES,
        "r_max": R_MAX,
        "levels": LEVELS,
        "num_layers": 1,
        "l_max": 1,
        "num_features": 8,
        "radial_mlp_width": 8,
        "avg_num_neighbors": 8.0,
        "per_level_energy_shifts": {"wb97x-631gd": -100.0, "ccsdt-star-cbs": 0.5},
        "per_level_energy_scales": {"wb97x-631gd": 0.5, "ccsdt-star-cbs": 0.05},
        **extra,
    }
    set_global_state()
    return MultiHeadNequIPModel(**config)


def cc_batch(dataset, head: int | None = None) -> dict:
    """The structures with a CCSD(T)* energy, as CC frames (or as frames of head ``head``)."""
    frames = [dataset[int(i)] for i in dataset.pools["ccsdt-star-cbs"]]
    if head is not None:
        for frame in frames:
            frame[AtomicDataDict.DATASET_KEY] = torch.tensor([[head]])
    return AtomicDataDict.batched_from_list(frames)


def energy_forces(model, batch) -> tuple[np.ndarray, np.ndarray]:
    out = model(dict(batch))
    return (
        out[AtomicDataDict.TOTAL_ENERGY_KEY].detach().view(-1).numpy(),
        out[AtomicDataDict.FORCE_KEY].detach().numpy(),
    )


def test_delta_head_is_base_plus_its_own_output(dataset):
    """A fresh delta model's CC head starts as its base (the Δ readout's output layer is zero);
    with the plain model's weights, its CC energy (and forces) is the plain model's ωB97X head
    plus its CC head (here the Δ), to rounding; the ωB97X head is unchanged."""
    plain = build().eval()
    delta = build(bases={"ccsdt-star-cbs": "wb97x-631gd"}).eval()
    assert plain.state_dict().keys() == delta.state_dict().keys()
    base_e, base_f = energy_forces(plain, cc_batch(dataset, head=0))
    readout = "energy_heads.heads.ccsdt-star-cbs.per_atom_energy_readout.mlp_module.mlp.0.weight"
    (zeroed,) = [v for k, v in delta.state_dict().items() if k.endswith(readout)]
    assert not zeroed.any(), "the Δ readout starts at zero"
    delta.load_state_dict(plain.state_dict())
    own_e, own_f = energy_forces(plain, cc_batch(dataset))
    composed_e, composed_f = energy_forces(delta, cc_batch(dataset))
    assert len(composed_e) == 6
    np.testing.assert_allclose(composed_e, base_e + own_e, rtol=0, atol=1e-9)
    np.testing.assert_allclose(composed_f, base_f + own_f, rtol=0, atol=1e-9)
    assert np.abs(own_e).max() > 1e-3, "the Δ head contributes"
    np.testing.assert_array_equal(energy_forces(delta, cc_batch(dataset, head=0))[0], base_e)

    # select_head (export, calculator): every frame composed, whatever its `dataset` says
    modify(delta, [{"modifier": "select_head", "level": "ccsdt-star-cbs"}])
    np.testing.assert_allclose(
        energy_forces(delta, cc_batch(dataset, head=0))[0], composed_e, rtol=0, atol=1e-9
    )
    assert sum(".heads.wb97x-631gd." in k for k in delta.state_dict()), "the base head is kept"


def head_grads(model, batch) -> dict[str, float]:
    """Largest |gradient| of each parameter for the CC energy loss on ``batch`` (train mode)."""
    model.train()
    model.zero_grad()
    out = model(dict(batch))
    error = out[AtomicDataDict.TOTAL_ENERGY_KEY].view(-1) - batch["total_energy"].view(-1)
    (error**2).mean().backward()
    return {
        name: 0.0 if p.grad is None else float(p.grad.abs().max())
        for name, p in model.named_parameters()
    }


def test_detach_base_cuts_the_base_head_not_the_forces(dataset):
    """Trained on CC frames only: with detach_base (the default) the ωB97X head's own
    parameters get no gradient, the Δ head and the backbone do, and the forces are still those
    of base + Δ; without it the ωB97X head learns from the CC frames too."""
    bases = {"ccsdt-star-cbs": "wb97x-631gd"}
    batch = cc_batch(dataset)
    detached = build(bases=bases, per_type_energy_shifts_trainable=True)
    grads = head_grads(detached, batch)
    base = {k: g for k, g in grads.items() if k.startswith(BASE_HEAD)}
    own = {k: g for k, g in grads.items() if k.startswith(DELTA_HEAD)}
    backbone = {k: g for k, g in grads.items() if "energy_heads" not in k}
    assert len(base) == 2 and len(own) == 2, "readout weight and shifts of each head"
    assert all(g == 0.0 for g in base.values()), base
    assert all(g > 0.0 for g in own.values()), own
    assert max(backbone.values()) > 0.0

    train_forces = detached.train()(dict(batch))[AtomicDataDict.FORCE_KEY].detach()
    eval_forces = detached.eval()(dict(batch))[AtomicDataDict.FORCE_KEY].detach()
    torch.testing.assert_close(train_forces, eval_forces, rtol=0, atol=1e-12)

    joint = build(bases=bases, detach_base=False, per_type_energy_shifts_trainable=True)
    grads = head_grads(joint, batch)
    assert all(grads[k] > 0.0 for k in base), "without detach_base the base head learns"


def test_fidelity_embedding_model(dataset):
    """One readout for both levels, the level embedded from `dataset`, per-level shifts; fixing
    the level (select_head) makes `dataset` irrelevant."""
    model = build(level_embedding_features=4).eval()
    state = model.state_dict()
    embed = state["model.func.type_embed.categorical_graph_field_embed_modules.dataset.weight"]
    assert embed.shape == (2, 4)
    assert sum("per_atom_energy_readout" in k or ".readout." in k for k in state) == 1
    assert {k for k in state if "scale_shift" in k} == {
        f"model.func.energy_heads.heads.{level}.per_type_energy_scale_shift.{kind}"
        for level in LEVELS
        for kind in ("scales", "shifts")
    }
    e0, _ = energy_forces(model, cc_batch(dataset, head=0))
    e1, f1 = energy_forces(model, cc_batch(dataset, head=1))
    n_atoms = cc_batch(dataset)["num_atoms"].numpy()
    # the per-level shifts differ by 100.5 eV per atom; the rest differs by the embedding
    per_atom = (e1 - e0) / n_atoms
    assert per_atom == pytest.approx(100.5, abs=5.0)
    assert np.abs(per_atom - 100.5).max() > 1e-6, "the level embedding changes the readout"

    modify(model, [{"modifier": "select_head", "level": "ccsdt-star-cbs"}])
    for head in (0, 1):
        e, f = energy_forces(model, cc_batch(dataset, head=head))
        np.testing.assert_array_equal(e, e1)
        np.testing.assert_array_equal(f, f1)
    frame = dataset[int(dataset.pools["ccsdt-star-cbs"][0])]
    frame.pop(AtomicDataDict.DATASET_KEY)
    assert float(model(frame)[AtomicDataDict.TOTAL_ENERGY_KEY].detach()) == pytest.approx(e1[0])


AVAILABLE = ["wb97x-631gd", "ccsdt-star-cbs", "wb97x-def2tzvpp"]


def delta_plan(bases: dict, levels: list[str] | None = None, **delta):
    config = {"strategy": "delta", "delta": {"bases": bases, **delta}}
    if levels is not None:
        config["data"] = {"levels": levels}
    return plan(validate_config(config), AVAILABLE)


def test_delta_plan_resolves_aliases_and_bad_bases_are_refused():
    found = delta_plan({"ccsd(t)_cbs": "wb97x_dz"}, levels=LEVELS, detach_base=False)
    assert found.levels == LEVELS and found.bases == {"ccsdt-star-cbs": "wb97x-631gd"}
    assert found.model_args == {"detach_base": False}
    chain = delta_plan({"ccsdt-star-cbs": "wb97x-def2tzvpp", "wb97x-def2tzvpp": "wb97x-631gd"})
    assert chain.bases["wb97x-def2tzvpp"] == "wb97x-631gd"

    cases = [
        ({"ccsdt-star-cbs": "ccsd(t)_cbs"}, None, "ccsdt-star-cbs refers to itself"),
        ({"ccsdt-star-cbs": "no-such-level"}, None, r"delta.bases.ccsdt-star-cbs: .*no-such-level"),
        ({"ccsdt-star-cbs": "pbe-d3-def2svp"}, None, "base level pbe-d3-def2svp: the stores have"),
        ({"pbe-d3-def2svp": "wb97x-631gd"}, None, "delta level pbe-d3-def2svp: the stores have"),
        (
            {"wb97x-def2tzvpp": "wb97x-631gd"},
            LEVELS,
            "delta level wb97x-def2tzvpp: it is not one of the heads",
        ),
        (
            {"ccsdt-star-cbs": "wb97x-631gd", "wb97x-631gd": "ccsdt-star-cbs"},
            None,
            "cycle: wb97x-631gd -> ccsdt-star-cbs -> wb97x-631gd",
        ),
    ]
    for bases, levels, message in cases:
        with pytest.raises(ConfigError, match=message):
            delta_plan(bases, levels)
    with pytest.raises(ConfigError, match="strategy delta needs a `delta` section"):
        validate_config({"strategy": "delta"})
    with pytest.raises(ConfigError, match="`fidelity_embedding` section is for strategy"):
        validate_config({"fidelity_embedding": {"num_features": 4}})


def test_bad_delta_fails_before_any_training_step(tmp_path, store):
    """A cycle in `delta.bases`: exit 2, one line naming the field, no run directory."""
    config = variant_config(
        tmp_path / "bad.yaml",
        store,
        "delta",
        data={"levels": LEVELS},
        delta={"bases": {"ccsdt-star-cbs": "wb97x-631gd", "wb97x-631gd": "ccsdt-star-cbs"}},
    )
    out = tmp_path / "run"
    proc = run_mftrain("fit", config, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("mftrain: error: delta.bases: delta heads form a cycle")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def train(tmp_path: Path, store: Path, strategy: str, **sections) -> Path:
    config = variant_config(
        tmp_path / f"{strategy}.yaml",
        store,
        strategy,
        data={"levels": LEVELS, "batch_size": 4, "epoch_size": 32},
        trainer={"max_steps": 160, "checkpoint_every_n_steps": 80},
        **sections,
    )
    out = tmp_path / "run"
    proc = run_mftrain("fit", config, "--out", out)
    assert f"strategy {strategy}: 2 head(s) in order: {', '.join(LEVELS)}" in proc.stdout
    rows = metrics(out)
    loss = column(rows, "train_loss_epoch/weighted_sum")
    val = column(rows, "val0_epoch/weighted_sum")
    print(f"{strategy}: train loss {loss[0]:.4f} -> {loss[-1]:.4f}; val {val[0]:.4f} -> {min(val)}")
    assert loss[-1] < 0.5 * loss[0]
    assert min(val) < val[0]
    return out


def cc_errors_by_calculator(ckpt: Path, store: Path) -> np.ndarray:
    """The CCSD(T)* energy error per atom of every structure with one, by the ASE calculator."""
    from ase import Atoms

    from mftrain.calculator import MultiFidelityCalculator

    calc = MultiFidelityCalculator.from_checkpoint(ckpt, head="ccsdt-star-cbs")
    s, _ = Store(store).read()
    label = s.labels[("ccsdt-star-cbs", "energy")]
    errors = []
    for i in np.flatnonzero(label.present):
        atoms = Atoms(
            numbers=s.numbers[s.atom_start[i] : s.atom_start[i + 1]],
            positions=s.positions[s.atom_start[i] : s.atom_start[i + 1]],
        )
        atoms.calc = calc
        errors.append((atoms.get_potential_energy() - label.values[i]) / len(atoms))
    return np.array(errors)


def check_eval(out: Path, store: Path, tmp_path: Path, atol: float = 1e-9) -> dict:
    """`mftrain eval` (CLI) scores both levels; its CC numbers are the composed/embedded ones
    that the ASE calculator gives for that head (to ``atol`` eV/atom: eval reads the reference
    energies in the model's dtype)."""
    proc = run_mftrain(
        "eval", out / "last.ckpt", "--data", store, "--json", "--plots", tmp_path / "plots"
    )
    result = json.loads(proc.stdout)
    assert list(result) == LEVELS
    assert result["wb97x-631gd"]["n_forces"] == 8 and "forces_mae" not in result["ccsdt-star-cbs"]
    errors = cc_errors_by_calculator(out / "last.ckpt", store)
    cc = result["ccsdt-star-cbs"]
    assert cc["n_energy"] == len(errors) == 6
    assert cc["energy_mae_per_atom"] == pytest.approx(np.abs(errors).mean(), rel=0, abs=atol)
    assert (tmp_path / "plots" / "parity_ccsdt-star-cbs.png").stat().st_size > 1000
    return result


@pytest.mark.slow
def test_delta_training_lowers_the_loss_and_evaluates(tmp_path, store):
    out = train(tmp_path, store, "delta", delta={"bases": {"ccsd(t)_cbs": "wb97x_dz"}})
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["model"]["bases"] == {"ccsdt-star-cbs": "wb97x-631gd"}
    prov = ckpt["mfkit"]
    assert prov["strategy"] == "delta" and prov["delta"]["detach_base"] is True
    # the Δ head starts from the ωB97X -> CCSD(T)* alignment of the store's statistics
    stats = Store(store).manifest.statistics
    (alignment,) = [
        a
        for a in stats.alignments
        if {a.from_level, a.to_level} == {"ccsdt-star-cbs", "wb97x-631gd"}
    ]
    sign = 1.0 if alignment.to_level == "ccsdt-star-cbs" else -1.0
    shifts = prov["delta"]["shifts"]["ccsdt-star-cbs"]
    for symbol, offset in alignment.offsets.items():
        assert shifts[symbol] == pytest.approx(sign * offset)
    # its scale is a force scale from energies only: the base's force RMS x the spread of the
    # difference / the spread of the base's energies (no CCSD(T) forces exist to leak)
    base = stats.levels["wb97x-631gd"]
    expected = base.force_rms * alignment.residual_rms_per_atom / base.energy_per_atom_std
    assert prov["delta"]["scales"]["ccsdt-star-cbs"] == pytest.approx(expected)
    # the Δ head learned: its readout moved from the initial weights (same builder, same seed)
    config = dict(ckpt["hyper_parameters"]["model"])
    config.pop("_target_")
    set_global_state()
    initial = MultiHeadNequIPModel(**config).state_dict()
    key = "readout.mlp_module.mlp.0.weight"
    trained = ckpt["state_dict"][f"model.sole_model.{DELTA_HEAD}per_atom_energy_{key}"]
    assert not torch.equal(trained, initial[f"{DELTA_HEAD}per_atom_energy_{key}"])
    check_eval(out, store, tmp_path)


@pytest.mark.slow
def test_fidelity_embedding_training_lowers_the_loss_and_evaluates(tmp_path, store):
    out = train(tmp_path, store, "fidelity_embedding", fidelity_embedding={"num_features": 4})
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["model"]["level_embedding_features"] == 4
    assert ckpt["mfkit"]["strategy"] == "fidelity_embedding"
    check_eval(out, store, tmp_path)
