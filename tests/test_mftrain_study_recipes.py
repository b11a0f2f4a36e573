"""``mftrain study`` recipes besides low-forces-high-energies, end to end through the CLI on the
tiny two-level methanol store of tests/test_mftrain_study.py (a file of their own, so that the
test runner can give them a worker of their own)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import run_mftrain
from tests.test_mftrain_study import HIGH, LOW, methanol_store, tiny_base_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """The tiny two-level store and base config every recipe test uses."""
    root = tmp_path_factory.mktemp("tiny")
    store = methanol_store(root, name="methanol-recipes")
    return {"store": store, "config": tiny_base_config(root / "base.yaml")}


def common_args(tiny: dict, out: Path) -> list:
    return [
        "--data",
        tiny["store"],
        "--steps",
        12,
        "--config",
        tiny["config"],
        "--out",
        out,
    ]


@pytest.mark.slow
def test_representations_recipe(tmp_path, tiny):
    """Two levels, two seeds: CKA of every pair of backbones, the seed-to-seed reference."""
    out = tmp_path / "out"
    proc = run_mftrain("study", "representations", *common_args(tiny, out), "--n-test", 6)
    numbers = json.loads((out / "results.json").read_text())
    names = [f"single_{LOW}", f"single_{HIGH}", "multihead"]
    assert list(numbers["cka"]) == names
    for a in names:
        assert numbers["cka"][a][a] == pytest.approx(1.0)
        assert 0.0 < numbers["cka_seed_to_seed"][a] <= 1.0 + 1e-9
        for b in names:
            assert numbers["cka"][a][b] == pytest.approx(numbers["cka"][b][a])
    assert set(numbers["scores"]["multihead"]["0"]) >= {LOW, HIGH}
    assert (out / "figures" / "cka.png").stat().st_size > 5000
    assert "figures/cka.png" in (out / "report.md").read_text()
    assert proc.stdout.splitlines()[-4].split()[0] == "CKA"


@pytest.mark.slow
def test_pretrain_finetune_recipe(tmp_path, tiny):
    """Pre-training once, then scratch and four fine-tuning variants at one size (the
    low-forces study's test covers two); the fine-tuned runs start from the pre-trained
    checkpoint."""
    out = tmp_path / "out"
    args = ["--pretrain", LOW, "--finetune", HIGH, "--sizes", "8", "--pretrain-steps", 12]
    run_mftrain("study", "pretrain-finetune", *common_args(tiny, out), *args, "--n-test", 6)
    numbers = json.loads((out / "results.json").read_text())
    models = ["scratch", "finetune_full", "finetune_frozen", "finetune_discriminative"]
    for name in [*models, "finetune_energy_only"]:
        assert math.isfinite(numbers[name]["8"]["forces_mae"]), name
    pretrained = out / "runs" / "seed-0" / f"pretrain-{LOW}" / "best.ckpt"
    stages = json.loads(
        (out / "runs" / "seed-0" / "n8" / "finetune_frozen" / "stages.json").read_text()
    )
    assert Path(stages["pretrain"]["from_checkpoint"]) == pretrained
    assert (out / "figures" / "learning_curves.png").stat().st_size > 5000


@pytest.mark.slow
def test_multihead_vs_finetune_recipe(tmp_path, tiny):
    out = tmp_path / "out"
    run_mftrain("study", "multihead-vs-finetune", *common_args(tiny, out), "--n-test", 6)
    numbers = json.loads((out / "results.json").read_text())
    assert set(numbers["multihead"]) == {LOW, HIGH}, "scored on every level"
    assert set(numbers[f"single_{LOW}"]) == {LOW}
    assert set(numbers[f"finetune_{HIGH}"]) == {HIGH}, f"pre-trained on {LOW}, the larger level"
    for name in ("multihead", f"single_{HIGH}", f"finetune_{HIGH}"):
        assert math.isfinite(numbers[name][HIGH]["forces_mae"]), name
