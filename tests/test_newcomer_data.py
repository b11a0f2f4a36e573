"""What a new user meets on public data nobody here prepared (issue 12).

The public files (MD17 ethanol in kcal/mol, SchNetPack's ASE databases, ACE/GAP periodic training
sets with virials, OMol25's spin) are not in ../shared, so each test builds a minimal file of the
same shape with ASE and says where its convention comes from. Values have the magnitudes of the
real files (ethanol at PBE: about -97,080 kcal/mol; MD17 force RMS about 26 kcal/mol/Å).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import Hartree, kcal, mol

from mfdata.convert import convert, merge
from mfdata.errors import MfkitError
from mfdata.readers import read_source
from mfdata.records import InvalidDataError
from mfdata.store.store import Store
from tests.conftest import run_cli

KCAL = kcal / mol  # eV per kcal/mol
LEVEL = "pbe-vdwts"  # MD17's level, in the package registry


def _ethanol_frames(n: int = 8, seed: int = 0) -> tuple[list, np.ndarray, list[np.ndarray]]:
    """Ethanol conformers with MD17-sized energies (kcal/mol) and forces (kcal/mol/Å)."""
    rng = np.random.default_rng(seed)
    frames, energies, forces = [], -97080.0 + rng.normal(0, 3, n), []
    for i in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        forces.append(rng.normal(0, 26, (len(atoms), 3)))
        atoms.calc = SinglePointCalculator(atoms, energy=energies[i], forces=forces[i])
        frames.append(atoms)
    return frames, energies, forces


@pytest.fixture
def md17_xyz(tmp_path: Path) -> tuple[Path, np.ndarray, list[np.ndarray]]:
    """The original MD17 ethanol extxyz: energy= in the comment line, forces per atom, kcal/mol."""
    frames, energies, forces = _ethanol_frames()
    path = tmp_path / "md17_ethanol.xyz"
    ase.io.write(path, frames, format="extxyz")
    return path, energies, forces


def _schnetpack_db(path: Path, metadata: dict | None, frames: list) -> Path:
    """An ASE db as SchNetPack's ASEAtomsData.create/add_system writes it: units in the db
    metadata (``_property_unit_dict``, ``_distance_unit``), properties in each row's data,
    scalars with shape (1,)."""
    with ase.db.connect(path) as db:
        if metadata is not None:
            db.metadata = metadata
        for atoms in frames:
            data = {
                "energy": np.array([atoms.calc.results["energy"]]),
                "forces": atoms.calc.results["forces"],
                "total_charge": np.array([0.0]),
            }
            bare = atoms.copy()
            bare.calc = None
            db.write(bare, data=data)
    return path


SCHNETPACK_UNITS = {
    "_property_unit_dict": {"energy": "kcal/mol", "forces": "kcal/mol/Ang", "total_charge": "e"},
    "_distance_unit": "Ang",
    "atomrefs": {},
}


def test_catalog_units_apply_whatever_the_format(md17_xyz, tmp_path):
    """Item 1: md17's catalog entry says kcal/mol; --format extxyz must not read eV."""
    path, energies, forces = md17_xyz
    out = tmp_path / "x"
    run_cli("convert", path, "--catalog", "md17", "--format", "extxyz", "--out", out)
    store = Store(out)
    units = store.manifest.levels[LEVEL].labels
    assert units["energy"].source_units == ["kcal/mol"]
    assert units["forces"].source_units == ["kcal/mol/Å"]
    s, _ = store.read()
    np.testing.assert_allclose(s.labels[(LEVEL, "energy")].values, energies * KCAL)
    np.testing.assert_allclose(s.labels[(LEVEL, "forces")].values, np.concatenate(forces) * KCAL)


def test_md17_read_as_ev_is_refused_naming_the_likely_unit(md17_xyz, tmp_path):
    """Item 3: kcal/mol read as eV: force RMS 26 "eV/Å" and energies beyond any atom's."""
    path, _, _ = md17_xyz
    proc = run_cli("convert", path, "--level", LEVEL, "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr
    assert str(path) in message and "'forces'" in message and "'energy'" in message
    assert "likely in kcal/mol/Å" in message and "likely in kcal/mol" in message
    assert not (tmp_path / "x").exists()
    store = convert(path, tmp_path / "y", level=LEVEL, allow_implausible=True)
    recorded = store.manifest.provenance.implausible_allowed
    assert len(recorded) == 2 and all(str(path) in m for m in recorded)


def test_stats_refuses_an_implausible_store_unless_recorded(md17_xyz, tmp_path):
    """Item 3 in stats: the override recorded at convert lets stats run; --allow-implausible
    on stats records it where convert did not check (here: a store converted with it)."""
    path, _, _ = md17_xyz
    convert(path, tmp_path / "y", level=LEVEL, allow_implausible=True)
    proc = run_cli("stats", tmp_path / "y")
    assert "warning:" in proc.stderr and "force RMS" in proc.stderr


def test_schnetpack_db_units_from_metadata(tmp_path):
    """Item 2 and 8: the db's _property_unit_dict is honoured and recorded as source units;
    total_charge of shape (1,) is a scalar."""
    frames, energies, forces = _ethanol_frames()
    db = _schnetpack_db(tmp_path / "ethanol.db", SCHNETPACK_UNITS, frames)
    source = read_source(str(db), level=LEVEL)
    np.testing.assert_allclose(source.structures.labels[(LEVEL, "energy")].values, energies * KCAL)
    np.testing.assert_allclose(
        source.structures.labels[(LEVEL, "forces")].values, np.concatenate(forces) * KCAL
    )
    assert source.source_units[(LEVEL, "energy")] == "kcal/mol"
    assert (source.structures.charge == 0).all()
    with pytest.raises(MfkitError, match=r"metadata.*kcal/mol.*energy=eV"):
        read_source(str(db), level=LEVEL, units={"energy": "eV"})


def test_schnetpack_db_in_bohr(tmp_path):
    """_distance_unit Bohr: positions come out in Å."""
    frames, _, _ = _ethanol_frames(2)
    metadata = {**SCHNETPACK_UNITS, "_distance_unit": "Bohr"}
    db = _schnetpack_db(tmp_path / "bohr.db", metadata, frames)
    source = read_source(str(db), level=LEVEL)
    np.testing.assert_allclose(
        source.structures.positions, np.concatenate([a.positions for a in frames]) * 0.52917721
    )


def test_schnetpack_db_without_metadata_is_refused(tmp_path):
    frames, _, _ = _ethanol_frames()
    db = _schnetpack_db(tmp_path / "bare.db", None, frames)
    with pytest.raises(InvalidDataError, match=r"bare\.db: key 'forces'.*likely in kcal/mol/Å"):
        convert(db, tmp_path / "x", level=LEVEL)


def _copper_with_virial(tmp_path: Path, periodic: bool = True) -> tuple[Path, list[np.ndarray]]:
    """An ACE/GAP-style periodic training set: energy, forces and ``virial`` (libAtoms extxyz
    convention, virial = -volume * stress, as ASE's cell filters define it) from ASE's EMT."""
    frames, stresses = [], []
    for i, strain in enumerate((0.98, 1.0, 1.03)):
        atoms = bulk("Cu", "fcc", a=3.6 * strain, cubic=True).repeat((2, 1, 1))
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        stress = atoms.get_stress(voigt=False)
        stresses.append(stress)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.info["virial"] = -atoms.get_volume() * stress
        atoms.pbc = periodic
        frames.append(atoms)
    path = tmp_path / ("cu_virial.xyz" if periodic else "cu_cluster_virial.xyz")
    ase.io.write(path, frames, format="extxyz")
    return path, stresses


def test_virial_becomes_stress_with_ase_sign(tmp_path):
    """Item 5: ASE's own 'virial' key under --level, and --map KEY=LEVEL:virial."""
    path, stresses = _copper_with_virial(tmp_path)
    source = read_source(str(path), level=LEVEL)
    stress = source.structures.labels[(LEVEL, "stress")].values
    np.testing.assert_allclose(stress, np.array(stresses), atol=1e-10)
    mapped = read_source(str(path), maps=[("virial", LEVEL, "virial")])
    np.testing.assert_allclose(mapped.structures.labels[(LEVEL, "stress")].values, stress)
    cluster, _ = _copper_with_virial(tmp_path, periodic=False)
    with pytest.raises(InvalidDataError, match=r"record 0: 'virial' is a virial.*not periodic"):
        read_source(str(cluster), level=LEVEL)


def test_unmapped_label_like_keys_are_named(tmp_path):
    """Item 4: a TiAl-tutorial-like file: per-atom 'force' (not ASE's 'forces') is dropped
    by --level, and the user is told."""
    frames = []
    for i in range(3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.arrays["force"] = atoms.get_forces()
        atoms.calc = None
        frames.append(atoms)
    path = tmp_path / "tial_like.xyz"
    ase.io.write(path, frames, format="extxyz")
    proc = run_cli("convert", path, "--level", LEVEL, "--out", tmp_path / "x")
    assert "warning: keys that look like labels were not read: force (per-atom" in proc.stderr
    assert "energy" not in proc.stderr.split("not read:")[1].split(";")[0]


def test_spin_keys_and_shape_one_scalars(tmp_path):
    """Item 8: OMol25's info 'spin' is the multiplicity 2S+1 (fairchem's convention);
    spin_multiplicity likewise; disagreeing keys and spin 0 are refused."""
    frames = []
    for spin in (1, 2, 3):
        atoms = molecule("H2O")
        atoms.calc = SinglePointCalculator(atoms, energy=-2080.0 + spin)
        atoms.info["spin"] = spin
        atoms.info["spin_multiplicity"] = spin
        frames.append(atoms)
    path = tmp_path / "omol_like.xyz"
    ase.io.write(path, frames, format="extxyz")
    source = read_source(str(path), level=LEVEL)
    assert source.structures.multiplicity.tolist() == [1, 2, 3]
    frames[1].info["spin_multiplicity"] = 1
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(InvalidDataError, match="record 1: spin multiplicities disagree"):
        read_source(str(path), level=LEVEL)
    for atoms in frames:
        del atoms.info["spin_multiplicity"]
    frames[0].info["spin"] = 0
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(InvalidDataError, match="record 0: spin is 0, not a multiplicity"):
        read_source(str(path), level=LEVEL)


def test_levels_spread_a_unit_ratio_apart_are_refused_at_merge(tmp_path):
    """Item 3 (Hartree vs eV) and item 7 (one convert per level, then merge): the second level
    is in Hartree but stated as eV, so its energies spread 27 times narrower."""
    frames, energies, _ = _ethanol_frames(10)
    for level, scale, name in ((LEVEL, KCAL, "a.xyz"), ("wb97x-631gd", KCAL / Hartree, "b.xyz")):
        for atoms, energy in zip(frames, energies, strict=True):
            atoms.calc = SinglePointCalculator(atoms, energy=energy * scale)
        ase.io.write(tmp_path / name, frames, format="extxyz")
        convert(tmp_path / name, tmp_path / f"store_{level}", level=level)
    with pytest.raises(
        InvalidDataError, match=r"spread 27.* times wider.*wb97x-631gd is in Hartree"
    ):
        merge([tmp_path / f"store_{LEVEL}", tmp_path / "store_wb97x-631gd"], tmp_path / "m")
    merged = merge(
        [tmp_path / f"store_{LEVEL}", tmp_path / "store_wb97x-631gd"],
        tmp_path / "m",
        allow_implausible=True,
    )
    assert len(merged.manifest.provenance.implausible_allowed) == 1


def _fresh_home(tmp_path: Path, name: str) -> dict[str, str]:
    home = tmp_path / name
    home.mkdir()
    return {**os.environ, "MFKIT_HOME": str(home)}


def test_user_level_travels_with_the_store(tmp_path):
    """Item 6 and 13: a level added by the user; the store works where the level is unknown."""
    path, _ = _copper_with_virial(tmp_path)
    first = _fresh_home(tmp_path, "home_a")
    cli = [sys.executable, "-m", "mfdata.cli"]

    def run(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess:
        proc = subprocess.run([*cli, *map(str, args)], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc

    run("levels", "add", "pw91-castep", "--name", "PW91 (CASTEP)", "--method", "PW91",
        "--family", "dft", "--program", "CASTEP", "--alias", "pw91", env=first)  # fmt: skip
    assert "pw91-castep" in run("levels", env=first).stdout
    out = tmp_path / "cu"
    run("convert", path, "--level", "pw91", "--out", out, env=first)
    definition = json.loads((out / "manifest.json").read_text())["levels"]["pw91-castep"]
    assert definition["definition"]["program"] == "CASTEP"

    second = _fresh_home(tmp_path, "home_b")
    assert "pw91-castep" not in run("levels", env=second).stdout
    info = run("info", out, env=second).stdout
    assert "pw91-castep (PW91 (CASTEP)): energy 3 (eV), forces 3 (eV/Å), stress 3 (eV/Å^3" in info
    assert run("query", out, "--has", "pw91:stress", "--count", env=second).stdout.strip() == "3"
    exported = tmp_path / "deep" / "dir" / "cu.extxyz"
    run("export", out, "--level", "pw91", "--out", exported, env=second)
    assert len(ase.io.read(exported, ":")) == 3
    loads = (
        "from mfdata.loading.zarr_dataset import ZarrFidelityDataset as D;"
        f"d = D([{str(out)!r}], ['pw91'], labels=['energy', 'forces', 'stress']);"
        "print(len(d), d.levels)"
    )
    proc = subprocess.run([sys.executable, "-c", loads], capture_output=True, text=True, env=second)
    assert proc.returncode == 0 and "3 ['pw91-castep']" in proc.stdout, proc.stderr
