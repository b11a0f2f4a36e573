"""Files users saved before the redesign of issue 15 still load and train: the nequip config's
``_target_`` paths resolve, the checkpoint reads, a model fine-tunes from it, and the mftrain
config trains. mfkit wrote the files at commit d2d779a (tests/data/saved-by-d2d779a/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_object

from mftrain.checkpoint import read_checkpoint
from tests.conftest import run_cli, run_mftrain

SAVED = Path(__file__).parent / "data" / "saved-by-d2d779a"
HEADS = ["wb97x-631gd", "ccsdt-star-cbs"]


def targets(node: object) -> list[str]:
    """Every ``_target_`` string in a parsed config."""
    if isinstance(node, dict):
        found = [node["_target_"]] if "_target_" in node else []
        return found + [t for value in node.values() for t in targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in targets(value)]
    return []


@pytest.fixture(scope="module")
def store(tmp_path_factory, shared) -> Path:
    """The ANI-1x sample the saved model was trained on, converted and split as it was then."""
    path = tmp_path_factory.mktemp("saved") / "ani"
    run_cli("convert", shared / "modelforge_testdata" / "ani1_n5.hdf5", "--out", path)
    run_cli("split", path, "--name", "default", "--fractions", "0.5,0.25,0.25", "--seed", "1")
    return path


def test_every_target_of_a_saved_nequip_config_resolves():
    config = yaml.safe_load((SAVED / "nequip-config.yaml").read_text(encoding="utf-8"))
    found = targets(config)
    assert "mfdata.loader.FidelityDataModule" in found, "the module path saved configs name"
    for target in found:
        assert get_object(target) is not None, target


def test_a_saved_checkpoint_reads():
    checkpoint = read_checkpoint(SAVED / "model.ckpt")
    assert checkpoint.levels == HEADS
    assert checkpoint.strategy == "multihead" and checkpoint.global_step == 6


@pytest.mark.slow
def test_a_model_fine_tunes_from_a_saved_checkpoint(tmp_path, store):
    old = yaml.safe_load((SAVED / "mftrain.yaml").read_text(encoding="utf-8"))
    config = {
        "strategy": "pretrain_finetune",
        "data": {"stores": [str(store)], "batch_size": 4},
        "model": old["model"],
        "finetune": {
            "level": HEADS[0],
            "pretrain": [HEADS[0]],
            "from_checkpoint": str(SAVED / "model.ckpt"),
        },
        "trainer": {"max_steps": 4, "progress_bar": False, "log_every_n_steps": 2},
    }
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_mftrain("fit", path, "--out", tmp_path / "run")
    stages = json.loads((tmp_path / "run" / "stages.json").read_text(encoding="utf-8"))
    final = read_checkpoint(stages["final_checkpoint"])
    assert final.global_step == 4 and final.levels == [HEADS[0]]


@pytest.mark.slow
def test_a_saved_mftrain_config_trains(tmp_path, store):
    config = yaml.safe_load((SAVED / "mftrain.yaml").read_text(encoding="utf-8"))
    config["data"]["stores"] = [str(store)]
    config["trainer"]["max_steps"] = 4
    config["out"] = str(tmp_path / "run")
    path = tmp_path / "mftrain.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_mftrain("fit", path)
    assert read_checkpoint(tmp_path / "run" / "last.ckpt").levels == HEADS
