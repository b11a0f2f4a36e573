"""A real two-process torch.distributed job (gloo, CPU): each rank samples a real store with
mixing and atom-budget batches; shards are disjoint, batch counts equal, resume is exact."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ase.io import read, write

from tests.conftest import run_cli

WORLD = 2
LEVELS = ["wb97x-631gd", "ccsdt-star-cbs", "pbe-d3-def2svp"]
# 6 + 6 + 36 samples: no level drawn more often than its pool holds (8, 6 and 60 samples)
MIXING = {
    "mode": "explicit",
    "ratios": {"wb97x-631gd": 1, "ccsdt-star-cbs": 1, "pbe-d3-def2svp": 6},
}
EPOCH_SIZE = 48
MAX_ATOMS = 70
RESUME_AFTER = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sampler(dataset, **kwargs):
    from mfdata.sampler import FidelityBatchSampler, LevelMixing

    sampler = FidelityBatchSampler(
        dataset.pools,
        dataset.n_atoms,
        mixing=LevelMixing.model_validate(MIXING),
        epoch_size=EPOCH_SIZE,
        max_atoms=MAX_ATOMS,
        seed=7,
        blocks=getattr(dataset, "sample_block", None),
        **kwargs,
    )
    sampler.set_epoch(1)
    return sampler


def _datasets(stores: list[str]) -> dict:
    from mfdata.loading.lmdb_dataset import FidelityDataset
    from mfdata.loading.zarr_dataset import ZarrFidelityDataset

    return {"lmdb": FidelityDataset(stores, LEVELS), "zarr": ZarrFidelityDataset(stores, LEVELS)}


def _rank_main(rank: int, port: int, stores: list[str], out: str) -> None:
    """One rank: sampler from torch.distributed's rank and world size, a DataLoader, counts."""
    from nequip.data import AtomicDataDict

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        result = {}
        for name, dataset in _datasets(stores).items():
            sampler = _sampler(dataset)
            assert (sampler.rank, sampler.world_size) == (rank, WORLD)
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=sampler, collate_fn=AtomicDataDict.batched_from_list
            )
            batches = list(_sampler(dataset))  # the same ids, from a second sampler
            heads, atoms = [], []
            for batch in loader:
                heads += batch[AtomicDataDict.DATASET_KEY].view(-1).tolist()
                atoms.append(int(batch[AtomicDataDict.NUM_NODES_KEY].sum()))
            count = torch.tensor([len(batches)])
            total, most = count.clone(), count.clone()
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
            # resume: a sampler stopped after a few batches, its state saved and loaded
            stopped = _sampler(dataset)
            iterator = iter(stopped)
            first = [next(iterator) for _ in range(RESUME_AFTER)]
            state = json.loads(json.dumps(stopped.state_dict()))  # as a checkpoint stores it
            resumed = _sampler(dataset)
            resumed.set_epoch(0)  # a fresh sampler: the state says which epoch and where
            resumed.load_state_dict(state)
            result[name] = {
                "batches": batches,
                "heads": heads,
                "atoms": atoms,
                "all_reduce_sum": int(total),
                "all_reduce_max": int(most),
                "resumed": first + list(resumed),
            }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shared) -> list[str]:
    root = tmp_path_factory.mktemp("distributed")
    ani, acac = root / "ani", root / "acac"
    with pytest.MonkeyPatch.context() as mp:  # store names in a registry of this module's own
        mp.setenv("MFKIT_HOME", str(root / "home"))
        write(root / "acac.xyz", read(shared / "botnet_acac" / "train_300K.xyz", ":60"))
        run_cli("convert", shared / "modelforge_testdata" / "ani1_n5.hdf5", "--out", ani)
        run_cli("convert", root / "acac.xyz", "--level", "pbe-d3-def2svp", "--out", acac)
        for store in (ani, acac):
            run_cli("pack", store, "--shards", "2")
    return [str(ani), str(acac)]


def test_two_ranks_read_disjoint_shards_with_equal_batch_counts(stores, tmp_path):
    mp.spawn(_rank_main, args=(_free_port(), stores, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for name, dataset in _datasets(stores).items():
        per_rank = [r[name] for r in ranks]
        counts = [len(r["batches"]) for r in per_rank]
        assert counts[0] == counts[1] > 1, "unequal batch counts hang DDP"
        assert all(r["all_reduce_sum"] == sum(counts) for r in per_rank)
        assert all(r["all_reduce_max"] == counts[0] for r in per_rank)
        assert all(a <= MAX_ATOMS for r in per_rank for a in r["atoms"])
        # the whole epoch, as one process sees it: the ranks' shares are its batches, dealt
        # round-robin (or in contiguous runs with blocks), padded by repeating from its start
        whole = list(_sampler(dataset, rank=0, world_size=1))
        padding = whole[: WORLD * counts[0] - len(whole)]
        assert len(padding) < WORLD and len(whole) > 2 * RESUME_AFTER
        padded = whole + padding
        for r, share in enumerate(per_rank):
            if name == "lmdb":
                assert share["batches"] == padded[r::WORLD]
            else:
                assert share["batches"] == padded[r * counts[0] : (r + 1) * counts[0]]
        # no sample is drawn twice in this epoch, so apart from the padding ranks are disjoint
        flat = [set(np.concatenate(r["batches"]).tolist()) for r in per_rank]
        assert len(flat[0] | flat[1]) == EPOCH_SIZE
        assert flat[0] & flat[1] <= {i for b in padding for i in b}
        heads = np.bincount(dataset.sample_head[np.concatenate(whole)], minlength=3)
        assert heads.tolist() == [6, 6, 36]
        for r in per_rank:
            # the frames each rank loaded are the samples its sampler gave
            assert r["heads"] == dataset.sample_head[np.concatenate(r["batches"])].tolist()
            assert r["resumed"] == r["batches"], "resuming mid-epoch replays the rest"
