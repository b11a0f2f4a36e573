"""LMDB shards: every value read back equals the Zarr store, readers share environments within a
process and reopen them in DataLoader workers, and verify catches a tampered shard."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from nequip.data import from_ase

from mfdata.records import Structures
from mfdata.schema import LABEL_KINDS
from mfdata.store.lmdb_store import LAYOUT_KEY, LmdbStore, index_key, open_shard, pack, record_crc
from mfdata.store.manifest import StoreError, json_digest
from mfdata.store.store import Store
from tests.conftest import run_cli


def _convert_and_pack(folder: Path, name: str, shards: int, *args, cli: bool = False) -> Store:
    """Convert with the CLI; pack with the CLI or (faster, no subprocess) in process."""
    out = folder / name
    run_cli("convert", *args, "--out", out)
    if cli:
        proc = run_cli("pack", out, "--shards", shards)
        assert f"{shards} LMDB shard(s)" in proc.stdout
    else:
        pack(out, shards=shards)
    store = Store(out)
    assert store.verify() == []
    return store


def _cu_frames() -> list[Atoms]:
    frames = []
    for i, a in enumerate((3.55, 3.6, 3.65, 3.7, 3.62)):
        atoms = bulk("Cu", "fcc", a=a, cubic=True) * (2, 1, 1)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if i != 3:  # one frame without stress: a missing per-structure label
            results["stress"] = atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shared) -> dict[str, Store]:
    """Real files converted with the CLI and packed into several shards."""
    folder = tmp_path_factory.mktemp("lmdb_stores")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MFKIT_HOME", str(folder / "home"))
        write(folder / "cu.extxyz", _cu_frames())
        return {
            "ani": _convert_and_pack(
                folder, "ani", 3, shared / "modelforge_testdata" / "ani1_n5.hdf5", cli=True
            ),
            "bpa": _convert_and_pack(
                folder,
                "bpa",
                4,
                shared / "botnet_3BPA" / "train_300K.xyz",
                "--level",
                "wb97x_dz",
            ),
            "cu": _convert_and_pack(folder, "cu", 2, folder / "cu.extxyz", "--level", "emt"),
        }


def _structure(s: Structures, i: int) -> dict[str, np.ndarray]:
    start = s.atom_start
    atoms = slice(start[i], start[i + 1])
    out = {
        "numbers": s.numbers[atoms],
        "positions": s.positions[atoms],
        "cell": s.cell[i],
        "pbc": s.pbc[i],
        "charge": s.charge[i],
        "multiplicity": s.multiplicity[i],
        "group": s.group[i],
    }
    for (level, kind), label in s.labels.items():
        if label.present[i]:
            rows = atoms if LABEL_KINDS[kind].per == "atom" else i
            out[f"{level}/{kind}"] = label.values[rows]
    return out


@pytest.mark.parametrize("name", ["ani", "bpa", "cu"])
def test_every_value_equals_the_zarr_store(stores, name):
    store = stores[name]
    s, _ = store.read()
    reader = LmdbStore(store.path)
    assert len(reader) == s.n_structures
    assert len(store.manifest.lmdb.shards) > 1
    for i in range(s.n_structures):
        got = reader.record(i)
        want = _structure(s, i)
        assert set(got) == set(want), f"structure {i}"
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"structure {i} {key}")
            assert got[key].dtype == np.asarray(value).dtype or key.endswith(
                ("/energy", "/stress")
            ), key
    with pytest.raises(IndexError):
        reader.record(s.n_structures)


def test_values_equal_the_source_file(stores, shared):
    """ANI HDF5 -> Zarr -> LMDB: positions bit-for-bit, energies converted, NaN labels absent."""
    reader = LmdbStore(stores["ani"].path)
    with h5py.File(shared / "modelforge_testdata" / "ani1_n5.hdf5") as f:
        groups = list(f.values())
        positions = [c for g in groups for c in g["coordinates"][()]]
        numbers = [g["atomic_numbers"][()] for g in groups for _ in g["coordinates"]]
        energy = np.concatenate([g["wb97x_dz.energy"][()] for g in groups]) * units.Hartree
        cc = np.concatenate([g["ccsd(t)_cbs.energy"][()] for g in groups])
    assert len(positions) == len(reader) == 8
    for i in range(8):
        record = reader.record(i)
        np.testing.assert_array_equal(record["positions"], positions[i])
        np.testing.assert_array_equal(record["numbers"], numbers[i])
        assert record["wb97x-631gd/energy"] == energy[i]
        assert ("ccsdt-star-cbs/energy" in record) == bool(np.isfinite(cc[i]))
    frames = read(shared / "botnet_3BPA" / "train_300K.xyz", ":")
    bpa = LmdbStore(stores["bpa"].path)
    for i in (0, 123, 499):
        record = bpa.record(i)
        np.testing.assert_array_equal(record["positions"], frames[i].positions)
        np.testing.assert_array_equal(record["wb97x-631gd/forces"], frames[i].get_forces())
        assert record["wb97x-631gd/energy"] == frames[i].get_potential_energy()


def _nequip_frame(record: dict[str, np.ndarray], level: str) -> dict[str, torch.Tensor]:
    atoms = Atoms(
        numbers=record["numbers"],
        positions=record["positions"],
        cell=record["cell"],
        pbc=record["pbc"],
    )
    results = {}
    for kind in ("energy", "forces", "stress"):
        if f"{level}/{kind}" in record:
            results[kind] = np.array(record[f"{level}/{kind}"])
    atoms.calc = SinglePointCalculator(atoms, **results)
    return from_ase(atoms)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("name", "level"), [("ani", "wb97x-631gd"), ("ani", "ccsdt-star-cbs"), ("cu", "emt")]
)
def test_torch_dict_matches_nequip_from_ase(stores, name, level, dtype):
    reader = LmdbStore(stores[name].path)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # from_ase builds floats in the default dtype
    try:
        for i in range(len(reader)):
            record = reader.record(i)
            got = reader.torch_dict(i, level, dtype=dtype)
            want = _nequip_frame(record, level)
            n = len(record["numbers"])
            assert got["num_atoms"].dtype == torch.int64 and got["num_atoms"].tolist() == [n]
            expected_keys = {"pos", "cell", "pbc", "atomic_numbers", "total_energy", "forces"}
            if name == "cu":
                expected_keys.add("stress")
            else:  # the ANI release's dipoles and MBIS charges
                expected_keys |= {"total_dipole", "charges"}
            assert set(got) - {"num_atoms"} == expected_keys
            for key, tensor in got.items():
                if key == "num_atoms":
                    continue
                extra = {"total_dipole": "dipole", "charges": "charges"}  # not in from_ase
                if key in extra and f"{level}/{extra[key]}" in record:
                    stored = np.asarray(record[f"{level}/{extra[key]}"]).reshape(tensor.shape)
                    assert tensor.dtype == dtype
                    np.testing.assert_array_equal(
                        tensor.numpy(), stored.astype(tensor.numpy().dtype)
                    )
                elif key in want:
                    assert tensor.dtype == want[key].dtype, key
                    assert tensor.shape == want[key].shape, key
                    torch.testing.assert_close(tensor, want[key], rtol=0, atol=0)
                else:  # a label this structure lacks at this level: NaN of the right shape
                    assert tensor.dtype == dtype and torch.isnan(tensor).all(), (i, key)
                    shapes = {
                        "total_energy": (1, 1),
                        "forces": (n, 3),
                        "stress": (1, 3, 3),
                        "total_dipole": (1, 3),
                        "charges": (n, 1),
                    }
                    assert tuple(tensor.shape) == shapes[key]
    finally:
        torch.set_default_dtype(previous)
    frame = reader.torch_dict(0, level, dtype=dtype)
    frame["pbc"][0, 0], frame["pos"][0, 0] = True, 1e6  # tensors are the caller's own copies
    again = reader.torch_dict(0, level, dtype=dtype)
    assert again["pbc"][0, 0] == (name == "cu") and again["pos"][0, 0] != 1e6
    assert torch.isnan(reader.torch_dict(3, "emt")["stress"]).all() if name == "cu" else True
    with pytest.raises(StoreError, match="no labels at level"):
        reader.torch_dict(0, "pbe-d3-def2svp")


def test_binary_layout_as_documented(stores):
    """Decode one record by hand, following the module docstring, not the reader."""
    store = stores["ani"]
    s, _ = store.read()
    path = store.path / store.manifest.lmdb.shards[-1]
    _, txn = open_shard(path)  # LMDB allows one handle per file and process: share the reader's
    layout = json.loads(bytes(txn.get(LAYOUT_KEY)))
    i = layout["stop"] - 1
    value = bytes(txn.get(index_key(i)))
    assert layout["format"] == "mfkit-lmdb" and layout["layout_version"] == 2
    assert layout["n_shards"] == 3 and layout["stop"] == 8
    n, group, charge, multiplicity, pbc = struct.unpack_from("<IihhB", value)
    assert (n, group, charge, multiplicity, pbc) == (
        s.n_atoms[i],
        s.group[i],
        s.charge[i],
        s.multiplicity[i],
        0,
    )
    mask = int.from_bytes(value[16 : layout["header_bytes"]], "little")
    offset = layout["header_bytes"]
    np.testing.assert_array_equal(np.frombuffer(value, "<f8", 9, offset), s.cell[i].ravel())
    offset += 72
    for j, column in enumerate(layout["labels"]):
        label = s.labels[(column["level"], column["label"])]
        assert bool(mask >> j & 1) == bool(label.present[i])
        if column["per"] == "structure" and label.present[i]:
            size = int(np.prod(column["shape"]))
            stored = np.frombuffer(value, "<f8", size, offset)
            np.testing.assert_array_equal(stored, np.ravel(label.values[i]))
            offset += 8 * size
    atoms = slice(s.atom_start[i], s.atom_start[i + 1])
    names = {c["name"]: c for c in layout["labels"]}
    for name in layout["atom_order"]:
        if name == "positions":
            dtype, want = layout["positions"]["dtype"], s.positions[atoms]
        else:
            dtype = names[name]["dtype"]
            want = s.labels[tuple(name.split("/"))].values[atoms]
        assert offset % np.dtype(dtype).itemsize == 0, "buffers are naturally aligned"
        np.testing.assert_array_equal(np.frombuffer(value, dtype, want.size, offset), want.ravel())
        offset += want.size * np.dtype(dtype).itemsize
    np.testing.assert_array_equal(np.frombuffer(value, np.uint8, n, offset), s.numbers[atoms])
    offset += n
    assert zlib.crc32(value[:offset], i) == int.from_bytes(value[offset:], "little")
    assert offset + 4 == len(value)
    assert b"pickle" not in value and not value.startswith(b"\x80")


def test_two_readers_in_one_process(stores):
    first, second = LmdbStore(stores["bpa"].path), LmdbStore(stores["bpa"].path)
    a, b = first.record(42), second.record(42)
    np.testing.assert_array_equal(a["positions"], b["positions"])
    # the store's own verify opens the same shards again in this process
    assert stores["bpa"].verify() == []
    np.testing.assert_array_equal(first.record(499)["numbers"], second.record(499)["numbers"])


class _Frames(torch.utils.data.Dataset):
    """A minimal dataset over a packed store, as a loader would wrap it."""

    def __init__(self, path: Path, level: str):
        self.reader = LmdbStore(path)
        self.level = level

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> tuple[int, dict[str, torch.Tensor]]:
        return i, self.reader.torch_dict(i, self.level)


def test_dataloader_with_two_workers(stores):
    dataset = _Frames(stores["bpa"].path, "wb97x-631gd")
    parent = dataset[7][1]  # the parent opens the shards before the workers fork
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=True, num_workers=2, persistent_workers=False
    )
    seen = {}
    for i, frame in loader:
        seen[int(i)] = frame
    assert sorted(seen) == list(range(500))
    torch.testing.assert_close(seen[7]["pos"], parent["pos"], rtol=0, atol=0)
    torch.testing.assert_close(seen[7]["forces"], parent["forces"], rtol=0, atol=0)
    assert all(frame["pos"].dtype == torch.float64 for frame in seen.values())


def test_repack_needs_force(tmp_path, shared):
    store = _convert_and_pack(tmp_path, "again", 2, shared / "modelforge_testdata" / "ani1_n5.hdf5")
    before = LmdbStore(store.path).record(5)["positions"].copy()
    proc = run_cli("pack", store.path, check=False)
    assert proc.returncode == 2
    assert "already packed" in proc.stderr and "--force" in proc.stderr
    pack(store.path, shards=3, force=True)
    shards = Store(store.path).manifest.lmdb.shards
    assert len(shards) == 3
    (packing,) = (store.path / "lmdb").iterdir()  # the old packing is gone
    assert sorted(p.name for p in packing.iterdir()) == [
        "shard-00000.lmdb",
        "shard-00001.lmdb",
        "shard-00002.lmdb",
    ]
    assert [store.path / s for s in shards] == sorted(packing.iterdir())
    assert not list(store.path.glob(".lmdb*")), "no temporary directory is left behind"
    np.testing.assert_array_equal(LmdbStore(store.path).record(5)["positions"], before)
    assert Store(store.path).verify() == []


def _rewrite(path: Path, key: bytes, value: bytes, layout_checksum: str | None = None) -> None:
    """Put ``value`` at ``key``; with ``layout_checksum``, also record it and re-sign the layout
    (what a careful forger would do)."""
    env = lmdb.open(str(path), subdir=False, lock=False)
    try:
        with env.begin(write=True) as txn:
            txn.put(key, value)
            if layout_checksum is not None:
                layout = json.loads(txn.get(LAYOUT_KEY))
                layout["checksum"]["value"] = layout_checksum
                del layout["layout_checksum"]
                layout["layout_checksum"] = json_digest(layout)
                txn.put(LAYOUT_KEY, json.dumps(layout).encode())
    finally:
        env.close()


def _records(shard: Path) -> tuple[dict, list[tuple[bytes, bytearray]]]:
    env = lmdb.open(str(shard), readonly=True, lock=False, subdir=False)
    try:
        with env.begin() as txn:
            layout = json.loads(txn.get(LAYOUT_KEY))
            records = [(bytes(k), bytearray(v)) for k, v in txn.cursor() if len(k) == 8]
    finally:
        env.close()
    return layout, records


def test_verify_detects_a_tampered_shard(tmp_path, shared):
    out = tmp_path / "tamper"
    run_cli("convert", shared / "modelforge_testdata" / "ani1_n5.hdf5", "--out", out)
    with pytest.raises(StoreError, match="not packed"):
        LmdbStore(out)
    copy = tmp_path / "tamper2"
    shutil.copytree(out, copy)
    pack(out, shards=3)
    pack(copy, shards=3)

    shard = out / Store(out).manifest.lmdb.shards[1]
    layout, records = _records(shard)
    key, value = records[0]
    assert key == index_key(layout["start"])
    value[-30] ^= 0x01  # one bit of one coordinate
    _rewrite(shard, key, bytes(value))
    proc = run_cli("verify", out, check=False)
    assert proc.returncode != 0
    assert "shard-00001.lmdb: record checksum mismatch" in proc.stderr

    # a shard edited together with its checksum still disagrees with the Zarr arrays
    from mfdata.store.lmdb_store import _Digest

    shard = copy / Store(copy).manifest.lmdb.shards[1]
    _, records = _records(shard)
    key, value = records[0]
    value[-30] ^= 0x01
    value[-4:] = record_crc(value[:-4], int.from_bytes(key, "big")).to_bytes(4, "little")
    digest = _Digest()
    for _, v in records:
        digest.update(bytes(v), [len(v)])
    _rewrite(shard, records[0][0], bytes(records[0][1]), digest.hexdigest())
    problems = Store(copy).verify()
    assert problems and "shard-00001.lmdb: records do not match the store's arrays" in problems[0]
