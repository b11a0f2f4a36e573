"""Every real file converts with the right levels and units, and reads back equal to the source."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write

from mfdata.convert import convert as convert_files
from mfdata.readers import READERS
from mfdata.registry import registered
from mfdata.store.store import Store
from tests.conftest import run_cli

HARTREE = units.Hartree


def convert(tmp_path, *args) -> Store:
    out = tmp_path / "store"
    run_cli("convert", *args, "--out", out)
    assert run_cli("verify", out).returncode == 0
    return Store(out)


def test_ani1x_counts_and_values(tmp_path, shared):
    path = shared / "modelforge_testdata" / "ani1_n5.hdf5"
    store = convert(tmp_path, path)
    info = store.info()
    assert info["n_structures"] == 8
    assert info["levels"]["wb97x-631gd"] == {
        "energy": 8,
        "forces": 8,
        "dipole": 4,
        "cm5_charges": 8,
        "hirshfeld_charges": 8,
    }
    assert info["levels"]["ccsdt-star-cbs"] == {"energy": 6}
    assert info["source_units"]["wb97x-631gd"]["energy"] == ["Hartree"]
    s, _ = store.read()
    with h5py.File(path) as f:
        groups = list(f.values())
        ref_e = np.concatenate([g["wb97x_dz.energy"][()] for g in groups]) * HARTREE
        ref_f = np.concatenate([g["wb97x_dz.forces"][()].reshape(-1, 3) for g in groups])
        ref_pos = np.concatenate([g["coordinates"][()].reshape(-1, 3) for g in groups])
        hf = np.concatenate([g["hf_tz.energy"][()] for g in groups])
        mp2 = np.concatenate([g["mp2_tz.corr_energy"][()] for g in groups])
        cc = np.concatenate([g["ccsd(t)_cbs.energy"][()] for g in groups])
    np.testing.assert_array_equal(s.labels[("wb97x-631gd", "energy")].values, ref_e)
    np.testing.assert_allclose(
        s.labels[("wb97x-631gd", "forces")].values, ref_f * HARTREE, rtol=1e-6
    )
    np.testing.assert_array_equal(s.positions, ref_pos)
    np.testing.assert_allclose(
        s.labels[("mp2-ccpvtz", "energy")].values, (hf + mp2) * HARTREE, rtol=1e-12, equal_nan=True
    )
    cc_label = s.labels[("ccsdt-star-cbs", "energy")]
    np.testing.assert_array_equal(cc_label.present, np.isfinite(cc))
    assert np.isnan(cc_label.values[~cc_label.present]).all()
    assert not s.pbc.any() and not s.cell.any()


def test_spice_units_gradients_and_charge(tmp_path, shared):
    path = shared / "modelforge_testdata" / "SPICE-1.1.4_n2.hdf5"
    store = convert(tmp_path, path)
    s, _ = store.read()
    with h5py.File(path) as f:
        charged = f["C#C.[Na+]"]
        n = charged["conformations"].shape[0]
        pos = charged["conformations"][()].reshape(-1, 3) * units.Bohr
        grad = charged["dft_total_gradient"][()].reshape(-1, 3)
        energy = charged["dft_total_energy"][()] * HARTREE
    group = s.group_names.index("C#C.[Na+]")
    rows = np.flatnonzero(s.group == group)
    assert len(rows) == n and (s.charge[rows] == 1).all()
    # the other molecule is a protonated amine, [N+:9] in its SMILES: also +1
    assert (s.charge[s.group != group] == 1).all()
    atoms = np.repeat(s.group == group, s.n_atoms)
    np.testing.assert_allclose(s.positions[atoms], pos, rtol=1e-6)
    forces = s.labels[("wb97md3bj-def2tzvppd", "forces")].values[atoms]
    np.testing.assert_allclose(forces, -grad * HARTREE / units.Bohr, rtol=1e-6)
    np.testing.assert_allclose(s.labels[("wb97md3bj-def2tzvppd", "energy")].values[rows], energy)


def test_ani2x(tmp_path, shared):
    store = convert(tmp_path, shared / "modelforge_testdata" / "ani2x_minimal.hdf5")
    info = store.info()
    assert info["n_structures"] == 5706
    assert set(info["elements"]) == {"H", "C", "N", "O", "F", "S", "Cl"}
    assert info["levels"] == {"wb97x-631gd": {"energy": 5706, "forces": 5706}}


def test_extxyz_with_isolated_atoms_file(tmp_path, shared):
    folder = shared / "botnet_3BPA"
    store = convert(
        tmp_path,
        folder / "train_300K.xyz",
        "--level",
        "wb97x_dz",
        "--isolated-atoms",
        folder / "iso_atoms.xyz",
    )
    s, _ = store.read()
    frames = read(folder / "train_300K.xyz", ":")
    assert s.n_structures == len(frames) == 500
    np.testing.assert_array_equal(
        s.labels[("wb97x-631gd", "energy")].values, [a.get_potential_energy() for a in frames]
    )
    np.testing.assert_array_equal(
        s.labels[("wb97x-631gd", "forces")].values, np.concatenate([a.get_forces() for a in frames])
    )
    assert store.manifest.levels["wb97x-631gd"].atom_energies["C"] == pytest.approx(-1029.48899998)
    assert not s.cell.any(), "the dummy 50 Å box of a molecule is dropped"


def test_isolated_atoms_marked_by_config_type(tmp_path, shared):
    folder = shared / "mace_tutorial_solvent_xtb"
    store = convert(
        tmp_path,
        folder / "solvent_train.xyz",
        "--level",
        "GFN2-xTB",
        "--isolated-atoms",
        "config_type=IsolatedAtom",
        "--pbc",
        "F",
    )
    assert store.info()["n_structures"] == 200
    assert set(store.manifest.levels["gfn2-xtb"].atom_energies) == {"H", "C", "O"}
    s, _ = store.read()
    assert not s.pbc.any()


def test_keys_with_stated_units(tmp_path, shared):
    path = shared / "qm7b_showcase_hf_mp2_ccsd" / "showcase-mp2-ccsd-energy.xyz"
    store = convert(
        tmp_path,
        path,
        "--map",
        "MP2_energy_Ha=MP2/d-aug-cc-pVDZ:energy",
        "--map",
        "CCSD_energy_Ha=ccsd-daugccpvdz:energy",
        "--units",
        "MP2_energy_Ha=Hartree",
        "--units",
        "CCSD_energy_Ha=Hartree",
    )
    s, _ = store.read()
    frames = read(path, ":")
    np.testing.assert_allclose(
        s.labels[("mp2-daugccpvdz", "energy")].values,
        [a.info["MP2_energy_Ha"] * HARTREE for a in frames],
        rtol=1e-14,
    )
    assert store.info()["source_units"]["ccsd-daugccpvdz"]["energy"] == ["Hartree"]


def test_unmapped_key_without_unit_is_an_error(tmp_path, shared):
    path = shared / "water_dimers_mp2_ccsdt" / "pe_c-mp2_ad_nf_n12_cp_1-800.xyz"
    proc = run_cli(
        "convert", path, "--map", "Emp2=mp2-augccpvdz:energy", "--out", tmp_path / "w", check=False
    )
    assert proc.returncode != 0
    assert "Emp2" in proc.stderr and "--units" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_non_standard_force_key(tmp_path, shared):
    path = (
        shared
        / "water_dimers_mp2_ccsdt"
        / ("water_dimers_amoeba_bulk300K_1000_4.5_lt_Roo_lt_6.0_MP2_AVTZ.xyz")
    )
    store = convert(
        tmp_path,
        path,
        "--level",
        "mp2/avtz",
        "--map",
        "force=mp2/avtz:forces",
        "--units",
        "force=eV/Å",
    )
    assert store.info()["levels"]["mp2-augccpvtz"] == {"energy": 1000, "forces": 1000}


def test_periodic_cells_with_stress(tmp_path):
    frames = []
    for i, a in enumerate((3.55, 3.6, 3.65)):
        atoms = bulk("Cu", "fcc", a=a, cubic=True) * (2, 1, 1)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_stress()
        frames.append(atoms)
    path = tmp_path / "cu.extxyz"
    write(path, frames)
    store = convert(tmp_path, path, "--level", "emt")
    s, _ = store.read()
    assert store.info()["levels"]["emt"] == {"energy": 3, "forces": 3, "stress": 3}
    assert s.pbc.all()
    np.testing.assert_allclose(s.cell, [f.cell.array for f in frames])
    np.testing.assert_allclose(
        s.labels[("emt", "stress")].values, [f.get_stress(voigt=False) for f in frames], atol=1e-12
    )


def test_ase_db_and_sgdml(tmp_path, shared):
    import ase.db

    frames = read(shared / "botnet_acac" / "train_300K.xyz", ":20")
    with ase.db.connect(tmp_path / "acac.db") as db:
        for atoms in frames:
            db.write(atoms)
    store = convert(tmp_path, tmp_path / "acac.db", "--level", "pbe-d3-def2svp")
    s, _ = store.read()
    np.testing.assert_allclose(
        s.labels[("pbe-d3-def2svp", "energy")].values, [a.get_potential_energy() for a in frames]
    )

    kcal = units.kcal / units.mol
    np.savez(
        tmp_path / "acac.npz",
        R=np.array([a.positions for a in frames]),
        z=frames[0].numbers,
        E=np.array([[a.get_potential_energy() / kcal] for a in frames]),
        F=np.array([a.get_forces() / kcal for a in frames]),
        r_unit="Ang",
        e_unit="kcal/mol",
        theory="PBE+D3/def2-SVP",
    )
    out = tmp_path / "sgdml"
    run_cli("convert", tmp_path / "acac.npz", "--out", out)
    t, _ = Store(out).read()
    np.testing.assert_allclose(
        t.labels[("pbe-d3-def2svp", "forces")].values,
        np.concatenate([a.get_forces() for a in frames]),
        rtol=1e-12,
    )


def test_link_by_geometry_merges_levels(tmp_path, shared):
    """The same geometries from two files become one record with both levels."""
    path = shared / "water_dimers_mp2_ccsdt" / "pe_c-mp2_ad_nf_n12_cp_1-800.xyz"
    frames = read(path, ":")
    first = frames[:500]
    for atoms in first:
        del atoms.info["Eccsdt2"]
    picked = np.random.default_rng(0).permutation(800)[:400]
    second = read(path, ":")
    second = [second[i] for i in picked]
    for atoms in second:
        del atoms.info["Emp2"]
        atoms.positions += 3e-5  # within the 1e-4 Å tolerance
    write(tmp_path / "mp2.xyz", first)
    write(tmp_path / "cc.xyz", second)
    store = convert(
        tmp_path,
        tmp_path / "mp2.xyz",
        tmp_path / "cc.xyz",
        "--map",
        "Emp2=mp2-augccpvdz:energy",
        "--map",
        "Eccsdt2=ccsdt-augccpvdz:energy",
        "--units",
        "Emp2=eV",
        "--units",
        "Eccsdt2=eV",
        "--link-by",
        "geometry",
    )
    both = int((picked < 500).sum())
    info = store.info()
    assert info["n_structures"] == 500 + 400 - both
    assert info["levels"] == {"mp2-augccpvdz": {"energy": 500}, "ccsdt-augccpvdz": {"energy": 400}}
    s, _ = store.read()
    mp2, cc = s.labels[("mp2-augccpvdz", "energy")], s.labels[("ccsdt-augccpvdz", "energy")]
    assert int((mp2.present & cc.present).sum()) == both
    reference = read(path, ":")
    linked = np.flatnonzero(mp2.present & cc.present)
    np.testing.assert_allclose(
        cc.values[linked], [reference[i].info["Eccsdt2"] for i in linked], rtol=1e-12
    )


def test_conflicting_labels_are_an_error(tmp_path, shared):
    path = shared / "water_dimers_mp2_ccsdt" / "pe_c-mp2_ad_nf_n12_cp_1-800.xyz"
    frames = read(path, ":10")
    write(tmp_path / "a.xyz", frames)
    frames[3].info["Emp2"] += 0.01
    write(tmp_path / "b.xyz", frames)
    proc = run_cli(
        "convert",
        tmp_path / "a.xyz",
        tmp_path / "b.xyz",
        "--map",
        "Emp2=mp2-augccpvdz:energy",
        "--units",
        "Emp2=eV",
        "--link-by",
        "geometry",
        "--out",
        tmp_path / "out",
        check=False,
    )
    assert proc.returncode == 2
    assert "b.xyz: record 3: mp2-augccpvdz energy conflicts" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_export_extxyz_roundtrip(tmp_path, shared):
    store = convert(tmp_path, shared / "modelforge_testdata" / "ani1_n5.hdf5")
    out = tmp_path / "cc.extxyz"
    run_cli("export", store.path, "--level", "ccsd(t)_cbs", "--out", out)
    frames = read(out, ":")
    s, _ = store.read()
    label = s.labels[("ccsdt-star-cbs", "energy")]
    assert len(frames) == 6
    np.testing.assert_allclose(
        [a.get_potential_energy() for a in frames], label.values[label.present], rtol=1e-12
    )


def test_duplicate_geometries_in_one_file_are_checked_against_each_other(tmp_path, shared):
    """Two records of the second file with the same geometry but different labels conflict."""
    path = shared / "water_dimers_mp2_ccsdt" / "pe_c-mp2_ad_nf_n12_cp_1-800.xyz"
    frames = read(path, ":5")
    mp2_only = [f.copy() for f in frames]
    for atoms, original in zip(mp2_only, frames, strict=True):
        atoms.info = {"Emp2": original.info["Emp2"]}
    write(tmp_path / "a.xyz", mp2_only)  # no CCSD(T) here: the twins differ only from each other
    cc = frames[2].copy()
    cc.info = {"Eccsdt2": frames[2].info["Eccsdt2"]}
    twin = cc.copy()
    twin.info = {"Eccsdt2": cc.info["Eccsdt2"] + 0.5}
    write(tmp_path / "b.xyz", [cc, twin])
    proc = run_cli(
        "convert",
        tmp_path / "a.xyz",
        tmp_path / "b.xyz",
        "--map",
        "Emp2=mp2-augccpvdz:energy",
        "--units",
        "Emp2=eV",
        "--map",
        "Eccsdt2=ccsdt-augccpvdz:energy",
        "--units",
        "Eccsdt2=eV",
        "--link-by",
        "geometry",
        "--out",
        tmp_path / "out",
        check=False,
    )
    assert proc.returncode == 2 and "b.xyz: record 1" in proc.stderr and "conflicts" in proc.stderr


def test_unused_units_are_an_error(tmp_path, shared):
    proc = run_cli(
        "convert",
        shared / "botnet_3BPA" / "train_300K.xyz",
        "--level",
        "wb97x-631gd",
        "--units",
        "Emp2=eV",
        "--out",
        tmp_path / "out",
        check=False,
    )
    assert proc.returncode == 2 and "--units Emp2" in proc.stderr


def test_format_help_lists_every_reader():
    """``convert --format``'s help and choices come from the reader table: none is missing."""
    proc = subprocess.run(
        [sys.executable, "-m", "mfdata.cli", "convert", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "TERMINAL_WIDTH": "1000"},
        check=True,
    )
    assert f"<{'|'.join(READERS)}>" in proc.stdout  # the choices
    for spec in READERS.values():
        assert spec.help() in proc.stdout


def test_convert_library_matches_the_cli(tmp_path, shared):
    """A Python user calling ``mfdata.convert.convert`` gets the store the command line makes."""
    path = shared / "qm7b_showcase_hf_mp2_ccsd" / "showcase-mp2-ccsd-energy.xyz"
    cli = convert(
        tmp_path,
        path,
        "--map",
        "MP2_energy_Ha=MP2/d-aug-cc-pVDZ:energy",
        "--map",
        "CCSD_energy_Ha=ccsd-daugccpvdz:energy",
        "--units",
        "MP2_energy_Ha=Hartree",
        "--units",
        "CCSD_energy_Ha=Hartree",
    )
    library = convert_files(
        [path],
        tmp_path / "library",
        maps=[
            "MP2_energy_Ha=MP2/d-aug-cc-pVDZ:energy",
            ("CCSD_energy_Ha", "CCSD/d-aug-cc-pVDZ", "energy"),
        ],
        units={"MP2_energy_Ha": "Hartree", "CCSD_energy_Ha": "Hartree"},
    )
    assert library.manifest.checksum == cli.manifest.checksum
    assert registered()["library"] == str((tmp_path / "library").resolve())


def test_convert_library_with_a_catalog_entry(tmp_path, shared):
    """The catalog fills in the options and the isolated-atoms file; notes go to ``notify``."""
    path = shared / "botnet_3BPA" / "train_300K.xyz"
    notes: list[str] = []
    library = convert_files([path], tmp_path / "library", catalog="3bpa", notify=notes.append)
    cli = convert(tmp_path, path, "--catalog", "3bpa")
    assert library.manifest.checksum == cli.manifest.checksum
    assert notes == [f"3bpa: isolated atoms from {path.parent / 'iso_atoms.xyz'}"]
    assert library.info()["atom_energies"] == cli.info()["atom_energies"]
