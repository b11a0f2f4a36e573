"""Datasets over packed stores and the DataModule, with real stores and a real nequip model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from nequip.data import AtomicDataDict

from mfdata.loading.batches import pack_batch, unpack_batch
from mfdata.loading.datamodule import FidelityDataLoader, FidelityDataModule
from mfdata.loading.lmdb_dataset import FidelityDataset
from mfdata.loading.samples import frame_transforms
from mfdata.sampler import FidelityBatchSampler
from mfdata.store.store import Store
from tests.conftest import run_cli

LEVELS = ["wb97x-631gd", "ccsdt-star-cbs", "pbe-d3-def2svp"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shared):
    """ANI-1x sample (two levels, CC energies on 6 of 8) and 60 acac frames (forces, PBE+D3)."""
    from ase.io import read, write

    root = tmp_path_factory.mktemp("loader")
    ani, acac = root / "ani", root / "acac"
    with pytest.MonkeyPatch.context() as mp:  # store names in a registry of this module's own
        mp.setenv("MFKIT_HOME", str(root / "home"))
        run_cli("convert", shared / "modelforge_testdata" / "ani1_n5.hdf5", "--out", ani)
        write(root / "acac.xyz", read(shared / "botnet_acac" / "train_300K.xyz", ":60"))
        run_cli("convert", root / "acac.xyz", "--level", "pbe-d3-def2svp", "--out", acac)
        for store in (ani, acac):
            run_cli("pack", store, "--shards", "2")
            run_cli(
                "split", store, "--name", "default", "--fractions", "0.5,0.25,0.25", "--seed", "1"
            )
    return [str(ani), str(acac)]


def test_samples_are_structure_level_pairs(stores):
    dataset = FidelityDataset(stores, LEVELS)
    ani, _ = Store(stores[0]).read()
    assert dataset.type_names == ["H", "C", "N", "O"]
    sizes = {level: len(ids) for level, ids in dataset.pools.items()}
    assert sizes == {"wb97x-631gd": 8, "ccsdt-star-cbs": 6, "pbe-d3-def2svp": 60}
    keys = None
    for i in range(len(dataset)):
        frame = dataset[i]
        keys = keys or set(frame)
        assert set(frame) == keys, "every frame has the same keys"
        head = int(frame[AtomicDataDict.DATASET_KEY])
        assert frame[AtomicDataDict.DATASET_KEY].shape == (1, 1)
        has_energy = bool(frame["total_energy_present"])
        has_forces = bool(frame["forces_present"])
        assert has_energy == bool(torch.isfinite(frame["total_energy"]).all())
        assert has_forces == bool(torch.isfinite(frame["forces"]).all())
        if LEVELS[head] == "ccsdt-star-cbs":
            assert has_energy and not has_forces  # CC energies only: forces NaN, masked
            structure = int(dataset.sample_structure[i])
            expected = ani.labels[("ccsdt-star-cbs", "energy")].values[structure]
            assert float(frame["total_energy"]) == pytest.approx(expected, rel=1e-12)
        symbols = np.array(dataset.type_names)[frame[AtomicDataDict.ATOM_TYPE_KEY].numpy()]
        z = frame[AtomicDataDict.ATOMIC_NUMBERS_KEY].numpy()
        assert [{1: "H", 6: "C", 7: "N", 8: "O"}[int(n)] for n in z] == symbols.tolist()


def test_split_parts_and_unknown_split(stores):
    train = FidelityDataset(stores, LEVELS, split="default:train")
    test = FidelityDataset(stores, LEVELS, split="default:test")

    def pairs(d: FidelityDataset) -> set:
        return set(zip(d.sample_store.tolist(), d.sample_structure.tolist(), strict=True))

    assert not pairs(train) & pairs(test)
    with pytest.raises(Exception, match="no split named"):
        FidelityDataset(stores, LEVELS, split="nope:train")


def test_batches_through_workers_and_a_nequip_model(stores):
    types = ["H", "C", "N", "O"]
    dataset = FidelityDataset(stores, LEVELS, transforms=frame_transforms(4.0, types))
    sampler = FidelityBatchSampler(dataset.pools, dataset.n_atoms, max_atoms=120, seed=0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=AtomicDataDict.batched_from_list, num_workers=2
    )
    val = FidelityDataset(
        stores, LEVELS, split="default:val", transforms=frame_transforms(4.0, types)
    )
    seen = 0
    for batch in loader:
        assert int(batch[AtomicDataDict.NUM_NODES_KEY].sum()) <= 120
        assert batch[AtomicDataDict.EDGE_INDEX_KEY].shape[0] == 2
        seen += len(batch[AtomicDataDict.NUM_NODES_KEY])
    assert seen == len(dataset)
    assert len(val[0][AtomicDataDict.POSITIONS_KEY]) > 0, "a second dataset on the same store"

    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    set_global_state()
    model = NequIPGNNModel(
        seed=0,
        model_dtype="float64",
        type_names=dataset.type_names,
        r_max=4.0,
        num_layers=1,
        l_max=1,
        num_features=8,
        radial_mlp_depth=1,
        radial_mlp_width=8,
        avg_num_neighbors=10.0,
        per_type_energy_shifts=dict.fromkeys("HCNO", 0.0),
        per_type_energy_scales=dict.fromkeys("HCNO", 1.0),
    )
    out = model(next(iter(loader)))
    assert torch.isfinite(out[AtomicDataDict.TOTAL_ENERGY_KEY]).all()
    assert torch.isfinite(out[AtomicDataDict.FORCE_KEY]).all()


def test_datamodule_from_a_nequip_style_config(stores):
    config = {
        "_target_": "mfdata.loader.FidelityDataModule",
        "seed": 3,
        "stores": stores,
        "levels": ["wb97x_dz", "ccsd(t)_cbs", "PBE+D3/def2-SVP"],
        "r_max": 4.0,
        "mixing": {"mode": "balanced"},
        "epoch_size": 30,
        "batch_size": 5,
    }
    module = instantiate(config)
    assert module.levels == LEVELS
    module.setup("fit")
    batches = list(module.train_dataloader())
    assert len(batches) == 6
    heads = torch.cat([b[AtomicDataDict.DATASET_KEY].view(-1) for b in batches])
    assert torch.bincount(heads, minlength=3).tolist() == [10, 10, 10]
    val = module.val_dataloader()[0]
    assert sum(len(b[AtomicDataDict.NUM_NODES_KEY]) for b in val) == len(module.val_dataset[0])
    state = module.state_dict()
    assert state["mfkit_samplers"]["train"]["epoch"] == 0
    assert isinstance(module, FidelityDataModule)


def test_packed_batches_from_workers_equal_plain_ones(stores):
    """Workers send a batch as one buffer; what comes out is the plain collated batch, and a
    nequip model takes it (forces need grad on ``pos``, a view into the buffer)."""
    types = ["H", "C", "N", "O"]
    dataset = FidelityDataset(stores, LEVELS, transforms=frame_transforms(4.0, types))
    sampler = FidelityBatchSampler(dataset.pools, dataset.n_atoms, batch_size=6, seed=2)
    plain = [AtomicDataDict.batched_from_list(dataset[b]) for b in sampler]
    packed = list(FidelityDataLoader(dataset, sampler, num_workers=2))
    assert len(packed) == len(plain)
    for got, want in zip(packed, plain, strict=True):
        assert list(got) == list(want)
        for key in want:
            assert got[key].dtype == want[key].dtype, key
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, equal_nan=True)
    unpacked = unpack_batch(pack_batch(dataset[[0, 1, 2]]))
    assert unpacked["forces_present"].dtype == torch.bool

    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    set_global_state()
    model = NequIPGNNModel(
        seed=0,
        model_dtype="float64",
        type_names=types,
        r_max=4.0,
        num_layers=1,
        l_max=1,
        num_features=8,
        radial_mlp_depth=1,
        radial_mlp_width=8,
        avg_num_neighbors=10.0,
        per_type_energy_shifts=dict.fromkeys("HCNO", 0.0),
        per_type_energy_scales=dict.fromkeys("HCNO", 1.0),
    )
    out = model(packed[0])
    expected = model(plain[0])
    torch.testing.assert_close(out[AtomicDataDict.FORCE_KEY], expected[AtomicDataDict.FORCE_KEY])
