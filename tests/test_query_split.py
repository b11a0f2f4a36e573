"""Queries, selections, splits, the local registry and merging, on real stores via the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.io import read, write

from mfdata.query import load_selection, selected_indices
from mfdata.split import read_split, split_indices
from mfdata.store.manifest import StoreError
from mfdata.store.store import Store
from tests.conftest import run_cli


@pytest.fixture
def ani1(tmp_path, shared):
    out = tmp_path / "ani1"
    run_cli("convert", shared / "modelforge_testdata" / "ani1_n5.hdf5", "--out", out)
    return out


def test_query_counts_on_ani1(ani1):
    assert run_cli("query", ani1, "--has", "ccsd(t)_cbs:energy", "--count").stdout.strip() == "6"
    both = run_cli(
        "query", ani1, "--has", "wb97x_dz:forces", "--has", "ccsd(t)_cbs:energy", "--count"
    )
    assert both.stdout.strip() == "6"
    assert run_cli("query", ani1, "--has", "ccsd(t)_cbs:forces", "--count").stdout.strip() == "0"
    small = run_cli("query", ani1, "--max-atoms", "13", "--elements", "H,C,N,O", "--count")
    s, _ = Store(ani1).read()
    assert int(small.stdout) == int((s.n_atoms <= 13).sum())
    assert run_cli("query", ani1, "--elements", "H,C,N", "--count").stdout.strip() == "0"


def test_unknown_level_lists_the_store_levels(ani1):
    proc = run_cli("query", ani1, "--has", "gfn2-xtb:energy", "--count", check=False)
    assert proc.returncode == 2
    assert "this data has" in proc.stderr and "wb97x-631gd" in proc.stderr


def test_selection_records_checksums_and_survives_splits(ani1, tmp_path):
    sel = tmp_path / "sel.json"
    run_cli("query", ani1, "--has", "ccsd(t)_cbs:energy", "--out", sel)
    selection = load_selection(sel)
    assert selection.query.has == [("ccsdt-star-cbs", "energy")]
    store = Store(ani1)
    chosen = selected_indices(selection, store)
    s, _ = store.read()
    np.testing.assert_array_equal(
        chosen, np.flatnonzero(s.labels[("ccsdt-star-cbs", "energy")].present)
    )
    run_cli("split", ani1, "--name", "s", "--fractions", "0.5,0.5")
    np.testing.assert_array_equal(selected_indices(selection, Store(ani1)), chosen)


def test_selection_on_another_store_is_refused(ani1, tmp_path, shared):
    sel = tmp_path / "sel.json"
    run_cli("query", ani1, "--has", "wb97x_dz:energy", "--out", sel)
    other = tmp_path / "spice"
    run_cli("convert", shared / "modelforge_testdata" / "SPICE-1.1.4_n2.hdf5", "--out", other)
    with pytest.raises(StoreError, match="not on"):
        selected_indices(load_selection(sel), Store(other))


def _water(tmp_path, shared, name="water"):
    out = tmp_path / name
    run_cli(
        "convert",
        shared / "water_dimers_mp2_ccsdt" / "pe_c-mp2_ad_nf_n12_cp_1-800.xyz",
        "--map",
        "Emp2=mp2-augccpvdz:energy",
        "--units",
        "Emp2=eV",
        "--out",
        out,
    )
    return out


def test_split_is_deterministic_and_saved(tmp_path, shared):
    store_path = _water(tmp_path, shared)
    checksum = Store(store_path).manifest.checksum
    run_cli("split", store_path, "--name", "a", "--seed", "7", "--subsets", "50,100,200")
    run_cli("split", store_path, "--name", "b", "--seed", "7")
    run_cli("split", store_path, "--name", "c", "--seed", "8")
    store = Store(store_path)
    assert store.manifest.splits == ["a", "b", "c"]
    assert store.manifest.checksum == checksum
    assert run_cli("verify", store_path).returncode == 0
    info, part_a, order = read_split(store, "a")
    _, part_b, _ = read_split(store, "b")
    _, part_c, _ = read_split(store, "c")
    np.testing.assert_array_equal(part_a, part_b)
    assert not np.array_equal(part_a, part_c)
    assert info.sizes == {"train": 640, "val": 80, "test": 80}
    sub50, sub100 = split_indices(store, "a", "train", 50), split_indices(store, "a", "train", 100)
    assert len(sub50) == 50 and set(sub50) <= set(sub100)
    assert set(sub100) <= set(split_indices(store, "a", "train"))
    assert "a" in run_cli("info", store_path).stdout


def test_split_by_formula_keeps_formulas_apart(tmp_path, shared):
    out = tmp_path / "ani2x"
    run_cli("convert", shared / "modelforge_testdata" / "ani2x_minimal.hdf5", "--out", out)
    run_cli("split", out, "--name", "f", "--by", "formula", "--seed", "1")
    store = Store(out)
    _, part, _ = read_split(store, "f")
    s, _ = store.read()
    formulas = np.array(s.group_names)[s.group]  # the ANI-2x reader groups by formula
    for p in range(3):
        others = set(formulas[part != p])
        assert not set(formulas[part == p]) & others
    assert all(np.bincount(part) > 0)


def test_bad_split_requests_write_nothing(tmp_path, shared):
    store_path = _water(tmp_path, shared)
    for args, message in [
        (["--fractions", "0.5,0.4"], "sum to 1"),
        (["--fractions", "0.999,0.0005,0.0005"], "empty"),
        (["--subsets", "5000"], "larger than the training part"),
    ]:
        proc = run_cli("split", store_path, "--name", "x", *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr
    assert Store(store_path).manifest.splits == []
    assert not (store_path / "splits" / "x").exists()


def test_registry_names_work_as_stores(tmp_path, shared):
    _water(tmp_path, shared, name="dimers")
    listing = json.loads(run_cli("list", "--json").stdout)
    assert listing["dimers"]["n_structures"] == 800
    assert json.loads(run_cli("info", "dimers", "--json").stdout)["n_structures"] == 800
    assert run_cli("query", "dimers", "--count").stdout.strip() == "800"
    proc = run_cli("info", "no-such-store", check=False)
    assert proc.returncode == 2 and "dimers" in proc.stderr


def test_merge_joins_levels_by_geometry(tmp_path, shared):
    path = shared / "water_dimers_mp2_ccsdt" / "pe_c-mp2_ad_nf_n12_cp_1-800.xyz"
    frames = read(path, ":300")
    write(tmp_path / "a.xyz", frames[:200])
    write(tmp_path / "b.xyz", frames[100:])
    run_cli(
        "convert",
        tmp_path / "a.xyz",
        "--map",
        "Emp2=mp2-augccpvdz:energy",
        "--units",
        "Emp2=eV",
        "--out",
        tmp_path / "mp2",
    )
    run_cli(
        "convert",
        tmp_path / "b.xyz",
        "--map",
        "Eccsdt2=ccsdt-augccpvdz:energy",
        "--units",
        "Eccsdt2=eV",
        "--out",
        tmp_path / "cc",
    )
    run_cli("merge", tmp_path / "mp2", tmp_path / "cc", "--out", tmp_path / "both")
    info = json.loads(run_cli("info", tmp_path / "both", "--json").stdout)
    assert info["n_structures"] == 300
    assert info["levels"] == {"mp2-augccpvdz": {"energy": 200}, "ccsdt-augccpvdz": {"energy": 200}}
    count = run_cli(
        "query",
        tmp_path / "both",
        "--has",
        "mp2-augccpvdz:energy",
        "--has",
        "ccsdt-augccpvdz:energy",
        "--count",
    )
    assert count.stdout.strip() == "100"


def test_merge_conflict_is_reported(tmp_path, shared):
    path = shared / "water_dimers_mp2_ccsdt" / "pe_c-mp2_ad_nf_n12_cp_1-800.xyz"
    frames = read(path, ":20")
    write(tmp_path / "a.xyz", frames)
    frames[5].info["Emp2"] += 1.0
    write(tmp_path / "b.xyz", frames)
    for name in ("a", "b"):
        run_cli(
            "convert",
            tmp_path / f"{name}.xyz",
            "--map",
            "Emp2=mp2-augccpvdz:energy",
            "--units",
            "Emp2=eV",
            "--out",
            tmp_path / f"s{name}",
        )
    proc = run_cli("merge", tmp_path / "sa", tmp_path / "sb", "--out", tmp_path / "m", check=False)
    assert proc.returncode == 2 and "conflicts" in proc.stderr and "structure 5" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_query_by_source_file(tmp_path, shared):
    folder = shared / "botnet_acac"
    out = tmp_path / "acac"
    run_cli(
        "convert",
        folder / "test_H_transfer.xyz",
        folder / "test_dihedral.xyz",
        "--level",
        "pbe-d3-def2svp",
        "--out",
        out,
    )
    assert run_cli("query", out, "--source", "test_H_transfer.xyz", "--count").stdout == "15\n"
    assert run_cli("query", out, "--source", "test_dihedral.xyz", "--count").stdout == "45\n"
    assert run_cli("query", out, "--source", "acac", "--count").stdout == "60\n"
    proc = run_cli("query", out, "--source", "nope.xyz", "--count", check=False)
    assert proc.returncode == 2 and "test_dihedral.xyz" in proc.stderr
