"""Readers and exports of issue 13: fairchem's aselmdb, MACE's multi-head extxyz.

aselmdb files are written here with ase-db-backends (the backend fairchem reads and writes), from
a real file in ../shared/data, and converted through the real command line.
"""

from __future__ import annotations

from pathlib import Path

import ase.db
import ase.io
import ase.units
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
    (source_file,) = store.manifest.provenance.inputs
    assert source_file.reader == "aselmdb"
    assert source_file.unread_keys == ["homo_lumo_gap", "num_electrons"]


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


def test_mace_export_takes_a_levels_published_isolated_atoms(tmp_path, shared):
    """An ANI-1x store has no isolated-atom frames; its ωB97X/6-31G(d) head gets the energies the
    level registry publishes (Hartree, in eV), as IsolatedAtom frames and E0s; a level without
    published ones keeps MACE's 'average'."""
    import json

    import yaml

    from mfdata.levels import resolve_level

    store = tmp_path / "ani"
    run_cli("convert", str(shared / "modelforge_testdata" / "ani1_n5.hdf5"), "--out", str(store))
    run_cli("export", str(store), "--format", "mace", "--out", str(tmp_path / "mace"))
    assert not Store(store).manifest.levels["wb97x-631gd"].atom_energies
    published = resolve_level("wb97x-631gd").atom_energies
    expected = {s: published.values[s] * ase.units.Hartree for s in "HCNO"}  # not F, S, Cl
    heads = yaml.safe_load((tmp_path / "mace" / "heads.yaml").read_text())["heads"]
    frames = ase.io.read(heads["wb97x-631gd"]["train_file"], index=":")
    isolated = {
        a.get_chemical_symbols()[0]: a.info["REF_energy"]
        for a in frames
        if a.info.get("config_type") == "IsolatedAtom"
    }
    assert isolated == pytest.approx(expected, rel=1e-12)
    e0s = json.loads(Path(heads["wb97x-631gd"]["E0s"]).read_text())
    assert e0s["8"] == pytest.approx(expected["O"], rel=1e-12) and len(e0s) == len(expected)
    assert heads["wb97x-def2tzvpp"]["E0s"] == "average"


# ---------------------------------------------------------------------------------------------
# Readers of catalogued layouts. Each test writes the smallest file of the published layout and
# converts it with nothing but --catalog NAME.

KCAL_MOL = ase.units.kcal / ase.units.mol


def conformers(n: int, z: list[int], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [-0.4, 1.0, 0.0], [0.3, 0.2, 1.3]])
    xyz = base[: len(z)] + rng.normal(0, 0.02, (n, len(z), 3))
    return xyz, rng.normal(-1000, 1, n), rng.normal(0, 1, (n, len(z), 3))


def write_rmd17(path, xyz, energy, forces, z) -> None:
    """Layout of the revised MD17 release (figshare doi:10.6084/m9.figshare.12672038, readme):
    nuclear_charges, coords (Å), energies (kcal/mol), forces (kcal/mol/Å), old_* arrays."""
    np.savez(
        path,
        nuclear_charges=np.array(z),
        coords=xyz,
        energies=energy,
        forces=forces,
        old_indices=np.arange(len(xyz)),
        old_energies=energy + 1.0,
        old_forces=forces,
    )


def write_t1x(path, reactions) -> None:
    """Layout of Transition1x (gitlab.com/matschreiner/Transition1x, dataloader.py): split ->
    formula -> reaction with atomic_numbers, positions (Å), wB97x_6-31G(d).energy (eV) and
    .forces (eV/Å), and reactant/product/transition_state subgroups in the same layout."""
    import h5py

    with h5py.File(path, "w") as f:
        for split, formula, rxn, z, xyz, energy, forces in reactions:
            group = f.require_group(f"{split}/{formula}/{rxn}")
            group["atomic_numbers"] = np.array(z)
            for target, rows in ((group, slice(1, None)), (group.create_group("reactant"), [0])):
                target["positions"] = xyz[rows]
                target["wB97x_6-31G(d).energy"] = energy[rows]
                target["wB97x_6-31G(d).forces"] = forces[rows]
                target["wB97x_6-31G(d).atomization_energy"] = energy[rows] + 900


def write_qm7x(path, molecules) -> None:
    """Layout of QM7-X (Hoja et al., Sci. Data 8, 43 (2021), Table 2; as openqdc reads it):
    molecule -> conformer with atNUM, atXYZ (Å), ePBE0+MBD (eV, shape (1,)), totFOR (eV/Å),
    vDIP (e·Å, (3,)), hCHG (e, (atoms,)), units as the release's example script lists them
    (zenodo.org/record/4288677), and the other properties (here DIP, the dipole's norm)."""
    import h5py

    with h5py.File(path, "w") as f:
        for molecule, z, xyz, energy, forces in molecules:
            dipoles, charges = qm7x_dipoles_and_charges(xyz)
            for c in range(len(xyz)):
                group = f.create_group(f"{molecule}/Geom-m{molecule}-i1-c{c + 1}-opt")
                group["atNUM"] = np.array(z)
                group["atXYZ"] = xyz[c]
                group["ePBE0+MBD"] = energy[c : c + 1]
                group["totFOR"] = forces[c]
                group["vDIP"] = dipoles[c]
                group["hCHG"] = charges[c]
                group["DIP"] = np.linalg.norm(dipoles[c], keepdims=True)


def qm7x_dipoles_and_charges(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct made-up values per conformer: charges summing to zero, and their dipole."""
    charges = np.sin(np.arange(xyz.shape[0] * xyz.shape[1])).reshape(xyz.shape[:2]) / 3
    charges -= charges.mean(axis=1, keepdims=True)
    return np.einsum("ca,cax->cx", charges, xyz), charges


def read_store(path):
    s, _ = Store(path).read()
    (level,) = {lvl for lvl, _ in s.labels}
    return s, s.labels[(level, "energy")].values, s.labels[(level, "forces")].values, level


def test_rmd17_end_to_end(tmp_path):
    z = [6, 1, 1, 8]
    xyz, energy, forces = conformers(5, z, seed=1)
    write_rmd17(tmp_path / "rmd17_x.npz", xyz, energy, forces, z)
    proc = run_cli(
        "convert", str(tmp_path / "rmd17_x.npz"), "--catalog", "rmd17", "--out", str(tmp_path / "s")
    )
    assert "arrays not read: old_energies, old_forces, old_indices" in proc.stderr
    s, e, f, level = read_store(tmp_path / "s")
    assert level == "pbe-def2svp"
    np.testing.assert_allclose(e, energy * KCAL_MOL, rtol=1e-12)
    np.testing.assert_allclose(f, forces.reshape(-1, 3) * KCAL_MOL, rtol=1e-12)
    np.testing.assert_array_equal(s.positions, xyz.reshape(-1, 3))
    manifest = Store(tmp_path / "s").manifest
    assert manifest.levels[level].labels["energy"].source_units == ["kcal/mol"]
    assert manifest.provenance.inputs[0].unread_keys == [
        "old_energies",
        "old_forces",
        "old_indices",
    ]


def test_transition1x_end_to_end(tmp_path):
    z = [6, 8, 1]
    a, b = conformers(4, z, seed=2), conformers(3, z, seed=3)
    write_t1x(
        tmp_path / "t1x.h5",
        [("train", "CHO", "rxn0001", z, *a), ("test", "CHO", "rxn0002", z, *b)]
        + [("data", "CHO", "rxn0001", z, *a)],  # the all-data group repeats the splits
    )
    run_cli(
        "convert",
        str(tmp_path / "t1x.h5"),
        "--catalog",
        "transition1x",
        "--out",
        str(tmp_path / "s"),
    )
    s, e, f, level = read_store(tmp_path / "s")
    assert level == "wb97x-631gd" and s.n_structures == 7 and s.group_names == ["CHO"]
    order = [1, 2, 3, 0]  # each reaction's path, then its reactant
    np.testing.assert_array_equal(e, np.concatenate([a[1][order], b[1][[1, 2, 0]]]))
    expected = np.concatenate([a[2][order], b[2][[1, 2, 0]]]).reshape(-1, 3)
    np.testing.assert_array_equal(f, expected)


def test_qm7x_end_to_end(tmp_path):
    """Energies, forces, dipoles and Hirshfeld charges stored in their canonical units (the same
    as the release's); the dipole queryable and exported."""
    z1, z2 = [6, 1, 1, 1], [8, 1, 1]
    m1, m2 = conformers(3, z1, seed=4), conformers(2, z2, seed=5)
    write_qm7x(tmp_path / "1000.hdf5", [("1", z1, *m1), ("2", z2, *m2)])
    proc = run_cli(
        "convert", str(tmp_path / "1000.hdf5"), "--catalog", "qm7-x", "--out", str(tmp_path / "s")
    )
    assert "properties not stored: DIP" in proc.stderr
    s, e, f, level = read_store(tmp_path / "s")
    assert level == "pbe0-mbd" and s.group_names == ["1", "2"]
    np.testing.assert_array_equal(e, np.concatenate([m1[1], m2[1]]))
    np.testing.assert_array_equal(f, np.concatenate([m1[2].reshape(-1, 3), m2[2].reshape(-1, 3)]))
    (d1, q1), (d2, q2) = qm7x_dipoles_and_charges(m1[0]), qm7x_dipoles_and_charges(m2[0])
    np.testing.assert_array_equal(s.labels[(level, "dipole")].values, np.concatenate([d1, d2]))
    charges = s.labels[(level, "hirshfeld_charges")].values
    np.testing.assert_array_equal(charges, np.concatenate([q1.ravel(), q2.ravel()]))
    manifest = Store(tmp_path / "s").manifest
    assert manifest.levels[level].labels["dipole"].source_units == ["e*Å"]
    proc = run_cli("query", str(tmp_path / "s"), "--has", "qm7x:hirshfeld_charges")
    assert "5 of 5 structures" in proc.stdout
    run_cli("export", str(tmp_path / "s"), "--level", level, "--out", str(tmp_path / "x.xyz"))
    frames = ase.io.read(tmp_path / "x.xyz", index=":")
    np.testing.assert_allclose([a.calc.results["dipole"] for a in frames], np.concatenate([d1, d2]))
    np.testing.assert_allclose(frames[4].arrays["hirshfeld_charges"], q2[1])


def test_catalogued_readers_bad_input(tmp_path):
    """Truncated, wrong type, NaN: one line naming the file and the record."""
    import h5py

    z = [6, 1, 1, 8]
    xyz, energy, forces = conformers(3, z, seed=6)
    cases = []
    good = tmp_path / "good.npz"
    write_rmd17(good, xyz, energy, forces, z)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-200])
    cases.append((truncated, "rmd17", "not an npz (zip) archive"))
    nan = energy.copy()
    nan[2] = np.nan
    write_rmd17(tmp_path / "nan.npz", xyz, nan, forces, z)
    cases.append((tmp_path / "nan.npz", "rmd17", "record 2: pbe-def2svp energy is NaN"))
    write_t1x(tmp_path / "t1x.h5", [("train", "CH2O", "rxn1", z, xyz, energy, forces)])
    with h5py.File(tmp_path / "t1x.h5", "a") as f:
        del f["train/CH2O/rxn1/wB97x_6-31G(d).energy"]
        f["train/CH2O/rxn1/wB97x_6-31G(d).energy"] = np.array([b"a", b"b"])
    cases.append(
        (
            tmp_path / "t1x.h5",
            "transition1x",
            "train/CH2O/rxn1: wB97x_6-31G(d).energy: values have type",
        )
    )
    nan_forces = forces.copy()
    nan_forces[1, 2, 0] = np.nan
    write_qm7x(tmp_path / "qm7x.hdf5", [("7", z, xyz, energy, nan_forces)])
    cases.append(
        (tmp_path / "qm7x.hdf5", "qm7-x", "7/Geom-m7-i1-c2-opt conformer 0: pbe0-mbd forces is NaN")
    )
    write_qm7x(tmp_path / "qm7x_nodip.hdf5", [("7", z, xyz, energy, forces)])
    with h5py.File(tmp_path / "qm7x_nodip.hdf5", "a") as f:
        del f["7/Geom-m7-i1-c3-opt/vDIP"]
    cases.append(
        (
            tmp_path / "qm7x_nodip.hdf5",
            "qm7-x",
            "7/Geom-m7-i1-c3-opt: has hCHG but the first conformer has vDIP, hCHG",
        )
    )
    for path, catalog, message in cases:
        out = tmp_path / f"store_{path.stem}"
        proc = run_cli("convert", str(path), "--catalog", catalog, "--out", str(out), check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"mfdata: error: {path}: "), proc.stderr
        assert message in proc.stderr, proc.stderr


def test_ani1x_dipoles_and_charges(tmp_path, shared):
    """The ANI-1x release's dipoles (e·Å) and ωB97X/def2-TZVPP MBIS charges (e), units as the
    release's paper states them (Smith et al., Sci. Data 7, 134 (2020), Table 2): stored,
    queryable with --has, and exported."""
    import h5py

    source = shared / "modelforge_testdata" / "ani1_n5.hdf5"
    run_cli("convert", str(source), "--out", str(tmp_path / "s"))
    s, _ = Store(tmp_path / "s").read()
    with h5py.File(source) as f:
        groups = [f[name] for name in f]
        dipole = np.concatenate([g["wb97x_dz.dipole"][()] for g in groups])
        charges = np.concatenate([g["wb97x_tz.mbis_charges"][()].reshape(-1) for g in groups])
    stored = s.labels[("wb97x-631gd", "dipole")]
    np.testing.assert_array_equal(stored.present, ~np.isnan(dipole).all(axis=1))
    np.testing.assert_array_equal(stored.values[stored.present], dipole[stored.present])
    np.testing.assert_array_equal(s.labels[("wb97x-def2tzvpp", "charges")].values, charges)
    for model in ("cm5", "hirshfeld"):  # ωB97X/6-31G(d)'s two charge models, each its own label
        with h5py.File(source) as f:
            want = np.concatenate([f[g][f"wb97x_dz.{model}_charges"][()].reshape(-1) for g in f])
        assert ("wb97x-631gd", "charges") not in s.labels
        np.testing.assert_array_equal(s.labels[("wb97x-631gd", f"{model}_charges")].values, want)
    proc = run_cli("query", str(tmp_path / "s"), "--has", "wb97x_dz:dipole")
    assert f"{int(stored.present.sum())} of {s.n_structures} structures" in proc.stdout
    out = tmp_path / "dz.xyz"
    run_cli("export", str(tmp_path / "s"), "--level", "wb97x_dz", "--out", str(out))
    frames = ase.io.read(out, index=":")
    with_dipole = [a.calc.results["dipole"] for a in frames if "dipole" in a.calc.results]
    np.testing.assert_allclose(with_dipole, dipole[stored.present], rtol=1e-6)
    cm5 = s.labels[("wb97x-631gd", "cm5_charges")]
    want = cm5.values[s.atom_mask(cm5.present)]
    got = np.concatenate([a.arrays["cm5_charges"] for a in frames])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    out = tmp_path / "dz.aselmdb"  # a named charge model goes into each row's data
    run_cli(
        "export",
        str(tmp_path / "s"),
        "--level",
        "wb97x_dz",
        "--format",
        "aselmdb",
        "--out",
        str(out),
    )
    from ase_db_backends.aselmdb import LMDBDatabase

    with LMDBDatabase(out, readonly=True) as db:
        got = np.concatenate([db.get(id=i).data["cm5_charges"] for i in db.ids])
    np.testing.assert_array_equal(got, want)


def test_ani1x_dipoles_and_charges_are_in_the_loaders_frames(tmp_path, shared):
    """Both readers (LMDB shards, Zarr) give every frame ``total_dipole`` (1, 3) and ``charges``
    (atoms, 1) with presence flags: the release's values where the frame's level has them, NaN
    and False where not (some conformers lack ωB97X/6-31G(d) dipoles; that level has no MBIS
    charges); a batch collates them."""
    import h5py
    import torch
    from nequip.data import AtomicDataDict

    from mfdata.loading.lmdb_dataset import FidelityDataset
    from mfdata.loading.zarr_dataset import ZarrFidelityDataset

    source = shared / "modelforge_testdata" / "ani1_n5.hdf5"
    store = tmp_path / "s"
    run_cli("convert", str(source), "--out", str(store))
    run_cli("pack", str(store))
    levels = ["wb97x-631gd", "wb97x-def2tzvpp"]
    with h5py.File(source) as f:
        groups = [f[name] for name in f]
        dipoles = {
            level: np.concatenate([g[f"{key}.dipole"][()] for g in groups])
            for level, key in zip(levels, ("wb97x_dz", "wb97x_tz"), strict=True)
        }
        charges = np.concatenate([g["wb97x_tz.mbis_charges"][()].reshape(-1) for g in groups])
    assert np.isnan(dipoles["wb97x-631gd"]).any(), "the sample lacks some dipoles"
    s, _ = Store(store).read()
    starts = np.concatenate([[0], np.cumsum(s.n_atoms)])
    for dataset in (FidelityDataset([store], levels), ZarrFidelityDataset([store], levels)):
        assert dataset.optional_kinds == ("dipole", "charges")
        frames = [dataset[i] for i in range(len(dataset))]
        for i, frame in enumerate(frames):
            k, level = int(dataset.sample_structure[i]), levels[int(dataset.sample_head[i])]
            want_dipole = dipoles[level][k]
            want_charges = (
                charges[starts[k] : starts[k + 1]]
                if level == "wb97x-def2tzvpp"
                else np.full(s.n_atoms[k], np.nan)
            )
            got_dipole = frame["total_dipole"].numpy()
            np.testing.assert_array_equal(got_dipole, want_dipole.reshape(1, 3))
            np.testing.assert_array_equal(frame["charges"].numpy(), want_charges.reshape(-1, 1))
            assert bool(frame["total_dipole_present"]) == (not np.isnan(want_dipole).all())
            assert bool(frame["charges_present"]) == (level == "wb97x-def2tzvpp")
        batch = AtomicDataDict.batched_from_list(frames[:4])
        assert batch["total_dipole"].shape == (4, 3)
        assert batch["charges"].shape == (int(batch["num_atoms"].sum()), 1)
        assert batch["charges"].dtype == torch.float64


def test_spice_dipoles_and_charges(tmp_path, shared):
    """SPICE's scf_dipole and mbis_charges, in the units their attributes state, where a molecule
    has them (the sample's charged molecule has no MBIS charges)."""
    import h5py

    source = shared / "modelforge_testdata" / "SPICE-1.1.4_n2.hdf5"
    run_cli("convert", str(source), "--out", str(tmp_path / "s"))
    s, _ = Store(tmp_path / "s").read()
    level = "wb97md3bj-def2tzvppd"
    with h5py.File(source) as f:
        groups = [f[name] for name in f]
        assert {g["scf_dipole"].attrs["units"] for g in groups} == {"elementary_charge*bohr"}
        dipole = np.concatenate([g["scf_dipole"][()] for g in groups]) * ase.units.Bohr
        charges = [g["mbis_charges"][()].reshape(-1) for g in groups if "mbis_charges" in g]
    np.testing.assert_allclose(s.labels[(level, "dipole")].values, dipole, rtol=1e-6)
    stored = s.labels[(level, "charges")]
    np.testing.assert_array_equal(s.atom_mask(stored.present).sum(), sum(map(len, charges)))
    np.testing.assert_array_equal(
        stored.values[s.atom_mask(stored.present)], np.concatenate(charges)
    )
