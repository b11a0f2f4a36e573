"""Readers and exports of issue 13: fairchem's aselmdb, MACE's multi-head extxyz.

aselmdb files are written here with ase-db-backends (the backend fairchem reads and writes), from
a real file in ../shared/data, and converted through the real command line.
"""

from __future__ import annotations

from pathlib import Path

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


def test_aselmdb_export_round_trip(tmp_path, bpa_frames):
    """aselmdb -> store -> ``mfdata export --format aselmdb`` -> read back by ase-db-backends
    as fairchem reads it (data merged into info): identical values."""
    from ase_db_backends.aselmdb import LMDBDatabase

    source = tmp_path / "bpa.aselmdb"
    write_aselmdb(source, bpa_frames)
    run_cli("convert", str(source), "--level", "omol25", "--out", str(tmp_path / "s"))
    out = tmp_path / "export" / "bpa.aselmdb"
    args = ("export", str(tmp_path / "s"), "--level", "omol25", "--format", "aselmdb")
    proc = run_cli(*args, "--out", str(out))
    assert f"wrote {N_FRAMES} structures at wb97mv-def2tzvpd" in proc.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["bpa.aselmdb"]
    db = LMDBDatabase(out, readonly=True)
    rows = [db.get(id=i) for i in db.ids]
    assert len(rows) == N_FRAMES
    for row, atoms in zip(rows, bpa_frames, strict=True):
        info = row.toatoms().info | row.data
        assert row.energy == atoms.get_potential_energy()
        np.testing.assert_array_equal(row.forces, atoms.get_forces())
        np.testing.assert_array_equal(row.positions, atoms.positions)
        np.testing.assert_array_equal(row.numbers, atoms.numbers)
        assert (info["charge"], info["spin"]) == (atoms.info["charge"], atoms.info["spin"])
        assert info["level"] == "wb97mv-def2tzvpd"
    db.close()
    again = run_cli(
        "export", str(tmp_path / "s"), "--format", "aselmdb", "--out", str(out), check=False
    )
    assert again.returncode == 2 and "give --level" in again.stderr


# MACE's conventions, from its documentation and source (ACEsuit/mace): docs/guide/training.rst
# ("Reference energies": isolated atoms carry config_type=IsolatedAtom in their info; "Data
# keys"), docs/guide/multihead_training.rst (a config's ``heads:`` mapping, each head with
# train_file, E0s, energy_key, forces_key) and mace/data/utils.py (DefaultKeys: REF_energy,
# REF_forces, REF_stress, head). eV, eV/Å, as MACE's troubleshooting guide states.


def test_mace_export_of_the_methanol_store(tmp_path):
    import yaml

    from mfdata.resources import example_file

    store = Store(str(example_file("methanol-store")))
    out = tmp_path / "mace"
    proc = run_cli("export", str(store.path), "--format", "mace", "--out", str(out))
    assert "wrote 3 heads" in proc.stdout
    heads = yaml.safe_load((out / "heads.yaml").read_text())["heads"]
    assert sorted(heads) == sorted(store.levels) and len(heads) == 3
    s, _ = store.read()
    start = s.atom_start
    for level, head in heads.items():
        assert head["energy_key"] == "REF_energy" and head["E0s"] == "average"
        has_forces = (level, "forces") in s.labels
        assert ("forces_key" in head) == has_forces
        frames = ase.io.read(head["train_file"], index=":")
        energy = s.labels[(level, "energy")]
        rows = np.flatnonzero(energy.present)
        assert len(frames) == len(rows)
        for atoms, i in zip(frames, rows, strict=True):
            assert atoms.info["head"] == level
            assert atoms.info["REF_energy"] == energy.values[i]
            np.testing.assert_allclose(
                atoms.positions, s.positions[start[i] : start[i + 1]], atol=1e-8
            )
            if has_forces:
                expected = s.labels[(level, "forces")].values[start[i] : start[i + 1]]
                np.testing.assert_allclose(atoms.arrays["REF_forces"], expected, atol=1e-8, rtol=0)


def test_mace_export_isolated_atoms(tmp_path, shared):
    """A level whose manifest has isolated-atom energies: config_type=IsolatedAtom frames in its
    head file, and the same energies as the head's E0s file (by atomic number)."""
    import json

    import yaml

    source = shared / "mace_tutorial_solvent_xtb" / "solvent_train.xyz"
    store = tmp_path / "solvent"
    run_cli(
        "convert",
        str(source),
        "--level",
        "GFN2-xTB",
        "--isolated-atoms",
        "config_type=IsolatedAtom",
        "--pbc",
        "F",
        "--out",
        str(store),
    )
    run_cli("export", str(store), "--format", "mace", "--out", str(tmp_path / "mace"))
    atom_energies = Store(store).manifest.levels["gfn2-xtb"].atom_energies
    assert set(atom_energies) == {"H", "C", "O"}
    head = yaml.safe_load((tmp_path / "mace" / "heads.yaml").read_text())["heads"]["gfn2-xtb"]
    frames = ase.io.read(head["train_file"], index=":")
    isolated = [a for a in frames if a.info.get("config_type") == "IsolatedAtom"]
    assert {a.get_chemical_symbols()[0]: a.info["REF_energy"] for a in isolated} == atom_energies
    assert all(a.info["head"] == "gfn2-xtb" for a in frames)
    e0s = json.loads(Path(head["E0s"]).read_text())
    assert e0s == {"1": atom_energies["H"], "6": atom_energies["C"], "8": atom_energies["O"]}
