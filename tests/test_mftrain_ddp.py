"""Two-process DDP training on the CPU (gloo) through the real ``mftrain fit``: started by
Lightning from a plain ``mftrain fit`` and by torchrun. Both ranks end with identical parameters,
each rank trained on its own shard of the data, and two processes with 4 structures each take
the same steps as one process with 8."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mfdata.store.store import Store
from mftrain.training_module import batches_digest, state_digest
from tests.conftest import run_cli, run_mftrain
from tests.test_mftrain_fit import tiny_config

WORLD = 2
LEVELS = ["wb97x-631gd", "ccsdt-star-cbs", "pbe-d3-def2svp"]


def torchrun(*args, check: bool = True, processes: int = WORLD) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node PROCESSES -m mftrain.cli ARGS``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(processes), "-m", "mftrain.cli", *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun mftrain {args} failed:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shared) -> dict[str, str]:
    """The ANI-1x sample (two levels; split 4/2/2) and 60 acac frames (PBE+D3; split 48/6/6),
    packed, with statistics: ready for processes that start together."""
    from ase.io import read, write

    root = tmp_path_factory.mktemp("mftrain_ddp")
    ani, acac = root / "ani", root / "acac"
    with pytest.MonkeyPatch.context() as mp:  # store names in a registry of this module's own
        mp.setenv("MFKIT_HOME", str(root / "home"))
        run_cli("convert", shared / "modelforge_testdata" / "ani1_n5.hdf5", "--out", ani)
        write(root / "acac.xyz", read(shared / "botnet_acac" / "train_300K.xyz", ":60"))
        run_cli("convert", root / "acac.xyz", "--level", "pbe-d3-def2svp", "--out", acac)
        for store, fractions in ((ani, "0.5,0.25,0.25"), (acac, "0.8,0.1,0.1")):
            run_cli("pack", store)
            run_cli("stats", store)
            run_cli("split", store, "--name", "default", "--fractions", fractions, "--seed", "1")
    return {"ani": str(ani), "acac": str(acac)}


def rank_reports(out: Path) -> list[dict]:
    return [json.loads((out / "ranks" / f"rank{k}.json").read_text()) for k in range(WORLD)]


def final_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def epoch0_shards(out: Path) -> list[list[list[int]]]:
    """Each rank's epoch-0 batches, dealt from the data section of the run's nequip config."""
    from mfdata.loading.lmdb_dataset import FidelityDataset
    from mfdata.sampler import FidelityBatchSampler, LevelMixing

    data = yaml.safe_load((out / "config.yaml").read_text())["data"]
    dataset = FidelityDataset(
        data["stores"],
        data["levels"],
        data["type_names"],
        split=f"{data['split']}:{data['train_part']}",
        labels=data["labels"],
        dtype=data["dtype"],
    )
    return [
        list(
            FidelityBatchSampler(
                dataset.pools,
                dataset.n_atoms,
                mixing=LevelMixing.model_validate(data["mixing"]),
                epoch_size=data["epoch_size"],
                batch_size=data["batch_size"],
                seed=data["seed"],
                rank=rank,
                world_size=WORLD,
            )
        )
        for rank in range(WORLD)
    ]


@pytest.mark.slow
def test_lightning_started_ranks_train_on_their_shards_and_end_identical(tmp_path, stores):
    """A plain ``mftrain fit`` with ``trainer.devices: 2``: Lightning starts the second rank;
    three heads train on two stores; both ranks hold the checkpoint's parameters at the end."""
    config = tiny_config(
        tmp_path / "ddp.yaml",
        [stores["ani"], stores["acac"]],
        data={"levels": LEVELS, "batch_size": 4},
        trainer={"max_steps": 14, "devices": WORLD},
    )
    out = tmp_path / "run"
    proc = run_mftrain("fit", config, "--out", out)
    assert proc.stdout.count("DDP over 2 processes (started by Lightning)") == 1
    assert proc.stdout.count("strategy multihead: 3 head(s) in order") == 1

    reports = rank_reports(out)
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == WORLD and r["global_step"] == 14 for r in reports)
    assert reports[0]["state_dict_sha256"] == reports[1]["state_dict_sha256"]
    assert reports[0]["hyper_parameters_sha256"] == reports[1]["hyper_parameters_sha256"]
    assert state_digest(final_state(out)) == reports[0]["state_dict_sha256"]

    # each rank read its own shard of epoch 0 (54 samples in 14 batches: 7 a rank, no padding):
    # disjoint, together every training sample once
    shards = epoch0_shards(out)
    for rank, report in enumerate(reports):
        assert report["epoch0"] == batches_digest(shards[rank])
    assert len(shards[0]) == len(shards[1]) > 1, "equal batch counts (unequal ones hang DDP)"
    ids = [{i for batch in shard for i in batch} for shard in shards]
    assert not ids[0] & ids[1]
    provenance = json.loads((out / "provenance.json").read_text())
    assert len(ids[0] | ids[1]) == sum(provenance["mixing"]["train_samples"].values())

    # and it trained: the training loss of the second epoch is below the first's
    with (out / "logs" / "version_0" / "metrics.csv").open() as f:
        losses = [
            float(r["train_loss_epoch/weighted_sum"])
            for r in csv.DictReader(f)
            if r.get("train_loss_epoch/weighted_sum")
        ]
    assert len(losses) == 2 and losses[1] < losses[0]


@pytest.mark.slow
def test_torchrun_ranks_take_the_steps_of_one_process_with_both_batches(tmp_path, stores):
    """torchrun starts two ``mftrain fit`` processes (4 acac frames per batch each); only rank 0
    prints and writes, and with plain SGD the result matches one process with 8 frames a batch
    at twice the learning rate: as in nequip's own training step, each process's loss is its
    batch mean times the number of processes, and DDP averages the gradients (so the step uses
    the sum of the per-process means; frames of equal size here)."""
    sections = {"optimizer": {"name": "SGD", "lr": 0.05}}
    config = tiny_config(
        tmp_path / "ddp.yaml",
        [stores["acac"]],
        data={"batch_size": 4},
        trainer={"max_steps": 10, "devices": WORLD},
        **sections,
    )
    out = tmp_path / "ddp"
    proc = torchrun("fit", config, "--out", out)
    assert proc.stdout.count("DDP over 2 processes (started by torchrun)") == 1
    assert proc.stdout.count("strategy multihead: 1 head(s)") == 1, "ranks above 0 print nothing"
    assert (out / "train_rank1.log").is_file(), "rank 1 logs to its own file"

    reports = rank_reports(out)
    assert reports[0]["state_dict_sha256"] == reports[1]["state_dict_sha256"]
    assert reports[0]["hyper_parameters_sha256"] == reports[1]["hyper_parameters_sha256"]
    assert reports[0]["epoch0"] != reports[1]["epoch0"]
    ddp = final_state(out)
    assert state_digest(ddp) == reports[0]["state_dict_sha256"]

    single = tiny_config(
        tmp_path / "one.yaml",
        [stores["acac"]],
        data={"batch_size": 8},
        trainer={"max_steps": 10},
        optimizer={"name": "SGD", "lr": 0.05 * WORLD},
    )
    run_mftrain("fit", single, "--out", tmp_path / "one")
    one = final_state(tmp_path / "one")
    assert ddp.keys() == one.keys()
    for name, tensor in one.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.slow
def test_processes_started_together_refuse_what_they_would_all_write(tmp_path, stores, shared):
    """Under torchrun every rank runs fit from the start: a store that still needs packing,
    statistics and a split is refused before any work, naming the commands; so is a process
    count that the config does not expect."""
    from ase.io import read, write

    write(tmp_path / "bpa.xyz", read(shared / "botnet_3BPA" / "train_300K.xyz", ":20"))
    raw = tmp_path / "bpa"
    run_cli("convert", tmp_path / "bpa.xyz", "--level", "wb97x-631gd", "--out", raw)
    config = tiny_config(tmp_path / "ddp.yaml", [str(raw)], trainer={"devices": WORLD})
    proc = torchrun("fit", config, "--out", tmp_path / "run", check=False)
    assert proc.returncode != 0
    assert f"mftrain: error: {raw}: not ready for training processes" in proc.stderr
    for command in ("mfdata pack", "mfdata stats", "mfdata split"):
        assert f"{command} {raw}" in proc.stderr
    untouched = Store(raw).manifest
    assert untouched.lmdb is None and not untouched.splits and not (tmp_path / "run").exists()

    ready = tiny_config(tmp_path / "ready.yaml", [stores["acac"]], trainer={"devices": WORLD})
    proc = torchrun("fit", ready, "--out", tmp_path / "run", check=False, processes=1)
    assert proc.returncode != 0
    assert "torchrun: it started 1 process(es), but trainer.devices x trainer.num_nodes" in (
        proc.stderr
    )
    assert not (tmp_path / "run").exists()
