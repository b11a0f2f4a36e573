"""``mftrain study``: the low-forces-high-energies recipe end to end through the CLI on a tiny real
store (GFN1-xTB low, GFN2-xTB high, both computed here with tblite), the other recipes on the same
store, linear CKA's properties, the MD check on an exported head; and, without training, the
checks every recipe shares (arguments, plan on rerun, finished runs) and the command line's
options."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from mfdata.errors import MfkitError, UsageError
from mfdata.split import split_indices
from mfdata.store.store import Store
from tests.conftest import run_cli, run_mftrain

LOW, HIGH = "gfn1-xtb", "gfn2-xtb"
MODELS = [
    "energy_only",
    "multi_fidelity",
    "multi_fidelity_delta",
    "multi_fidelity_finetune",
    "energy_forces",
]
KEYS = [*MODELS, "low_level_as_prediction"]


def methanol_store(root: Path, n: int = 40, n_high: int = 26, name: str = "methanol") -> Path:
    """``n`` rattled methanol geometries with GFN1-xTB energies and forces, the first ``n_high``
    also with GFN2-xTB energies and forces (tblite), converted by ``mfdata convert`` and
    registered as ``name`` (unique per test module: the registry outlives a module)."""
    from ase.build import molecule
    from ase.io import write
    from tblite.ase import TBLite

    rng = np.random.default_rng(0)
    gfn1 = TBLite(method="GFN1-xTB", verbosity=0)
    gfn2 = TBLite(method="GFN2-xTB", verbosity=0)
    frames = []
    for i in range(n):
        atoms = molecule("CH3OH")
        atoms.positions += rng.normal(0.0, 0.06, atoms.positions.shape)
        for key, calc in (("1", gfn1), ("2", gfn2)):
            if key == "2" and i >= n_high:
                continue
            atoms.calc = calc
            atoms.info[f"E{key}"] = atoms.get_potential_energy()
            atoms.arrays[f"F{key}"] = atoms.get_forces()
        atoms.calc = None
        frames.append(atoms)
    write(root / "methanol.xyz", frames, format="extxyz")
    store = root / "methanol"
    maps = []
    for key, level in (("1", LOW), ("2", HIGH)):
        maps += ["--map", f"E{key}={level}:energy", "--units", f"E{key}=eV"]
        maps += ["--map", f"F{key}={level}:forces", "--units", f"F{key}=eV/Å"]
    run_cli("convert", root / "methanol.xyz", *maps, "--out", store, "--name", name)
    return store


def tiny_base_config(path: Path) -> Path:
    config = {
        "data": {"batch_size": 4, "epoch_size": 32},
        "model": {"r_max": 4.0, "num_layers": 1, "l_max": 1, "num_features": 8},
        "optimizer": {"lr": 0.01},
        "lr_scheduler": {"kind": "plateau", "patience": 2},
        "trainer": {"progress_bar": False, "log_every_n_steps": 5},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def study_args(store: Path, config: Path, out: Path) -> list:
    return [
        "study",
        "low-forces-high-energies",
        "--data",
        store,
        "--low",
        LOW,
        "--high",
        HIGH,
        "--n-high",
        "4,8",
        "--n-test",
        6,
        "--seeds",
        1,
        "--steps",
        16,
        "--md-steps",
        60,
        "--config",
        config,
        "--out",
        out,
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """The tiny two-level store and base config every recipe test uses."""
    root = tmp_path_factory.mktemp("tiny")
    return {"store": methanol_store(root), "config": tiny_base_config(root / "base.yaml")}


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny):
    """The recipe run once through the CLI: 5 models at N = 4 and 8, 1 seed, 16 steps each."""
    root = tmp_path_factory.mktemp("study")
    store, config = tiny["store"], tiny["config"]
    out = root / "out"
    proc = run_mftrain(*study_args(store, config, out), "--json-out", root / "numbers.json")
    return {"root": root, "store": store, "config": config, "out": out, "proc": proc}


@pytest.mark.slow
def test_study_writes_json_report_and_table(study):
    out = study["out"]
    numbers = json.loads((study["root"] / "numbers.json").read_text())
    assert numbers == json.loads((out / "results.json").read_text())
    for key in KEYS:
        entry = numbers[key]
        for field in ("forces_mae", "energy_mae_per_atom"):
            assert math.isfinite(entry[field]) and entry[field] > 0, (key, field)
        assert len(entry["per_seed"]) == 1 and entry["forces_mae_std"] is None
    for key in MODELS:
        assert numbers[key]["per_seed"][0]["steps"] > 0
        assert (out / numbers[key]["per_seed"][0]["run"] / "study-config.yaml").is_file()
        for n in ("4", "8"):
            assert math.isfinite(numbers["by_n_high"][n][key]["forces_mae"]), (key, n)
    assert numbers["by_n_high"]["8"]["energy_only"] == {
        k: v for k, v in numbers["energy_only"].items() if k != "md_check"
    }, "the top level holds the largest N"
    for key in ("multi_fidelity", "multi_fidelity_delta", "multi_fidelity_finetune"):
        assert math.isfinite(numbers[key]["low_head"]["forces_mae"]), key
    steps = {numbers[key]["per_seed"][0]["steps"] for key in MODELS}
    assert steps == {16}, "equal optimiser steps; a two-stage model's stages share them"
    for key in ("multi_fidelity", "energy_only"):
        check = numbers[key]["md_check"]
        assert check["fragments_start"] == 1
        assert (check["langevin_steps"], check["nve_steps"]) == (30, 60), "--md-steps 60"
    report = (out / "report.md").read_text()
    for figure in ("force_mae", "parity", "learning_curves", "md", "by_n_high"):
        assert f"figures/{figure}.png" in report
        assert (out / "figures" / f"{figure}.png").stat().st_size > 5000, figure
    assert "`multi_fidelity` reaches a held-out gfn2-xtb force MAE of" in report
    table = study["proc"].stdout.splitlines()[-7:]
    assert table[0].split()[:3] == ["model", "force", "MAE"]
    assert [line.split()[0] for line in table[1:]] == KEYS
    seeds = numbers["study"]["arguments"]["seeds"]
    assert seeds == 1 and numbers["study"]["arguments"]["n_high"] == [4, 8]
    assert "## Learning curve" in report and "| model | N = 4 | N = 8 |" in report


@pytest.mark.slow
def test_no_run_trained_on_a_test_structure(study):
    """From every run's recorded stores and split: no training or validation structure has the
    geometry of a test structure, the run saw 8 high-level energies, and only energy_forces
    weighs high-level forces, or has them in its stores at all (no statistic of them reaches
    another model)."""
    numbers = json.loads((study["out"] / "results.json").read_text())
    test = np.asarray(numbers["study"]["test_indices"])
    assert len(test) == 6
    _, hashes = Store(study["store"]).read()
    test_hashes = set(hashes[test].tolist())
    for key in MODELS:
        run = study["out"] / numbers[key]["per_seed"][0]["run"]
        stages = (
            [run] if (run / "provenance.json").is_file() else [run / "pretrain", run / "finetune"]
        )
        for stage in stages:
            prov = json.loads((stage / "provenance.json").read_text())
            split = prov["split"]["name"]
            high_train = 0
            for entry in prov["stores"]:
                store = Store(entry["path"])
                assert store.manifest.checksum == entry["checksum"]
                structures, store_hashes = store.read()
                for part in ("train", "val"):
                    seen = split_indices(store, split, part)
                    assert not test_hashes & set(store_hashes[seen].tolist()), (key, part)
                if (HIGH, "energy") in structures.labels:
                    train = split_indices(store, split, "train")
                    high_train += int(structures.labels[(HIGH, "energy")].present[train].sum())
                has_forces = (HIGH, "forces") in structures.labels
                assert has_forces == (key == "energy_forces"), key
                stats = store.manifest.statistics.levels[HIGH]
                assert (stats.force_rms is not None) == (key == "energy_forces"), key
            assert high_train == 8, key
        # the final stage's (a two-stage model: fine-tuning's) levels and weights
        if key == "multi_fidelity_finetune":
            assert prov["finetune"]["init_heads"][HIGH] == LOW, "the new head starts from LOW's"
        assert prov["mixing"]["train_samples"][HIGH] == 8
        forces = prov["loss"]["weights"][HIGH]["forces"]
        assert (forces > 0) == (key == "energy_forces"), key


@pytest.mark.slow
def test_low_level_as_prediction_is_the_stores_low_forces(study):
    numbers = json.loads((study["out"] / "results.json").read_text())
    test = numbers["study"]["test_indices"]
    s, _ = Store(study["store"]).read()
    start = s.atom_start
    atoms = np.concatenate([np.arange(start[i], start[i + 1]) for i in test])
    low = s.labels[(LOW, "forces")].values[atoms]
    high = s.labels[(HIGH, "forces")].values[atoms]
    expected = float(np.mean(np.abs(low - high)))
    assert numbers["low_level_as_prediction"]["forces_mae"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_rerun_reuses_runs_and_refuses_other_arguments(study):
    first = json.loads((study["out"] / "results.json").read_text())
    md = study["out"] / first["energy_forces"]["per_seed"][0]["run"] / "md-check.json"
    written = md.stat().st_mtime_ns
    again = run_mftrain(*study_args(study["store"], study["config"], study["out"]))
    assert "writing study store" not in again.stdout and "runs of" in again.stdout
    assert md.stat().st_mtime_ns == written, "the MD check is reused"
    assert (
        json.loads((study["out"] / "results.json").read_text())["energy_forces"]
        == (first["energy_forces"])
    )
    assert first["multi_fidelity"]["per_seed"][0]["steps"] > 0
    args = study_args(study["store"], study["config"], study["out"])
    args[args.index("--n-high") + 1] = "4,9"
    refused = run_mftrain(*args, check=False)
    assert refused.returncode == 2
    assert "holds a study with other arguments (n_high differ)" in refused.stderr


@pytest.mark.slow
def test_md_check_on_an_exported_head(study):
    """The MD check on the energy_forces model's exported high-level head: finite drift."""
    from ase.build import molecule

    from mftrain.studies.md import md_check

    numbers = json.loads((study["out"] / "results.json").read_text())
    run = study["out"] / numbers["energy_forces"]["per_seed"][0]["run"]
    package = run / f"{HIGH}.nequip.zip"
    check = md_check(package, molecule("CH3OH"), langevin_steps=20, nve_steps=40)
    assert check.nve_steps == 40 and len(check.nve_energy_ev_per_atom) == 41, "start and steps"
    assert check.nve_time_ps[-1] == pytest.approx(40 * 0.5e-3)
    assert check.drift_ev_per_atom_per_ps is not None
    assert math.isfinite(check.drift_ev_per_atom_per_ps)
    assert check.fragments_start == 1


@pytest.mark.slow
def test_bad_study_input_fails_before_work(tmp_path, tiny):
    args = study_args(tiny["store"], tiny["config"], tmp_path / "out")
    cases = {
        ("--high", "wb97x-631gd"): "--high wb97x-631gd is not in the store",
        ("--n-test", "0"): "--n-test 0: must be at least 1",
        ("--n-test", "27"): "too few for a test part of 27",
        ("--steps", "0"): "--steps 0: must be at least 1",
        ("--n-high", "4,x"): "--n-high '4,x': expected comma-separated integers",
    }
    for (flag, value), message in cases.items():
        bad = list(args)
        bad[bad.index(flag) + 1] = value
        proc = run_mftrain(*bad, check=False)
        assert proc.returncode == 2, (flag, proc.stderr[-500:])
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, flag
    assert not (tmp_path / "out" / "runs").exists()


def test_fragments_find_a_detached_atom():
    from ase.build import molecule

    from mftrain.studies.md import fragments

    atoms = molecule("CH3OH")
    assert len(set(fragments(atoms, 1.5))) == 1
    atoms.positions[5] += [4.0, 0.0, 0.0]
    labels = fragments(atoms, 1.5)
    assert len(set(labels)) == 2 and (labels == labels[5]).sum() == 1


def test_linear_cka_properties():
    from mftrain.studies.cka import linear_cka

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.7 * x @ rotation) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0, abs=1e-12), "centred"
    y = rng.normal(size=(200, 8))
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    assert linear_cka(x, y) < 0.2, "independent representations"
    partial = np.hstack([x[:, :8], rng.normal(size=(200, 8))])
    assert linear_cka(x, y) < linear_cka(x, partial) < 1.0
    with pytest.raises(MfkitError, match="same n|one n"):
        linear_cka(x, y[:100])


# --------------------------------------------------------------------------- without training


def low_forces_args(**changes):
    from mftrain.studies.low_forces import LowForcesArgs

    given = {"out": "o", "n_test": 50, "seeds": 1, "steps": 100, "n_high": [100]}
    return LowForcesArgs(**(given | {"low": LOW, "high": HIGH, "md": True} | changes))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_test": 0}, "--n-test 0: must be at least 1"),
        ({"seeds": 0}, "--seeds 0: must be at least 1"),
        ({"steps": 0}, "--steps 0: must be at least 1"),
        ({"steps": None}, "give --steps (the same for every model) or --budget-minutes"),
        ({"budget_minutes": 0.0}, "--budget-minutes 0.0: must be positive"),
        ({"budget_minutes": float("nan")}, "--budget-minutes nan: must be positive"),
        ({"val_fraction": 0.5}, "--val-fraction 0.5: must be in (0, 0.5)"),
        ({"jobs": 0}, "--jobs 0: must be at least 1"),
        ({"n_high": [0, 4]}, "--n-high [0, 4]: give values of at least 1"),
        ({"n_high": []}, "--n-high []: give values of at least 1"),
    ],
)
def test_study_arguments_are_checked_when_built(change, message):
    with pytest.raises(UsageError) as raised:
        low_forces_args(**change)
    assert str(raised.value) == message


def test_a_two_stage_model_splits_the_budget_of_one_run():
    from mftrain.studies.args import Budget
    from mftrain.studies.low_forces import MODELS, model_settings

    assert Budget(3000, None).split(1 / 3) == (Budget(2000, None), Budget(1000, None))
    assert Budget(None, 6.0).split(0.5) == (Budget(None, 3.0), Budget(None, 3.0))
    assert Budget(2, None).split(0.9) == (Budget(1, None), Budget(2, None)), "a step each at least"
    assert Budget(3000, 6.0).describe() == "3000 steps or 6 min"
    finetune = next(m for m in MODELS if m.strategy == "multihead_finetune")
    settings = model_settings(finetune, LOW, HIGH, Budget(3000, None))
    assert settings["trainer.max_steps"] + settings["finetune"]["max_steps"] == 3000
    assert settings["finetune"] | {"max_steps": None} == {
        "level": HIGH,
        "pretrain": [LOW],
        "init_from": LOW,
        "energy_only": True,
        "replay": 0.2,
        "max_steps": None,
        "max_time_minutes": None,
    }
    for model in MODELS:
        assert (model.kept is None) == model.high_forces, "a store holds only what a model uses"


def test_the_shared_schedule_follows_the_budget(tmp_path):
    """Over steps, cosine decay to a floor; over time alone, plateau halving down to a floor; a
    base config with cosine under a time budget is refused (it would decay over no steps)."""
    from mftrain.config import ConfigError
    from mftrain.studies.args import Budget
    from mftrain.studies.configs import base_config

    steps = base_config(None, Budget(6000, None))
    assert steps.lr_scheduler.kind == "cosine" and steps.lr_scheduler.min_lr == 1e-4
    assert steps.trainer.precision == "float32"
    time = base_config(None, Budget(None, 2.0))
    assert time.lr_scheduler.kind == "plateau" and time.lr_scheduler.min_lr == 5e-4
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump({"lr_scheduler": {"kind": "cosine"}}), encoding="utf-8")
    assert base_config(str(path), Budget(100, None)).lr_scheduler.kind == "cosine"
    with pytest.raises(ConfigError, match="give --steps"):
        base_config(str(path), Budget(None, 2.0))


def test_every_recipe_has_one_rule_per_shared_argument():
    """n_test >= 1 for every recipe (it once was >= 2 in three of them), and the recipes' own
    arguments are checked the same way."""
    from mftrain.studies.multihead_vs_finetune import MultiheadVsFinetuneArgs
    from mftrain.studies.pretrain_finetune import PretrainFinetuneArgs
    from mftrain.studies.representations import RepresentationsArgs

    shared = dict(out="o", seeds=1, steps=100)
    transfer = dict(pretrain=LOW, finetune=HIGH, sizes=[4, 8], pretrain_steps=100)
    for make in (
        low_forces_args,
        lambda **k: RepresentationsArgs(**shared, **k),
        lambda **k: MultiheadVsFinetuneArgs(**shared, **k),
        lambda **k: PretrainFinetuneArgs(**shared, **transfer, **k),
    ):
        assert make(n_test=1).n_test == 1
        with pytest.raises(UsageError, match="--n-test 0: must be at least 1"):
            make(n_test=0)
    for bad, message in (
        ({"sizes": []}, "--sizes []: give values of at least 1"),
        ({"sizes": [0, 4]}, "--sizes [0, 4]: give values of at least 1"),
        ({"pretrain_minutes": 0}, "--pretrain-minutes 0: must be positive"),
        ({"pretrain_steps": None}, "give --pretrain-steps or --pretrain-minutes"),
    ):
        with pytest.raises(UsageError, match=re.escape(message)):
            PretrainFinetuneArgs(**shared, **{**transfer, **bad}, n_test=5)


def test_the_plan_leaves_out_what_may_change_between_reruns(tmp_path):
    args = low_forces_args(out=tmp_path / "o", config=tmp_path / "base.yaml", jobs=3)
    assert args.out == str(tmp_path / "o") and args.config == str(tmp_path / "base.yaml")
    plan = args.plan()
    assert "out" not in plan and "jobs" not in plan
    assert plan["n_test"] == 50 and plan["n_high"] == [100] and plan["config"] == args.config


def test_rerun_check_records_reuses_and_refuses(tmp_path):
    from mftrain.studies.runner import PLAN_FILE, check_plan

    out = tmp_path / "study"
    plan = {"n_test": 6, "seeds": 1, "data": "/x"}
    check_plan(out, plan)
    assert json.loads((out / PLAN_FILE).read_text()) == plan
    check_plan(out, dict(reversed(plan.items())))  # the same arguments: reused
    with pytest.raises(UsageError, match=r"other arguments \(n_test, seeds differ\)"):
        check_plan(out, {**plan, "n_test": 7, "seeds": 2})
    with pytest.raises(UsageError, match=r"other arguments \(md differ\)"):
        check_plan(out, {**plan, "md": False})
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not a study directory"):
        check_plan(other, plan)
    assert not (other / PLAN_FILE).exists()


def test_a_finished_run_is_not_run_again(tmp_path):
    from mftrain.config import TrainConfig
    from mftrain.studies.runner import DONE_FILE, fit_in_subprocess

    run = tmp_path / "run"
    run.mkdir()
    fitted = {"checkpoint": str(run / "best.ckpt"), "steps": 12, "seconds": 3.5}
    (run / DONE_FILE).write_text(json.dumps(fitted))
    assert fit_in_subprocess(TrainConfig(), run) == fitted
    assert sorted(p.name for p in run.iterdir()) == [DONE_FILE], "no config written, no fit run"


STUDY_OPTIONS = {
    "low-forces-high-energies": {
        "data": None,
        "low": "gfn2-xtb",
        "high": "wb97x-631gd-pyscf",
        "n_high": "100",
        "n_test": 50,
        "seeds": 3,
        "steps": 6000,
        "budget_minutes": None,
        "config": None,
        "md": True,
        "md_steps": 400,
        "jobs": None,
        "json_out": None,
        "out": Path("study-low-forces-high-energies"),
    },
    "pretrain-finetune": {
        "data": None,
        "pretrain": "gfn2-xtb",
        "finetune": "wb97x-631gd-pyscf",
        "sizes": "10,25,50,100",
        "n_test": 50,
        "seeds": 1,
        "steps": 3000,
        "budget_minutes": None,
        "pretrain_steps": 6000,
        "pretrain_minutes": None,
        "config": None,
        "jobs": None,
        "out": Path("study-pretrain-finetune"),
    },
    "multihead-vs-finetune": {
        "data": None,
        "levels": None,
        "pretrain": None,
        "n_test": 20,
        "seeds": 1,
        "steps": 6000,
        "budget_minutes": None,
        "config": None,
        "jobs": None,
        "out": Path("study-multihead-vs-finetune"),
    },
    "representations": {
        "data": None,
        "levels": None,
        "n_test": 20,
        "seeds": 2,
        "steps": 6000,
        "budget_minutes": None,
        "config": None,
        "jobs": None,
        "out": Path("study-representations"),
    },
}


def test_study_commands_keep_their_options_and_defaults():
    import typer

    from mftrain.cli import app

    study = typer.main.get_command(app).commands["study"]
    assert set(study.commands) == set(STUDY_OPTIONS)
    for name, expected in STUDY_OPTIONS.items():
        params = [p for p in study.commands[name].params if p.name != "help"]
        assert {p.name: p.default for p in params} == expected, name
        flags = {p.name: p.opts[0] for p in params}
        assert all(flag == "--" + key.replace("_", "-") for key, flag in flags.items()), name
