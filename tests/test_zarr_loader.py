"""The Zarr dataset (local, file:// and memory:// through fsspec) and chunk-aware block shuffling,
on real stores converted from ../shared/data."""

from __future__ import annotations

import pickle
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
import zarr
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from fsspec.implementations.memory import MemoryFileSystem
from hydra.utils import instantiate
from nequip.data import AtomicDataDict

from mfdata.loading.lmdb_dataset import FidelityDataset
from mfdata.loading.samples import frame_transforms
from mfdata.loading.zarr_dataset import ZarrFidelityDataset, store_blocks
from mfdata.sampler import FidelityBatchSampler, LevelMixing
from mfdata.split import make_split
from mfdata.store import zarr_store
from mfdata.store.lmdb_store import pack
from mfdata.store.manifest import StoreError
from mfdata.store.store import Store, store_as_source, write_store
from tests.conftest import run_cli

LEVELS = ["wb97x-631gd", "ccsdt-star-cbs", "pbe-d3-def2svp", "emt"]


class CountingFS(MemoryFileSystem):
    """fsspec's memory filesystem under ``countmem://``, counting every file it serves."""

    protocol = ("countmem",)
    reads: Counter = Counter()

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("countmem://"):
            path = "memory://" + path.removeprefix("countmem://")
        return MemoryFileSystem._strip_protocol(path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        CountingFS.reads[self._strip_protocol(path)] += 1
        return super().cat_file(path, start, end, **kwargs)


fsspec.register_implementation("countmem", CountingFS, clobber=True)


def _cu_frames() -> list:
    """Periodic Cu cells with EMT energies, forces and stress (one frame without stress)."""
    frames = []
    for i, a in enumerate((3.55, 3.6, 3.65, 3.7)):
        atoms = bulk("Cu", "fcc", a=a, cubic=True)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if i != 2:
            results["stress"] = atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def _rechunked(store: Store, out: Path, structure_chunk: int, atom_chunk: int) -> str:
    """The same store written again with small chunks (many chunks from a small file)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zarr_store, "STRUCTURE_CHUNK", structure_chunk)
        mp.setattr(zarr_store, "ATOM_CHUNK", atom_chunk)
        structures, _ = store.read()
        write_store(out, structures, [store_as_source(store)])
    pack(out, shards=2)
    return str(out)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shared) -> dict[str, str]:
    """ANI-1x sample (CC energies on 6 of 8), 60 acac frames, Cu cells with stress; plus acac
    rechunked to 8 structures / 60 atoms (chunk edges on block edges) and 8 / 50 (not)."""
    root = tmp_path_factory.mktemp("zarr_loader")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MFKIT_HOME", str(root / "home"))
        write(root / "acac.xyz", read(shared / "botnet_acac" / "train_300K.xyz", ":60"))
        write(root / "cu.extxyz", _cu_frames())
        run_cli("convert", shared / "modelforge_testdata" / "ani1_n5.hdf5", "--out", root / "ani")
        run_cli("convert", root / "acac.xyz", "--level", "pbe-d3-def2svp", "--out", root / "acac")
        run_cli("convert", root / "cu.extxyz", "--level", "emt", "--out", root / "cu")
        out = {}
        for name in ("ani", "acac", "cu"):
            pack(root / name, shards=2)
            make_split(Store(root / name), "default", fractions=[0.5, 0.25, 0.25], seed=1)
            out[name] = str(root / name)
        acac = Store(root / "acac")
        out["acac_aligned"] = _rechunked(acac, root / "acac_aligned", 8, 60)
        out["acac_unaligned"] = _rechunked(acac, root / "acac_unaligned", 8, 50)
    return out


@pytest.fixture(scope="module")
def memory_urls(stores):
    """Every store uploaded to fsspec's memory filesystem; their memory:// URLs."""
    fs = fsspec.filesystem("memory")
    bucket = f"/mfkit-test-{uuid.uuid4().hex[:8]}"
    urls = {}
    for name, path in stores.items():
        fs.put(path, f"{bucket}/{name}", recursive=True)
        urls[name] = f"memory://{bucket}/{name}"
    yield urls
    fs.rm(bucket, recursive=True)


def assert_same_frames(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("where", ["memory", "file", "path"])
@pytest.mark.parametrize(("split", "dtype"), [(None, "float64"), ("default:train", "float32")])
def test_frames_equal_the_lmdb_dataset(stores, memory_urls, where, split, dtype):
    names = ["ani", "acac", "cu"]
    urls = {
        "memory": [memory_urls[n] for n in names],
        "file": [Path(stores[n]).as_uri() for n in names],
        "path": [stores[n] for n in names],
    }[where]
    lmdb = FidelityDataset([stores[n] for n in names], LEVELS, split=split, dtype=dtype)
    streamed = ZarrFidelityDataset(urls, LEVELS, split=split, dtype=dtype)
    assert len(streamed) == len(lmdb) and "stress" in streamed.optional_kinds
    for attribute in ("sample_store", "sample_structure", "sample_head", "n_atoms"):
        np.testing.assert_array_equal(getattr(streamed, attribute), getattr(lmdb, attribute))
    nan_energies = 0
    for i in range(len(lmdb)):
        a, b = lmdb[i], streamed[i]
        assert_same_frames(a, b)
        nan_energies += int(torch.isnan(b["total_energy"]).all())
    if split is None:  # acac and cu have no CC level; the stress-less Cu frame has NaN stress
        assert not nan_energies
        absent = sum(not bool(streamed[i]["stress_present"]) for i in range(len(streamed)))
        assert absent == 8 + 6 + 60 + 1


def test_selection_and_errors_name_the_store(stores, memory_urls, tmp_path):
    proc = run_cli(
        "query", stores["ani"], "--has", "ccsdt-star-cbs:energy", "--out", tmp_path / "cc.json"
    )
    assert proc.returncode == 0
    selection = str(tmp_path / "cc.json")
    lmdb = FidelityDataset([stores["ani"]], LEVELS[:2], selection=selection)
    streamed = ZarrFidelityDataset([memory_urls["ani"]], LEVELS[:2], selection=selection)
    assert len(streamed) == len(lmdb) == 12
    for i in range(len(streamed)):
        assert_same_frames(lmdb[i], streamed[i])
    with pytest.raises(StoreError, match="no split named 'nope'"):
        ZarrFidelityDataset([memory_urls["ani"]], LEVELS, split="nope:train")
    with pytest.raises(StoreError, match=r"memory://nowhere/store: not an mfkit store"):
        ZarrFidelityDataset(["memory://nowhere/store"], LEVELS)
    with pytest.raises(StoreError, match="has parts train, val, test, not 'dev'"):
        ZarrFidelityDataset([memory_urls["acac"]], LEVELS, split="default:dev")


def test_blocks_follow_the_chunks(stores):
    n_atoms = np.array([13, 13, 14, 14, 14, 14, 19, 19, 5, 5])
    # structure chunks of 2; a block needs at least 40 atoms: [0,4) 54, [4,8) 66, [8,10) 10
    np.testing.assert_array_equal(store_blocks(n_atoms, 2, 40), [0, 4, 8, 10])
    np.testing.assert_array_equal(store_blocks(n_atoms, 4, 1), [0, 4, 8, 10])
    np.testing.assert_array_equal(store_blocks(n_atoms, 64, 1 << 18), [0, 10])
    dataset = ZarrFidelityDataset([stores["acac_aligned"], stores["ani"]], LEVELS)
    blocks = dataset.sample_block
    acac = dataset.sample_store == 0
    np.testing.assert_array_equal(blocks[acac], dataset.sample_structure[acac] // 8)
    assert set(blocks[~acac].tolist()) == {8}, "one chunk of ani: one block after acac's 8"


def _epoch_order(dataset, seed=0, epoch=0, **kwargs) -> list[list[int]]:
    sampler = FidelityBatchSampler(
        dataset.pools, dataset.n_atoms, blocks=dataset.sample_block, seed=seed, **kwargs
    )
    sampler.set_epoch(epoch)
    return list(sampler)


def test_block_shuffle_is_deterministic_and_visits_every_sample_once(stores):
    dataset = ZarrFidelityDataset([stores["acac_aligned"], stores["ani"]], LEVELS)
    first = _epoch_order(dataset, seed=4, epoch=2, batch_size=5)
    assert first == _epoch_order(dataset, seed=4, epoch=2, batch_size=5)
    assert first != _epoch_order(dataset, seed=4, epoch=3, batch_size=5)
    assert first != _epoch_order(dataset, seed=5, epoch=2, batch_size=5)
    order = np.concatenate(first)
    assert sorted(order.tolist()) == list(range(len(dataset)))
    runs = np.flatnonzero(np.diff(dataset.sample_block[order])) + 1
    assert len(runs) == dataset.sample_block.max(), "each block is one contiguous run"
    block_order = dataset.sample_block[order][np.concatenate([[0], runs])]
    assert block_order.tolist() != sorted(block_order.tolist()), "blocks are shuffled"
    inside = order[dataset.sample_block[order] == 0]
    assert inside.tolist() != sorted(inside.tolist()), "samples are shuffled within a block"
    # ranks get contiguous runs; every rank the same number of atom-budget batches
    ranks = [
        _epoch_order(dataset, rank=r, world_size=2, max_atoms=100, num_workers=2) for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1])
    seen = np.concatenate([np.concatenate(r) for r in ranks])
    assert set(seen.tolist()) == set(range(len(dataset)))
    assert len(seen) - len(dataset) <= max(len(b) for b in ranks[1])
    # mixing still sets the levels' shares
    mixing = LevelMixing(mode="balanced")
    mixed = np.concatenate(
        _epoch_order(dataset, mixing=mixing, epoch_size=90, batch_size=9, seed=1)
    )
    heads = np.bincount(dataset.sample_head[mixed], minlength=len(LEVELS))
    assert heads.tolist() == [30, 30, 30, 0]


def _chunk_fetches(prefix: str) -> dict[str, int]:
    """Chunk files under ``prefix`` fetched since the last clear (metadata files left out)."""
    return {
        path.removeprefix(prefix): n
        for path, n in CountingFS.reads.items()
        if path.startswith(prefix) and "/c/" in path
    }


def _chunk_keys(store: str, arrays: list[str]) -> set[str]:
    """The chunk keys of ``arrays`` (those equal to the fill value are not written, but a
    reader still asks for them)."""
    root = zarr.open_group(f"{store}/data.zarr", mode="r")
    keys = set()
    for path in arrays:
        array = root[path]
        n_chunks = -(-array.shape[0] // array.chunks[0])
        keys |= {f"/data.zarr/{path}/c/{c}" + "/0" * (array.ndim - 1) for c in range(n_chunks)}
    return keys


def _read_in_order(dataset, batches) -> None:
    for batch in batches:
        dataset[batch]


@pytest.mark.parametrize("aligned", [True, False])
def test_each_chunk_is_fetched_once_per_epoch(stores, memory_urls, aligned):
    name = "acac_aligned" if aligned else "acac_unaligned"
    prefix = memory_urls[name].removeprefix("memory://")
    url = "countmem://" + prefix.lstrip("/")
    # the reader's own fetches: no chunk cache (tests/test_s3_store.py counts the cache's)
    dataset = ZarrFidelityDataset([url], ["pbe-d3-def2svp"], chunk_cache_bytes=0)
    wanted = _chunk_keys(
        stores[name],
        [
            "structures/cell",
            "structures/pbc",
            "atoms/numbers",
            "atoms/positions",
            *(
                f"labels/pbe-d3-def2svp/{k}/{p}"
                for k in ("energy", "forces")
                for p in ("values", "present")
            ),
        ],
    )
    for epoch in range(2):
        CountingFS.reads.clear()
        dataset.chunk_reads.clear()
        _read_in_order(dataset, _epoch_order(dataset, epoch=epoch, batch_size=4))
        fetched = _chunk_fetches(prefix)
        assert set(fetched) == wanted, "every chunk the frames need, and no other"
        assert sum(dataset.chunk_reads.values()) == sum(fetched.values())
        twice = {p for p, n in fetched.items() if n > 1}
        if aligned:
            assert not twice, f"chunks fetched more than once: {sorted(twice)}"
        else:  # per-atom chunks holding a structure across a block edge (120 atoms a block)
            assert max(fetched.values()) <= 2
            assert all("/atoms/" in p or "/forces/values/" in p for p in twice)
            edges = {e // 50 for e in range(120, 900, 120) if e % 50}
            assert {int(p.split("/c/")[1].split("/")[0]) for p in twice} <= edges
    # the plain shuffled order, same cache: chunks fetched again and again
    CountingFS.reads.clear()
    plain = FidelityBatchSampler(dataset.pools, dataset.n_atoms, batch_size=4, seed=0)
    fresh = ZarrFidelityDataset([url], ["pbe-d3-def2svp"], chunk_cache_bytes=0)
    _read_in_order(fresh, plain)
    assert sum(_chunk_fetches(prefix).values()) > 2 * len(wanted)


def test_workers_read_their_own_blocks(stores, memory_urls):
    """The sampler interleaves two runs of blocks for a DataLoader's round-robin over two
    workers: each worker (here a pickled copy of the dataset, as a spawned worker gets)
    fetches its own chunks, and the frames through real workers equal the serial ones."""
    url = memory_urls["acac_aligned"]
    dataset = ZarrFidelityDataset([url], ["pbe-d3-def2svp"])
    batches = _epoch_order(dataset, batch_size=4, num_workers=2)
    workers = [pickle.loads(pickle.dumps(dataset)) for _ in range(2)]
    for k, batch in enumerate(batches):
        workers[k % 2][batch]
    reads = [set(w.chunk_reads) for w in workers]
    assert all(max(w.chunk_reads.values()) == 1 for w in workers)
    # blocks are 8 structures: one per-structure chunk, two per-atom chunks (60 atoms each);
    # the two workers share at most the one block where their runs meet
    atoms = ("atoms/", "forces/values")
    shared = {c // 2 if any(a in path for a in atoms) else c for _, path, c in reads[0] & reads[1]}
    assert len(shared) <= 1

    dataset.transforms = frame_transforms(4.0, dataset.type_names)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=FidelityBatchSampler(
            dataset.pools,
            dataset.n_atoms,
            blocks=dataset.sample_block,
            batch_size=4,
            num_workers=2,
        ),
        collate_fn=AtomicDataDict.batched_from_list,
        num_workers=2,
    )
    serial = [AtomicDataDict.batched_from_list(dataset[b]) for b in batches]
    for got, want in zip(loader, serial, strict=True):
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, equal_nan=True)


def test_datamodule_reads_zarr_over_fsspec(stores, memory_urls):
    config = {
        "_target_": "mfdata.loader.FidelityDataModule",
        "seed": 3,
        "stores": [memory_urls["ani"], memory_urls["acac"]],
        "levels": ["wb97x_dz", "ccsd(t)_cbs", "PBE+D3/def2-SVP"],
        "r_max": 4.0,
        "mixing": {"mode": "balanced"},
        "epoch_size": 30,
        "batch_size": 5,
        "reader": "zarr",
    }
    module = instantiate(config)
    assert module.type_names == ["H", "C", "N", "O"]
    module.setup("fit")
    assert isinstance(module.train_dataset[0], ZarrFidelityDataset)
    batches = list(module.train_dataloader())
    assert len(batches) == 6
    heads = torch.cat([b[AtomicDataDict.DATASET_KEY].view(-1) for b in batches])
    assert torch.bincount(heads, minlength=3).tolist() == [10, 10, 10]
    val = module.val_dataloader()[0]
    assert sum(len(b[AtomicDataDict.NUM_NODES_KEY]) for b in val) == len(module.val_dataset[0])
