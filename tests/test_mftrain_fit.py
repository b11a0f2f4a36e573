"""``mftrain fit`` end to end through nequip's training stack, on real stores: a multi-head model
learns, a killed run resumes from last.ckpt, checkpoints carry provenance, fit prepares stores."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mfdata.store.store import Store
from tests.conftest import run_cli, run_mftrain

LEVELS = ["wb97x-631gd", "ccsdt-star-cbs", "pbe-d3-def2svp"]


def tiny_config(path: Path, stores: list[str], **sections) -> Path:
    """A tiny model (2 layers, l_max 1, 8 features) and quiet, small-step training in float64."""
    config = {
        "data": {"stores": stores, "batch_size": 8},
        "model": {
            "r_max": 4.0,
            "num_layers": 2,
            "l_max": 1,
            "num_features": 8,
            "radial_mlp_width": 16,
        },
        "trainer": {
            "max_steps": 20,
            "precision": "float64",  # the tests compare numbers at float64 tolerances
            "progress_bar": False,
            "log_every_n_steps": 5,
            "checkpoint_every_n_steps": 10,
        },
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shared) -> dict[str, str]:
    """ANI-1x sample (ωB97X energies+forces, CCSD(T)* energies on 6 of 8; split 4/2/2) and 60
    acac frames (PBE+D3 energies+forces; split 48/6/6), packed, with statistics."""
    from ase.io import read, write

    root = tmp_path_factory.mktemp("mftrain_fit")
    ani, acac = root / "ani", root / "acac"
    run_cli(
        "convert",
        shared / "modelforge_testdata" / "ani1_n5.hdf5",
        "--out",
        ani,
        "--name",
        "mftrain-fit-ani",
    )
    write(root / "acac.xyz", read(shared / "botnet_acac" / "train_300K.xyz", ":60"))
    run_cli(
        "convert",
        root / "acac.xyz",
        "--level",
        "pbe-d3-def2svp",
        "--out",
        acac,
        "--name",
        "mftrain-fit-acac",
    )
    for store, fractions in ((ani, "0.5,0.25,0.25"), (acac, "0.8,0.1,0.1")):
        run_cli("pack", store)
        run_cli("stats", store)
        run_cli("split", store, "--name", "default", "--fractions", fractions, "--seed", "1")
    return {"ani": str(ani), "acac": str(acac)}


def metrics(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / "logs").glob("version_*/metrics.csv")):
        rows += list(csv.DictReader(path.open()))
    return rows


def column(rows: list[dict], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r.get(name)]


@pytest.mark.slow
def train_two_heads(root, shared, name: str):
    """A two-head model (ωB97X, CCSD(T)*) trained for a few steps on the ANI-1x sample."""
    store = root / "ani"
    run_cli(
        "convert", shared / "modelforge_testdata" / "ani1_n5.hdf5", "--out", store, "--name", name
    )
    run_cli("split", store, "--name", "default", "--fractions", "0.5,0.25,0.25", "--seed", "1")
    config = tiny_config(
        root / f"{name}.yaml",
        [str(store)],
        data={"levels": ["wb97x-631gd", "ccsdt-star-cbs"]},
        trainer={"max_steps": 6},
    )
    run_mftrain("fit", config, "--out", root / "run")
    return store, root / "run" / "last.ckpt"


def test_multihead_training_lowers_the_loss(tmp_path, stores):
    """Three heads (ωB97X forces+energies, CCSD(T)* energies only, PBE+D3) trained jointly for
    300 steps on the CPU: training and validation losses fall, every head improves."""
    config = tiny_config(
        tmp_path / "mh.yaml",
        [stores["ani"], stores["acac"]],
        data={
            "levels": ["wb97x_dz", "ccsd(t)_cbs", "PBE+D3/def2-SVP"],
            "mixing": {"mode": "balanced"},
            "epoch_size": 48,
        },
        trainer={"max_steps": 300, "checkpoint_every_n_steps": 100},
    )
    out = tmp_path / "run"
    started = time.perf_counter()
    proc = run_mftrain("fit", config, "--out", out)
    elapsed = time.perf_counter() - started
    assert "3 head(s) in order: wb97x-631gd, ccsdt-star-cbs, pbe-d3-def2svp" in proc.stdout
    for name in ("last.ckpt", "best.ckpt", "config.yaml", "mftrain.yaml", "provenance.json"):
        assert (out / name).is_file(), name

    rows = metrics(out)
    train = column(rows, "train_loss_epoch/weighted_sum")
    val = column(rows, "val0_epoch/weighted_sum")
    print(
        f"300 steps in {elapsed:.1f} s; train loss {train[0]:.4f} -> {train[-1]:.4f}; "
        f"val loss {val[0]:.4f} -> {min(val):.4f}"
    )
    assert train[-1] < 0.5 * train[0]
    assert min(val) < 0.75 * val[0]
    for level in LEVELS:
        first = column(rows, f"val0_epoch/{level}/energy_per_atom_mae")
        assert first and min(first) < first[0], level

    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 300
    heads = {k.split(".heads.")[1].split(".")[0] for k in ckpt["state_dict"] if ".heads." in k}
    assert heads == set(LEVELS), "heads are keyed by level id in the checkpoint"
    prov = ckpt["mfkit"]
    assert prov["levels"] == LEVELS
    assert prov["type_names"] == ["H", "C", "N", "O"]
    assert ckpt["hyper_parameters"]["model"]["levels"] == LEVELS
    config_written = yaml.safe_load((out / "config.yaml").read_text())
    assert config_written["data"]["levels"] == LEVELS, "one ordering, two readers"
    assert config_written["data"]["type_names"] == prov["type_names"]
    assert [s["checksum"] for s in prov["stores"]] == [
        Store(stores["ani"]).manifest.checksum,
        Store(stores["acac"]).manifest.checksum,
    ]
    assert prov["split"]["name"] == "default"
    assert prov["mixing"]["ratios_epoch0"] == pytest.approx(dict.fromkeys(LEVELS, 1 / 3))
    assert prov["loss"]["weights"]["ccsdt-star-cbs"] == {
        "energy": 1.0,
        "forces": 1.0,
        "stress": 1.0,
    }
    # ωB97X/6-31G(d) has published isolated-atom energies: its shift adds the mean binding energy
    ani = Store(stores["ani"]).manifest.statistics.levels["wb97x-631gd"]
    assert ani.reference_method == "isolated_atoms"
    assert prov["reference_energies"]["wb97x-631gd"]["C"] == pytest.approx(
        ani.reference_energies["C"] + ani.energy_per_atom_mean
    )
    assert prov["mfkit_version"] and prov["nequip_version"].startswith("0.19")
    best = torch.load(out / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["mfkit"]["levels"] == LEVELS

    # the same checkpoint scores per head
    scored = run_mftrain(
        "eval",
        out / "best.ckpt",
        "--data",
        stores["ani"],
        "--split",
        "default:test",
        "--json",
        "--plots",
        tmp_path / "plots",
    )
    result = yaml.safe_load(scored.stdout)
    assert set(result) == {"wb97x-631gd", "ccsdt-star-cbs"}
    assert "forces_mae" in result["wb97x-631gd"] and "forces_mae" not in result["ccsdt-star-cbs"]
    assert (tmp_path / "plots" / "parity_wb97x-631gd.png").stat().st_size > 1000


def test_single_head_fit_prepares_the_store(tmp_path, shared):
    """A fresh store (not packed, no statistics, no split): fit packs it, computes statistics,
    makes and saves a 90/5/5 split, and trains one head through nequip's stack."""
    from ase.io import read, write

    write(tmp_path / "bpa.xyz", read(shared / "botnet_3BPA" / "train_300K.xyz", ":40"))
    store = tmp_path / "bpa"
    run_cli("convert", tmp_path / "bpa.xyz", "--level", "wb97x-631gd", "--out", store)
    config = tiny_config(tmp_path / "single.yaml", [], trainer={"max_steps": 12})
    out = tmp_path / "run"
    proc = run_mftrain("fit", config, "--data", store, "--strategy", "single", "--out", out)
    assert "packing it" in proc.stdout
    assert "computing per-level statistics" in proc.stdout
    assert "90/5/5 split" in proc.stdout and "saved it in the store" in proc.stdout
    opened = Store(store)
    assert opened.manifest.splits == ["default"]
    assert opened.manifest.lmdb is not None
    assert "wb97x-631gd" in opened.manifest.statistics.levels
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 12
    assert ckpt["mfkit"]["strategy"] == "single"
    assert ckpt["mfkit"]["levels"] == ["wb97x-631gd"]
    assert ckpt["mfkit"]["split"]["per_store"][0]["fractions"] == [0.9, 0.05, 0.05]
    assert (out / "best.ckpt").is_file()

    # rerunning a finished run resumes from its last.ckpt and has nothing left to do
    again = run_mftrain("fit", config, "--data", store, "--strategy", "single", "--out", out)
    assert "resuming from" in again.stdout and "(step 12 of 12)" in again.stdout
    assert "90/5/5" not in again.stdout, "the saved split is reused"


def test_killed_fit_resumes_from_last_checkpoint(tmp_path, stores):
    """Kill ``mftrain fit`` once last.ckpt exists; rerunning resumes from it and finishes."""
    config = tiny_config(
        tmp_path / "resume.yaml",
        [stores["acac"]],
        trainer={"max_steps": 2000, "checkpoint_every_n_steps": 5},
    )
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mftrain.cli", "fit", str(config), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while not (out / "last.ckpt").exists() and time.time() < deadline:
            assert proc.poll() is None, "fit ended before writing a checkpoint"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    step = killed_at["global_step"]
    assert 0 < step < 2000

    # the rerun (with fewer steps, so that it ends soon) continues from that step
    resumed = run_mftrain("fit", config, "--out", out, "--max-steps", step + 10)
    assert f"resuming from {out / 'last.ckpt'} (step {step} of {step + 10})" in resumed.stdout
    final = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == step + 10
    assert final["mfkit"] == killed_at["mfkit"]
    assert len(list((out / "logs").glob("version_*"))) == 2

    # a different configuration in the same directory is refused, naming what differs
    from mftrain.config import ConfigError, load_config, with_overrides
    from mftrain.train import prepare, write_run

    other = tiny_config(tmp_path / "other.yaml", [stores["acac"]], model={"num_features": 16})
    prepared = prepare(with_overrides(load_config(other), {"out": str(out)}), echo=print)
    with pytest.raises(ConfigError, match="another configuration.*num_features"):
        write_run(prepared)


def test_fit_repacks_a_pack_of_an_older_layout(tmp_path, stores):
    """A store packed before per-record checksums (LMDB layout 1) is re-packed by fit's store
    preparation, as an unpacked store is packed; processes a launcher starts together are told
    to re-pack it first."""
    import shutil

    from mfdata.store.manifest import write_manifest
    from mftrain.config import ConfigError, TrainConfig
    from mftrain.train import prepare_stores

    store = tmp_path / "acac"
    shutil.copytree(stores["acac"], store)
    manifest = Store(store).manifest
    old = manifest.lmdb.model_copy(update={"layout_version": 1})
    write_manifest(store, manifest.model_copy(update={"lmdb": old}))
    config = TrainConfig.model_validate({"data": {"stores": [str(store)]}})
    with pytest.raises(ConfigError, match=f"mfdata pack --force {store}"):
        prepare_stores(config, print, modify=False)
    said: list[str] = []
    prepare_stores(config, said.append)
    assert any("LMDB pack is outdated" in line and "re-packing" in line for line in said)
    assert Store(store).manifest.lmdb.layout_version == 2 and Store(store).verify() == []
