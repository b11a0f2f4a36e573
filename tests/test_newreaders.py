"""Readers and exports of issue 13: fairchem's aselmdb, MACE's multi-head extxyz.

aselmdb files are written here with ase-db-backends (the backend fairchem reads and writes), from
a real file in ../shared/data, and converted through the real command line.
"""

from __future__ import annotations

import ase.db
import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from mfdata.store.store import Store
from tests.conftest import run_cli

N_FRAMES = 12


@pytest.fixture(scope="module")
def bpa_frames(shared):
    """The first frames of 3BPA (ωB97X/6-31G(d), eV and eV/Å), with charges and multiplicities
    set as OMol25 sets them (row data ``charge`` and ``spin``) and a ``data_id`` per row."""
    frames = ase.io.read(shared / "botnet_3BPA" / "train_300K.xyz", index=f":{N_FRAMES}")
    for i, atoms in enumerate(frames):
        atoms.info = {"charge": i % 3 - 1, "spin": 1 + i % 2, "data_id": f"bpa-{i}"}
    return frames


def write_aselmdb(path, frames, extra: dict | None = None) -> None:
    """Rows as fairchem writes them: calculator results, and ``info`` as the row's data."""
    with ase.db.connect(str(path), type="aselmdb") as db:
        for atoms in frames:
            data = {**atoms.info, **(extra or {})}
            copy = atoms.copy()
            copy.info = {}
            copy.calc = SinglePointCalculator(copy, **atoms.calc.results)
            db.write(copy, data=data)


def test_aselmdb_converts_with_the_level_only(tmp_path, bpa_frames):
    source = tmp_path / "bpa.aselmdb"
    write_aselmdb(source, bpa_frames, extra={"num_electrons": 98, "homo_lumo_gap": 0.3})
    proc = run_cli("convert", str(source), "--level", "wb97x_dz", "--out", str(tmp_path / "s"))
    assert "numeric keys not stored" in proc.stderr
    assert "homo_lumo_gap (shape ())" in proc.stderr and "num_electrons" in proc.stderr
    store = Store(tmp_path / "s")
    s, _ = store.read()
    assert s.n_structures == N_FRAMES
    energy = s.labels[("wb97x-631gd", "energy")].values
    forces = s.labels[("wb97x-631gd", "forces")].values
    np.testing.assert_array_equal(energy, [a.get_potential_energy() for a in bpa_frames])
    np.testing.assert_array_equal(forces, np.concatenate([a.get_forces() for a in bpa_frames]))
    np.testing.assert_array_equal(s.positions, np.concatenate([a.positions for a in bpa_frames]))
    np.testing.assert_array_equal(s.charge, [a.info["charge"] for a in bpa_frames])
    np.testing.assert_array_equal(s.multiplicity, [a.info["spin"] for a in bpa_frames])
    assert store.manifest.provenance.inputs[0].reader == "aselmdb"


def test_aselmdb_ids_and_catalog(tmp_path, bpa_frames):
    """OMol25's catalog entry names the reader and the level: no other flag. ``data_id`` is the
    source's id of each structure (linking by id works without --link-by's key)."""
    from mfdata.readers import read_source

    source = tmp_path / "omol.aselmdb"
    write_aselmdb(source, bpa_frames)
    read = read_source(str(source), level="omol25")
    assert list(read.ids) == [f"bpa-{i}" for i in range(N_FRAMES)]
    run_cli("convert", str(source), "--catalog", "omol25", "--out", str(tmp_path / "s"))
    assert Store(tmp_path / "s").levels == ["wb97mv-def2tzvpd"]


def test_aselmdb_glob_of_files(tmp_path, bpa_frames):
    """Many small files (a shard glob): one source each, in order, all converted."""
    paths = []
    for k in range(6):
        path = tmp_path / f"data.{k:04d}.aselmdb"
        write_aselmdb(path, bpa_frames[2 * k : 2 * k + 2])
        paths.append(str(path))
    run_cli("convert", *paths, "--level", "omol25", "--out", str(tmp_path / "s"))
    s, _ = Store(tmp_path / "s").read()
    assert list(s.source) == [k for k in range(6) for _ in range(2)]
    expected = [a.get_potential_energy() for a in bpa_frames]
    np.testing.assert_array_equal(s.labels[("wb97mv-def2tzvpd", "energy")].values, expected)


def test_aselmdb_bad_input(tmp_path, bpa_frames):
    """Truncated, not LMDB, wrong type, NaN: one line naming the file and the record."""
    good = tmp_path / "good.aselmdb"
    write_aselmdb(good, bpa_frames[:3])
    data = good.read_bytes()
    cases = {}
    truncated = tmp_path / "truncated.aselmdb"
    truncated.write_bytes(data[: len(data) // 2])
    cases[truncated] = "truncated"
    text = tmp_path / "text.aselmdb"
    text.write_text("not a database\n" * 1000)
    cases[text] = "not an LMDB"
    frames = [a.copy() for a in bpa_frames[:3]]
    for a, b in zip(frames, bpa_frames[:3], strict=True):
        a.calc = SinglePointCalculator(a, **b.calc.results)
    frames[1].info["spin"] = "doublet"
    wrong = tmp_path / "wrong_type.aselmdb"
    write_aselmdb(wrong, frames)
    cases[wrong] = "record 1: spin is 'doublet', not an integer"
    frames[1].info["spin"] = 2
    frames[2].calc.results["energy"] = float("nan")
    nan = tmp_path / "nan.aselmdb"
    write_aselmdb(nan, frames)
    cases[nan] = "record 2: wb97mv-def2tzvpd energy is NaN or inf but not marked missing"
    for path, message in cases.items():
        out = tmp_path / f"store_{path.stem}"
        proc = run_cli("convert", str(path), "--level", "omol25", "--out", str(out), check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"mfdata: error: {path}: "), proc.stderr
        assert message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
