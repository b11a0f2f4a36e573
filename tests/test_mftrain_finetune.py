"""Fine-tuning strategies (pretrain_finetune, multihead_finetune) on the real ANI-1x/ANI-1ccx
sample: ωB97X/6-31G(d) energies and forces on 8 conformers, CCSD(T)*/CBS energies on 6 of them
(split 4/2/2 by structure). Both stages run through ``mftrain fit`` and nequip's training stack.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from mftrain.config import ConfigError, load_config, validate_config
from mftrain.finetune_plan import finetuning_plan, read_source
from tests.conftest import run_cli, run_mftrain
from tests.test_mftrain_fit import tiny_config

WB97X, CCSDT = "wb97x-631gd", "ccsdt-star-cbs"
HEADS = ".energy_heads.heads."


@pytest.fixture(scope="module")
def ani(tmp_path_factory, shared) -> Path:
    """The ANI-1x sample, packed, with statistics and a 4/2/2 split by structure."""
    store = tmp_path_factory.mktemp("finetune") / "ani"
    hdf5 = shared / "modelforge_testdata" / "ani1_n5.hdf5"
    run_cli("convert", hdf5, "--out", store, "--name", "mftrain-finetune-ani")
    run_cli("pack", store)
    run_cli("stats", store)
    run_cli("split", store, "--name", "default", "--fractions", "0.5,0.25,0.25", "--seed", "1")
    return store


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, ani) -> Path:
    """A real two-head (ωB97X, CCSD(T)*) mftrain checkpoint, after a few training steps."""
    root = tmp_path_factory.mktemp("pretrained")
    config = tiny_config(
        root / "mh.yaml", [str(ani)], data={"levels": [WB97X, CCSDT]}, trainer={"max_steps": 3}
    )
    run_mftrain("fit", config, "--out", root / "run")
    return root / "run" / "best.ckpt"


def two_stage(path: Path, store: Path, strategy: str, finetune: dict, **sections) -> Path:
    """tiny_config's model and trainer, 8-step epochs of 4 structures, and a finetune section."""
    tiny_config(path, [str(store)], **sections)
    config = yaml.safe_load(path.read_text())
    config["data"].update(batch_size=4, epoch_size=32)
    config.update(strategy=strategy, finetune=finetune)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def fit_in_process(path: Path, out: Path) -> Path:
    from mftrain.fit import fit

    config = load_config(path).model_copy(update={"out": str(out)})
    return fit(config, echo=lambda message: None)


def state(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's model weights by name below the model (``model.func...``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    prefix = "model.sole_model."
    return {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def layer_of(name: str) -> str:
    if HEADS in name:
        return "heads"
    found = re.search(r"layer(\d+)_convnet", name)
    return f"layer{found.group(1)}" if found else "embedding"


def changed(before: dict, after: dict, rename: dict[str, str] | None = None) -> dict[str, bool]:
    """Per layer, whether any trained weight differs (heads renamed by ``rename``: new -> old)."""
    out: dict[str, bool] = {}
    for name, value in after.items():
        if value.numel() == 0 or "per_type_energy_scale_shift" in name:
            continue
        old = name
        for new, start in (rename or {}).items():
            old = old.replace(f"{HEADS}{new}.", f"{HEADS}{start}.")
        layer = layer_of(name)
        out[layer] = out.get(layer, False) or not torch.equal(before[old], value)
    return out


def logged(run: Path, column: str) -> list[float]:
    rows = []
    for path in sorted((run / "logs").glob("version_*/metrics.csv")):
        rows += [float(r[column]) for r in csv.DictReader(path.open()) if r.get(column)]
    return rows


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"strategy": "pretrain_finetune"}, "strategy pretrain_finetune needs a `finetune`"),
        (
            {"strategy": "multihead", "finetune": {"level": CCSDT}},
            "a `finetune` section is for strategies pretrain_finetune, multihead_finetune",
        ),
        (
            {"strategy": "pretrain_finetune", "finetune": {"level": CCSDT, "replay": 0.1}},
            "finetune.replay is for strategy multihead_finetune",
        ),
        (
            {
                "strategy": "pretrain_finetune",
                "data": {"levels": [WB97X]},
                "finetune": {"level": CCSDT},
            },
            "data.levels: strategy pretrain_finetune takes its levels from finetune.pretrain",
        ),
        (
            {
                "strategy": "pretrain_finetune",
                "finetune": {"level": CCSDT, "backbone": "frozen", "layer_lr_decay": 0.5},
            },
            "finetune: layer_lr_decay needs trainable layers",
        ),
        (
            {"strategy": "multihead_finetune", "finetune": {"level": CCSDT, "backbone": "half"}},
            "finetune.backbone.mode: Input should be 'full' or 'frozen'",
        ),
        (
            {
                "strategy": "multihead_finetune",
                "finetune": {"level": CCSDT, "backbone": {"unfreeze_last": 0}},
            },
            "finetune.backbone.partial.unfreeze_last: Input should be greater than or equal to 1",
        ),
        (
            {"strategy": "multihead_finetune", "finetune": {"level": CCSDT, "replay": 1.0}},
            "finetune.replay: Input should be less than 1",
        ),
    ],
)
def test_config_errors_name_the_field(data, message):
    with pytest.raises(ConfigError) as raised:
        validate_config(data)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_finetune_section_reads_back():
    config = validate_config(
        {
            "strategy": "multihead_finetune",
            "finetune": {"level": "ccsd(t)_cbs", "backbone": {"unfreeze_last": 2}, "replay": 0.3},
        }
    )
    assert config.finetune.backbone.unfreeze_last == 2
    assert validate_config(config.model_dump(mode="json")) == config


# -------------------------------------------------------------- bad input, before training


@pytest.mark.parametrize(
    ("strategy", "finetune", "message"),
    [
        (
            "pretrain_finetune",
            {"level": "pbe-d3-def2svp", "pretrain": [WB97X]},
            "finetune.level: pbe-d3-def2svp not in the stores (they have ",
        ),
        (
            "pretrain_finetune",
            {"level": CCSDT, "pretrain": ["pbe-d3-def2svp"]},
            "finetune.pretrain: pbe-d3-def2svp not in the stores",
        ),
        ("pretrain_finetune", {"level": "no-such-level", "pretrain": [WB97X]}, "finetune.level: "),
        (
            "pretrain_finetune",
            {"level": CCSDT},
            "finetune.pretrain: name the pre-training level (the stores have ",
        ),
        (
            "pretrain_finetune",
            {"level": CCSDT, "pretrain": [WB97X, "hf-ccpvdz"]},
            "pretrain_finetune pre-trains one level, not 2",
        ),
        (
            "pretrain_finetune",
            {"level": CCSDT, "pretrain": [WB97X], "backbone": {"unfreeze_last": 3}},
            "finetune.backbone.unfreeze_last: 3 is more than the model's 2 interaction layers",
        ),
        (
            "multihead_finetune",
            {"level": CCSDT, "pretrain": [WB97X, "hf-ccpvdz"], "init_from": CCSDT},
            f"finetune.init_from: {CCSDT} is not a pre-trained head ({WB97X}, hf-ccpvdz)",
        ),
        (
            "pretrain_finetune",
            {"level": CCSDT, "from_checkpoint": "missing.ckpt"},
            "finetune.from_checkpoint: ",
        ),
    ],
)
def test_bad_input_fails_before_training(tmp_path, ani, strategy, finetune, message):
    config = two_stage(tmp_path / "bad.yaml", ani, strategy, finetune)
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as raised:
        fit_in_process(config, out)
    assert message in str(raised.value)
    assert not list(out.rglob("*.ckpt")), "nothing trained"


def test_from_checkpoint_must_be_an_mftrain_checkpoint(tmp_path, ani):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    for name, message in (
        ("other.ckpt", "not a checkpoint of an mftrain model (no head levels)"),
        ("text.ckpt", "not a checkpoint"),
        ("missing.ckpt", "no such checkpoint"),
    ):
        finetune = {"level": CCSDT, "from_checkpoint": str(tmp_path / name)}
        config = two_stage(tmp_path / "bad.yaml", ani, "pretrain_finetune", finetune)
        with pytest.raises(
            ConfigError, match=f"finetune.from_checkpoint: .*{name}: {re.escape(message)}"
        ):
            fit_in_process(config, tmp_path / "run")


def test_from_checkpoint_heads_are_checked(tmp_path, ani, pretrained):
    cases = [
        (
            "pretrain_finetune",
            {"level": CCSDT},
            f"finetune.pretrain: finetune.from_checkpoint {pretrained} has heads {WB97X}, "
            f"{CCSDT}; name the one to start from",
        ),
        (
            "pretrain_finetune",
            {"level": CCSDT, "pretrain": ["hf-ccpvdz"]},
            f"finetune.pretrain: hf-ccpvdz not a head of finetune.from_checkpoint {pretrained}",
        ),
        (
            "multihead_finetune",
            {"level": "hf-ccpvdz", "init_from": "hf-ccpvdz"},
            f"finetune.init_from: hf-ccpvdz is not a pre-trained head ({WB97X}, {CCSDT})",
        ),
        (
            "multihead_finetune",
            {"level": CCSDT, "pretrain": [CCSDT]},
            "finetune.pretrain: multihead_finetune keeps every head of finetune.from_checkpoint",
        ),
    ]
    for strategy, finetune, message in cases:
        finetune = {**finetune, "from_checkpoint": str(pretrained)}
        config = two_stage(tmp_path / "bad.yaml", ani, strategy, finetune)
        with pytest.raises(ConfigError) as raised:
            fit_in_process(config, tmp_path / "run")
        assert message in str(raised.value)
    assert not (tmp_path / "run").exists()


def test_bad_input_on_the_command_line_is_one_line(tmp_path, ani):
    finetune = {"level": CCSDT, "pretrain": [WB97X], "backbone": {"unfreeze_last": 5}}
    config = two_stage(tmp_path / "bad.yaml", ani, "pretrain_finetune", finetune)
    proc = run_mftrain("fit", config, "--out", tmp_path / "run", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "mftrain: error: finetune.backbone.unfreeze_last: 5 is more than the model's 2 "
        "interaction layers"
    ]


# --------------------------------------------------------------------------- the model builder


def builder_args(ckpt: Path, levels: list[str], shifts: dict, scales: dict) -> dict:
    """The source's MultiHeadNequIPModel arguments with other heads."""
    hparams = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
    args = {k: v for k, v in hparams["model"].items() if k != "_target_"}
    args.update(levels=levels, per_level_energy_shifts=shifts, per_level_energy_scales=scales)
    return args


def test_new_head_starts_from_the_head_with_most_forces(tmp_path, ani, pretrained):
    """multihead_finetune onto a level the model has no head for (HF): a new head whose readout
    starts from the ωB97X head (the only level with forces), the others kept and replayed."""
    finetune = {"level": "hf-ccpvdz", "from_checkpoint": str(pretrained), "energy_only": True}
    config = load_config(two_stage(tmp_path / "new.yaml", ani, "multihead_finetune", finetune))
    config.data.stores = [str(ani)]
    config.model = read_source(pretrained).model  # stage 2 keeps the source's architecture
    new = finetuning_plan(config, [WB97X, CCSDT, "hf-ccpvdz"])
    assert new.levels == [WB97X, CCSDT, "hf-ccpvdz"]
    assert new.model_args["init_heads"] == {WB97X: WB97X, CCSDT: CCSDT, "hf-ccpvdz": WB97X}
    assert new.mixing.ratios == pytest.approx({WB97X: 0.1, CCSDT: 0.1, "hf-ccpvdz": 0.8})
    assert new.level_coeffs["hf-ccpvdz"]["forces"] == 0.0
    config.finetune.init_from = "ccsd(t)_cbs"
    chosen = finetuning_plan(config, [WB97X, CCSDT, "hf-ccpvdz"])
    assert chosen.model_args["init_heads"]["hf-ccpvdz"] == CCSDT


def test_builder_copies_freezes_and_groups(pretrained):
    """A frozen-backbone model from head ωB97X onto a CCSD(T)* head: every backbone weight is
    the source's, the readout is the ωB97X head's, the shift and scale are the new level's; only
    the head trains. Layer-wise decay puts each layer in a group at lr x decay^d."""
    from nequip.model.utils import override_model_compile_mode
    from nequip.utils.global_state import set_global_state

    from mfdata.files import file_sha256
    from mftrain.finetune import FineTunedNequIPModel, parameter_groups

    set_global_state()
    source = state(pretrained)
    shifts = {CCSDT: {"H": -0.5, "C": -38.0, "N": -54.6, "O": -75.0}}
    args = builder_args(pretrained, [CCSDT], shifts, {CCSDT: 0.7})
    sha = file_sha256(pretrained)
    model = FineTunedNequIPModel(str(pretrained), sha, {CCSDT: WB97X}, "frozen", **args)
    weights = model.state_dict()
    for name, value in weights.items():
        if HEADS not in name:
            assert torch.equal(value, source[name]), name
    readout = "per_atom_energy_readout.mlp_module.mlp.0.weight"
    ours = weights[f"model.func.energy_heads.heads.{CCSDT}.{readout}"]
    assert torch.equal(ours, source[f"model.func.energy_heads.heads.{WB97X}.{readout}"])
    shift = weights[f"model.func.energy_heads.heads.{CCSDT}.per_type_energy_scale_shift.shifts"]
    assert shift.flatten().tolist() == pytest.approx([-0.5, -38.0, -54.6, -75.0])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"model.func.energy_heads.heads.{CCSDT}.{readout}"}

    # a re-initialised head does not start from the source's readout
    fresh = FineTunedNequIPModel(str(pretrained), sha, {CCSDT: None}, "full", **args)
    assert not torch.equal(
        fresh.state_dict()[f"model.func.energy_heads.heads.{CCSDT}.{readout}"], ours
    )

    # the last interaction layer and the heads, at lr x 0.5^d; full: the embedding too
    args = builder_args(pretrained, [WB97X, CCSDT], {WB97X: shifts[CCSDT], **shifts}, None)
    heads = {WB97X: WB97X, CCSDT: CCSDT}
    partial = FineTunedNequIPModel(str(pretrained), sha, heads, 1, **args)
    groups = {g["name"]: g for g in parameter_groups(partial, 0.01, 2, 0.5)}
    assert {k: g["lr"] for k, g in groups.items()} == {"layer1": 0.005, "heads": 0.01}
    assert sum(len(g["params"]) for g in groups.values()) == len(
        [p for p in partial.parameters() if p.requires_grad]
    )
    full = FineTunedNequIPModel(str(pretrained), sha, heads, "full", **args)
    lrs = {g["name"]: g["lr"] for g in parameter_groups(full, 0.01, 2, 0.5)}
    assert lrs == pytest.approx(
        {"embedding": 0.00125, "layer0": 0.0025, "layer1": 0.005, "heads": 0.01}
    )
    assert [g["name"] for g in parameter_groups(full, 0.01, 2)] == ["trainable"]

    # a changed source is refused; loading a fine-tuned checkpoint does not read the source
    with pytest.raises(ValueError, match="changed since the fine-tuning run started"):
        FineTunedNequIPModel(str(pretrained), "0" * 64, heads, "full", **args)
    with pytest.raises(ValueError, match="unfreezing the last 3 of 2"):
        FineTunedNequIPModel(str(pretrained), sha, heads, 3, **args)
    with override_model_compile_mode("eager"):
        FineTunedNequIPModel("/nonexistent.ckpt", "0" * 64, heads, "full", **args)


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_pretrain_finetune_frozen_backbone(tmp_path, ani):
    """Pre-train on ωB97X (energies and forces), fine-tune a CCSD(T)* head on a frozen backbone:
    both stages' losses fall, every backbone parameter is bit-identical to the stage-1
    checkpoint, the head changes; eval reads the fine-tuned checkpoint; a rerun skips stage 1."""
    finetune = {"level": "ccsd(t)_cbs", "pretrain": ["wb97x_dz"], "backbone": "frozen"}
    config = two_stage(
        tmp_path / "pf.yaml",
        ani,
        "pretrain_finetune",
        finetune,
        trainer={"max_steps": 100, "checkpoint_every_n_steps": 50},
    )
    out = tmp_path / "run"
    proc = run_mftrain("fit", config, "--out", out)
    assert "stage 1 of 2: pre-training wb97x-631gd" in proc.stdout
    assert "heads started from best.ckpt: ccsdt-star-cbs from wb97x-631gd" in proc.stdout
    pre, fine = out / "pretrain", out / "finetune"
    for run in (pre, fine):
        losses = logged(run, "train_loss_epoch/weighted_sum")
        print(f"{run.name}: train loss {losses[0]:.4g} -> {losses[-1]:.4g}")
        assert losses[-1] < 0.5 * losses[0], run.name
        assert (run / "best.ckpt").is_file() and (run / "last.ckpt").is_file()

    source, tuned = state(pre / "best.ckpt"), state(fine / "last.ckpt")
    for name, value in tuned.items():
        if HEADS not in name:
            assert torch.equal(value, source[name]), f"{name} changed under a frozen backbone"
    assert changed(source, tuned, {CCSDT: WB97X}) == {
        "embedding": False,
        "layer0": False,
        "layer1": False,
        "heads": True,
    }

    ckpt = torch.load(fine / "best.ckpt", map_location="cpu", weights_only=False)
    prov = ckpt["mfkit"]
    assert prov["strategy"] == "pretrain_finetune" and prov["levels"] == [CCSDT]
    from mfdata.files import file_sha256

    assert prov["finetune"]["source"] == {
        "path": str(pre / "best.ckpt"),
        "sha256": file_sha256(pre / "best.ckpt"),
        "strategy": "single",
        "levels": [WB97X],
        "global_step": torch.load(pre / "best.ckpt", weights_only=False)["global_step"],
    }
    assert prov["finetune"]["backbone"] == "frozen" and prov["finetune"]["head"] == "keep"
    # the kept head's shift is the new level's reference energies, not ωB97X's
    shifts = tuned[f"model.func.energy_heads.heads.{CCSDT}.per_type_energy_scale_shift.shifts"]
    refs = prov["reference_energies"][CCSDT]
    assert shifts.flatten().tolist() == pytest.approx([refs[t] for t in prov["type_names"]])

    summary = json.loads((out / "stages.json").read_text())
    assert summary["final_checkpoint"] == str(fine / "best.ckpt")
    for stage, level in (("pretrain", WB97X), ("finetune", CCSDT)):
        validation = summary[stage]["validation"]
        assert validation["best"]["loss"] <= validation["final"]["loss"]
        assert "energy_per_atom_rmse" in validation["final"]["levels"][level]
    assert "forces_rmse" in summary["pretrain"]["validation"]["final"]["levels"][WB97X]

    # eval reads the fine-tuned checkpoint alone: the one it started from is not needed
    pre.rename(out / "moved")
    scored = run_mftrain(
        "eval", fine / "best.ckpt", "--data", ani, "--split", "default:test", "--json"
    )
    assert set(json.loads(scored.stdout)) == {CCSDT}
    (out / "moved").rename(pre)

    again = run_mftrain("fit", config, "--out", out)
    assert "stage 1 (pre-training) finished earlier" in again.stdout
    assert "resuming from" in again.stdout and "(step 100 of 100)" in again.stdout
    assert len(list((pre / "logs").glob("version_*"))) == 1


@pytest.mark.slow
def test_multihead_finetune_partial_backbone_with_replay(tmp_path, ani):
    """Two heads pre-trained jointly, then the CCSD(T)* head fine-tuned with 25 % ωB97X replay,
    only the last interaction layer unfrozen, at layer-wise learning rates: the losses fall, the
    last layer and the heads change, the first layer and the embedding do not."""
    finetune = {
        "level": CCSDT,
        "pretrain": [WB97X, CCSDT],
        "backbone": {"unfreeze_last": 1},
        "layer_lr_decay": 0.5,
        "replay": 0.25,
        "lr": 0.005,
        "max_steps": 120,
    }
    config = two_stage(
        tmp_path / "mf.yaml",
        ani,
        "multihead_finetune",
        finetune,
        trainer={"max_steps": 100, "checkpoint_every_n_steps": 50},
    )
    out = tmp_path / "run"
    run_mftrain("fit", config, "--out", out)
    pre, fine = out / "pretrain", out / "finetune"
    first = logged(pre, "train_loss_epoch/weighted_sum")[0]
    last = logged(fine, "train_loss_epoch/weighted_sum")[-1]
    assert last < 0.5 * first, "the loss falls over both stages"
    # stage 2's loss is mostly the replayed ωB97X forces: the fine-tuned head shows its effect
    errors = {}
    for run in (pre, fine):
        scored = run_mftrain(
            "eval", run / "best.ckpt", "--data", ani, "--split", "default:train", "--json"
        )
        errors[run.name] = json.loads(scored.stdout)[CCSDT]["energy_mae_per_atom"]
    print(f"train loss {first:.4g} -> {last:.4g}; CCSD(T)* training MAE {errors} eV/atom")
    assert errors["finetune"] < 0.5 * errors["pretrain"]
    assert changed(state(pre / "best.ckpt"), state(fine / "last.ckpt")) == {
        "embedding": False,
        "layer0": False,
        "layer1": True,
        "heads": True,
    }
    ckpt = torch.load(fine / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 120
    groups = {g["name"]: g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]}
    assert groups == {"layer1": 0.0025, "heads": 0.005}
    prov = ckpt["mfkit"]
    assert prov["strategy"] == "multihead_finetune" and prov["levels"] == [WB97X, CCSDT]
    assert prov["mixing"]["ratios_epoch0"] == {WB97X: 0.25, CCSDT: 0.75}
    assert prov["finetune"]["init_heads"] == {WB97X: WB97X, CCSDT: CCSDT}
    assert logged(fine, "lr-Adam/heads")[-1] == 0.005
    summary = json.loads((out / "stages.json").read_text())
    assert set(summary["finetune"]["validation"]["final"]["levels"]) == {WB97X, CCSDT}


@pytest.mark.slow
def test_energy_only_finetune_from_checkpoint(tmp_path, ani, pretrained):
    """From a given two-head checkpoint (no stage 1), the ωB97X head re-initialised and
    fine-tuned on energies only: no force term in the loss, and the energy loss falls."""
    finetune = {
        "level": WB97X,
        "pretrain": [WB97X],
        "from_checkpoint": str(pretrained),
        "head": "reinit",
        "energy_only": True,
    }
    config = two_stage(
        tmp_path / "eo.yaml", ani, "pretrain_finetune", finetune, trainer={"max_steps": 120}
    )
    out = tmp_path / "run"
    proc = run_mftrain("fit", config, "--out", out)
    assert "stage 1" not in proc.stdout and not (out / "pretrain").exists()
    assert "heads started afresh: wb97x-631gd" in proc.stdout
    fine = out / "finetune"
    energy = logged(fine, "train_loss_epoch/energy")
    print(f"energy loss {energy[0]:.4g} -> {energy[-1]:.4g}")
    assert energy[-1] < 0.5 * energy[0]
    assert not logged(fine, "train_loss_step/forces"), "no force term in the loss"
    assert logged(fine, f"val0_epoch/{WB97X}/forces_mae"), "forces are still scored"
    prov = torch.load(fine / "best.ckpt", weights_only=False)["mfkit"]
    assert prov["loss"]["weights"][WB97X] == {"energy": 1.0, "forces": 0.0, "stress": 0.0}
    assert prov["finetune"]["init_heads"] == {WB97X: None}
    assert prov["finetune"]["source"]["path"] == str(pretrained.resolve())
    summary = json.loads((out / "stages.json").read_text())
    assert summary["pretrain"] == {"from_checkpoint": str(pretrained.resolve())}
    assert summary["final_checkpoint"] == str(fine / "best.ckpt")
