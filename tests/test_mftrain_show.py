"""What a run tells its user: a run shorter than an epoch still validates (once, at its end),
every validation prints a line, ``fit`` draws ``learning_curve.png``, the common knobs are flags,
and ``mftrain show`` describes a checkpoint and an exported head."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from mfdata.store.store import Store
from tests.conftest import run_cli, run_mftrain
from tests.test_mftrain_fit import tiny_config

LEVEL = "pbe-d3-def2svp"


@pytest.fixture(scope="module")
def acac(tmp_path_factory, shared) -> Path:
    """60 acac frames (PBE+D3 energies and forces), packed, with statistics and the split
    ``default`` (48 train / 6 val / 6 test: an epoch of batch size 8 is 6 steps)."""
    from ase.io import read, write

    root = tmp_path_factory.mktemp("mftrain_show")
    write(root / "acac.xyz", read(shared / "botnet_acac" / "train_300K.xyz", ":60"))
    store = root / "acac"
    run_cli("convert", root / "acac.xyz", "--level", LEVEL, "--out", store, "--name", "show-acac")
    run_cli("pack", store)
    run_cli("stats", store)
    run_cli("split", store, "--name", "default", "--fractions", "0.8,0.1,0.1", "--seed", "1")
    return store


def validation_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("validation at step")]


def test_a_run_shorter_than_an_epoch_validates_and_describes_itself(tmp_path, acac):
    """4 steps of a 6-step epoch: one validation at step 4 (best.ckpt is chosen by it), one
    printed line with the level's MAE, a learning curve naming its CSV; ``show`` reports the
    heads with their level definition and reference energies, the data's checksum, the steps and
    the last validation, for the checkpoint and for the exported head."""
    config = tiny_config(tmp_path / "short.yaml", [str(acac)])
    out = tmp_path / "run"
    proc = run_mftrain("fit", config, "--max-steps", "4", "--out", out)

    lines = validation_lines(proc.stdout)
    assert len(lines) == 1 and lines[0].startswith("validation at step 4: loss ")
    assert f"{LEVEL} energy " in lines[0] and "meV/atom, forces " in lines[0]
    assert "best validation loss n/a" not in proc.stdout
    curve = out / "learning_curve.png"
    assert f"learning curve: {curve} (from logs/version_0/metrics.csv)" in proc.stdout
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curve.stat().st_size > 5000

    shown = json.loads(run_mftrain("show", out / "best.ckpt", "--json").stdout)
    assert shown["kind"] == "checkpoint" and shown["strategy"] == "multihead"
    assert shown["steps"] == 4
    (head,) = shown["heads"]
    assert head["level"] == LEVEL
    assert head["definition"]["name"] == "PBE+D3/def2-SVP"
    statistics = Store(acac).manifest.statistics.levels[LEVEL]
    assert head["reference_energies_eV"]["C"] == pytest.approx(statistics.reference_energies["C"])
    assert shown["stores"][0]["checksum"] == Store(acac).manifest.checksum
    assert shown["split"]["name"] == "default"
    assert shown["last_validation"]["step"] == 4
    assert shown["best_validation_loss"] == pytest.approx(
        shown["last_validation"]["metrics"]["val0_epoch/weighted_sum"]
    )
    text = run_mftrain("show", out / "best.ckpt").stdout
    assert f"{LEVEL}: PBE+D3/def2-SVP" in text and "last validation at step 4" in text

    package = tmp_path / "head.nequip.zip"
    run_mftrain("export", out / "best.ckpt", "--head", LEVEL, "--out", package)
    described = json.loads(run_mftrain("show", package, "--json").stdout)
    assert described["kind"] == "package"
    assert described["head"]["level_definition"]["name"] == "PBE+D3/def2-SVP"
    assert described["head"]["reference_energies_eV"] == head["reference_energies_eV"]
    assert described["head"]["stores"][0]["checksum"] == Store(acac).manifest.checksum
    with zipfile.ZipFile(package) as archive:  # plain YAML in nequip's own metadata file
        (name,) = [n for n in archive.namelist() if n.endswith("model/package_metadata.txt")]
        assert yaml.safe_load(archive.read(name))["mfkit"]["level"] == LEVEL

    (tmp_path / "junk.nequip.zip").write_bytes(b"not a zip")
    refused = run_mftrain("show", tmp_path / "junk.nequip.zip", check=False)
    assert refused.returncode == 2 and "not a nequip package" in refused.stderr


def test_fit_flags_set_split_validation_interval_and_budget(tmp_path, acac):
    """--split, --val-every, --max-time, --batch-size, --lr and --seed reach the run: it trains
    on the named split and validates at steps 2, 4 and at its end (5)."""
    run_cli("split", acac, "--name", "other", "--fractions", "0.6,0.2,0.2", "--seed", "2")
    config = tiny_config(tmp_path / "flags.yaml", [str(acac)])
    out = tmp_path / "run"
    proc = run_mftrain(
        "fit", config, "--max-steps", "5", "--val-every", "2", "--split", "other",
        "--max-time", "30", "--batch-size", "4", "--lr", "0.002",
        "--seed", "3", "--out", out,
    )  # fmt: skip
    steps = [int(line.split()[3].rstrip(":")) for line in validation_lines(proc.stdout)]
    assert steps == [2, 4, 5]
    written = yaml.safe_load((out / "mftrain.yaml").read_text())
    assert written["data"]["split"] == "other"
    assert written["data"]["batch_size"] == 4 and written["seed"] == 3
    assert written["optimizer"]["lr"] == 0.002
    assert written["trainer"]["val_every_n_steps"] == 2
    assert written["trainer"]["max_time_minutes"] == 30
