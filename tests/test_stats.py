"""``mfdata stats``: reference energies, per-atom spread, force RMS and level alignment, checked
against numbers computed independently from the source files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import units
from ase.io import read

import mfdata.stats as stats_module
from mfdata.levels import resolve_level
from mfdata.records import Label, molecule_structures
from mfdata.stats import (
    StatisticsWarning,
    composition,
    compute_statistics,
    store_statistics,
)
from mfdata.store.manifest import MANIFEST
from mfdata.store.store import Store
from tests.conftest import run_cli

WATER = ("water_dimers_mp2_ccsdt", "pe_c-mp2_ad_nf_n12_cp_1-800.xyz")
QM7B = ("qm7b_showcase_hf_mp2_ccsd", "showcase-mp2-ccsd-energy.xyz")


def convert(tmp_path_factory, name: str, *args) -> Store:
    """Convert into a fresh folder, registering the store in a private registry (module-scoped
    fixtures run before conftest's per-test one)."""
    folder = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MFKIT_HOME", str(folder / "mfkit_home"))
        run_cli("convert", *args, "--out", folder / name)
    return Store(folder / name)


def stats_json(store: Store) -> tuple[dict, str]:
    proc = run_cli("stats", store.path, "--json")
    return json.loads(proc.stdout), proc.stderr


@pytest.fixture(scope="module")
def ani1(tmp_path_factory, shared) -> Store:
    return convert(tmp_path_factory, "ani1", shared / "modelforge_testdata" / "ani1_n5.hdf5")


@pytest.fixture(scope="module")
def water(tmp_path_factory, shared) -> Store:
    return convert(
        tmp_path_factory,
        "water",
        shared.joinpath(*WATER),
        "--map",
        "Emp2=mp2-augccpvdz:energy",
        "--map",
        "Eccsdt2=ccsdt-augccpvdz:energy",
        "--units",
        "Emp2=eV",
        "--units",
        "Eccsdt2=eV",
    )


def test_ani1_every_level_gets_references(ani1):
    before = ani1.manifest.checksum
    result, stderr = stats_json(ani1)
    assert "warning" not in stderr
    energy_levels = [lvl for lvl, s in ani1.manifest.levels.items() if "energy" in s.labels]
    assert len(energy_levels) >= 10
    published = resolve_level("wb97x-631gd").atom_energies
    assert published is not None and published.unit == "Hartree"
    for level in energy_levels:
        entry = result["levels"][level]
        if level == "wb97x-631gd":  # the registry has its published isolated-atom energies
            assert entry["reference_method"] == "isolated_atoms"
            assert entry["reference_source"] == published.source
            assert entry["reference_energies"] == pytest.approx(
                {s: published.values[s] * units.Hartree for s in "HCNO"}, rel=1e-12
            )
            assert -6 < entry["energy_per_atom_mean"] < -2  # binding energy, eV per atom
            continue
        # 8 conformers (6 at CCSD(T)*/CBS) of 5 formulas over H, C, N, O: all four determined
        assert entry["reference_method"] == "least_squares"
        assert "reference_source" not in entry
        assert (entry["rank"], entry["n_elements"]) == (4, 4)
        assert set(entry["reference_energies"]) == {"H", "C", "N", "O"}
        assert entry["n_energies"] == ani1.manifest.levels[level].labels["energy"].count
        assert abs(entry["energy_per_atom_mean"]) < 0.01 and entry["energy_per_atom_std"] > 0
    # the fit agrees with numpy's least squares on a composition matrix counted another way
    s, _ = ani1.read()
    label = s.labels[("wb97x-def2tzvpp", "energy")]
    rows = np.split(s.numbers, np.cumsum(s.n_atoms)[:-1])
    matrix = np.array([[np.sum(r == z) for z in (1, 6, 7, 8)] for r in rows], dtype=float)
    present = label.present
    expected = np.linalg.lstsq(matrix[present], label.values[present], rcond=None)[0]
    got = result["levels"]["wb97x-def2tzvpp"]["reference_energies"]
    np.testing.assert_allclose([got[e] for e in "HCNO"], expected, rtol=1e-9)
    # force RMS per component, over the structures with forces
    forces = s.labels[("wb97x-631gd", "forces")].values
    assert result["levels"]["wb97x-631gd"]["force_rms"] == pytest.approx(
        np.sqrt(np.mean(forces**2)), rel=1e-12
    )
    assert result["levels"]["ccsdt-star-cbs"]["force_rms"] is None
    cc = next(
        a
        for a in result["alignments"]
        if {a["from_level"], a["to_level"]} == {"ccsdt-star-cbs", "wb97x-631gd"}
    )
    assert cc["n_shared"] == 6
    # saved in the manifest, survive re-opening; the arrays and their checksum are untouched
    reopened = Store(ani1.path)
    assert reopened.manifest.statistics.model_dump() == result
    assert reopened.manifest.checksum == before
    assert run_cli("verify", ani1.path).returncode == 0
    assert reopened.verify() == []


def test_store_and_memory_paths_agree(ani1, monkeypatch):
    """Reading only what is needed, in small blocks, gives the numbers of the in-memory path."""
    s, _ = ani1.read()
    atom_energies = {level: v.atom_energies for level, v in ani1.manifest.levels.items()}
    expected = compute_statistics(s, atom_energies)
    monkeypatch.setattr(stats_module, "_FORCE_BLOCK_ATOMS", 7)
    monkeypatch.setattr(stats_module, "_BLOCK_STRUCTURES", 3)
    got = store_statistics(ani1)
    for level, entry in expected.levels.items():
        other = got.levels[level]
        assert other.reference_energies == pytest.approx(entry.reference_energies, rel=1e-12)
        if entry.force_rms is not None:
            assert other.force_rms == pytest.approx(entry.force_rms, rel=1e-12)
    assert len(got.alignments) == len(expected.alignments)


def test_water_dimer_alignment_matches_delta_column(water, shared):
    result, stderr = stats_json(water)
    frames = read(shared.joinpath(*WATER), ":")
    delta = np.array([a.info["EdeltaCCSDT2"] for a in frames])  # Eccsdt2 - Emp2, from the file
    (alignment,) = result["alignments"]
    assert alignment["n_shared"] == 800
    sign = 1.0 if alignment["to_level"] == "ccsdt-augccpvdz" else -1.0
    # one composition (H4O2): rank 1 of 2, so the offset is a common per-atom offset
    assert (alignment["method"], alignment["rank"], alignment["n_elements"]) == (
        "minimum_norm",
        1,
        2,
    )
    assert alignment["offsets"]["H"] == pytest.approx(sign * delta.mean() / 6, abs=1e-12)
    assert alignment["offsets"]["O"] == pytest.approx(sign * delta.mean() / 6, abs=1e-12)
    residual = delta - delta.mean()
    assert alignment["residual_rms_per_structure"] == pytest.approx(
        np.sqrt(np.mean(residual**2)), rel=1e-9
    )
    assert alignment["residual_mae_per_structure"] == pytest.approx(
        np.mean(np.abs(residual)), rel=1e-9
    )
    assert alignment["residual_rms_per_atom"] == pytest.approx(
        alignment["residual_rms_per_structure"] / 6, rel=1e-12
    )
    assert alignment["residual_mae_per_atom"] == pytest.approx(
        alignment["residual_mae_per_structure"] / 6, rel=1e-12
    )
    for level in ("mp2-augccpvdz", "ccsdt-augccpvdz"):
        assert result["levels"][level]["reference_method"] == "minimum_norm"
    assert "rank-deficient" in stderr and "minimum-norm" in stderr


def test_qm7b_alignment(tmp_path_factory, shared):
    store = convert(
        tmp_path_factory,
        "qm7b",
        shared.joinpath(*QM7B),
        "--map",
        "MP2_energy_Ha=mp2-daugccpvdz:energy",
        "--map",
        "CCSD_energy_Ha=ccsd-daugccpvdz:energy",
        "--units",
        "MP2_energy_Ha=Hartree",
        "--units",
        "CCSD_energy_Ha=Hartree",
    )
    result, stderr = stats_json(store)
    assert "warning" not in stderr
    frames = read(shared.joinpath(*QM7B), ":")
    elements = [1, 6, 7, 8, 16]
    matrix = np.array([[np.sum(a.numbers == z) for z in elements] for a in frames], dtype=float)
    delta = np.array([a.info["CCSD_energy_Ha"] - a.info["MP2_energy_Ha"] for a in frames])
    delta *= units.Hartree
    (alignment,) = result["alignments"]
    sign = 1.0 if alignment["to_level"] == "ccsd-daugccpvdz" else -1.0
    assert alignment["n_shared"] == 52
    assert (alignment["method"], alignment["rank"], alignment["n_elements"]) == (
        "least_squares",
        5,
        5,
    )
    offsets = np.linalg.lstsq(matrix, sign * delta, rcond=None)[0]
    got = [alignment["offsets"][e] for e in ("H", "C", "N", "O", "S")]
    np.testing.assert_allclose(got, offsets, atol=1e-9)
    residual = sign * delta - matrix @ offsets
    n_atoms = matrix.sum(axis=1)
    assert alignment["residual_rms_per_structure"] == pytest.approx(
        np.sqrt(np.mean(residual**2)), rel=1e-6
    )
    assert alignment["residual_mae_per_atom"] == pytest.approx(
        np.mean(np.abs(residual / n_atoms)), rel=1e-6
    )
    for level in ("mp2-daugccpvdz", "ccsd-daugccpvdz"):
        assert result["levels"][level]["reference_method"] == "least_squares"
        assert result["levels"][level]["rank"] == 5


def test_3bpa_uses_isolated_atoms(tmp_path_factory, shared):
    folder = shared / "botnet_3BPA"
    store = convert(
        tmp_path_factory,
        "bpa",
        folder / "train_300K.xyz",
        "--level",
        "wb97x_dz",
        "--isolated-atoms",
        folder / "iso_atoms.xyz",
    )
    result, stderr = stats_json(store)
    assert "warning" not in stderr
    entry = result["levels"]["wb97x-631gd"]
    iso = {
        a.get_chemical_symbols()[0]: a.get_potential_energy()
        for a in read(folder / "iso_atoms.xyz", ":")
    }
    assert entry["reference_method"] == "isolated_atoms"
    assert entry["reference_source"] == "the store's isolated-atom frames"  # not the registry's
    assert entry["reference_energies"] == pytest.approx(iso, abs=1e-9)
    frames = read(folder / "train_300K.xyz", ":")
    per_atom = np.array(
        [
            (a.get_potential_energy() - sum(iso[e] for e in a.get_chemical_symbols())) / len(a)
            for a in frames
        ]
    )
    assert entry["energy_per_atom_mean"] == pytest.approx(per_atom.mean(), rel=1e-9)
    assert entry["energy_per_atom_std"] == pytest.approx(per_atom.std(), rel=1e-6)
    forces = np.concatenate([a.get_forces() for a in frames])
    assert entry["force_rms"] == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-9)
    assert entry["n_forces"] == 500


def test_acac_without_isolated_atoms_warns(tmp_path_factory, shared):
    path = shared / "botnet_acac" / "train_300K.xyz"
    store = convert(tmp_path_factory, "acac", path, "--level", "pbe-d3-def2svp")
    before = store.manifest.checksum
    result, stderr = stats_json(store)
    assert "rank-deficient" in stderr and "minimum-norm" in stderr and "isolated-atom" in stderr
    entry = result["levels"]["pbe-d3-def2svp"]
    assert (entry["reference_method"], entry["rank"], entry["n_elements"]) == (
        "minimum_norm",
        1,
        3,
    )
    assert entry["warnings"] and "rank-deficient" in entry["warnings"][0]
    # one molecule (C5H8O2): the answer is one common per-atom offset, the mean energy per atom
    energies = np.array([a.get_potential_energy() for a in read(path, ":")])
    assert set(entry["reference_energies"]) == {"H", "C", "O"}
    for value in entry["reference_energies"].values():
        assert value == pytest.approx(energies.mean() / 15, rel=1e-12)
    assert entry["energy_per_atom_std"] == pytest.approx(energies.std() / 15, rel=1e-6)
    text = run_cli("stats", store.path).stdout
    assert "minimum_norm, rank 1 of 3 elements" in text
    assert Store(store.path).manifest.checksum == before
    assert run_cli("verify", store.path).returncode == 0


def _synthetic(rng: np.random.Generator, n: int, elements: list[int], max_count: int):
    counts = rng.integers(0, max_count + 1, size=(n, len(elements)))
    counts[counts.sum(axis=1) == 0, 0] = 1
    numbers = np.concatenate([np.repeat(elements, row) for row in counts])
    # shuffle the atoms of each structure so that element order inside a structure varies
    n_atoms = counts.sum(axis=1)
    start = np.concatenate([[0], np.cumsum(n_atoms)])
    key = np.repeat(np.arange(n), n_atoms) + rng.random(len(numbers))
    numbers = numbers[np.argsort(key, kind="stable")]
    s = molecule_structures(numbers, np.zeros((len(numbers), 3)), n_atoms)
    assert (start[-1], len(numbers)) == (n_atoms.sum(), len(numbers))
    return s, counts


def test_synthetic_references_and_offsets_are_recovered():
    rng = np.random.default_rng(7)
    elements = [1, 6, 7, 8, 16]
    s, counts = _synthetic(rng, 400, elements, 9)
    np.testing.assert_array_equal(composition(s.numbers, s.n_atoms).counts, counts)
    chosen = np.array([-13.6, -1029.5, -1485.0, -2042.0, -10830.0])
    offsets = np.array([0.02, -0.7, 0.3, 1.1, -2.5])
    low = counts @ chosen
    high_present = rng.random(400) < 0.6
    high = np.where(high_present, low + counts @ offsets, np.nan)
    s.labels[("low", "energy")] = Label(low, np.ones(400, dtype=bool))
    s.labels[("high", "energy")] = Label(high, high_present)
    result = compute_statistics(s)
    entry = result.levels["low"]
    assert (entry.reference_method, entry.rank, entry.n_elements) == ("least_squares", 5, 5)
    got = [entry.reference_energies[e] for e in ("H", "C", "N", "O", "S")]
    np.testing.assert_allclose(got, chosen, rtol=0, atol=1e-8)
    assert abs(entry.energy_per_atom_mean) < 1e-10 and entry.energy_per_atom_std < 1e-10
    (alignment,) = result.alignments
    assert (alignment.from_level, alignment.to_level) == ("high", "low")
    assert alignment.n_shared == int(high_present.sum())
    got = [alignment.offsets[e] for e in ("H", "C", "N", "O", "S")]
    np.testing.assert_allclose(got, -offsets, rtol=0, atol=1e-8)
    assert alignment.residual_rms_per_structure < 1e-8


def test_rank_deficient_synthetic_warns_and_fits_what_is_determined():
    """Two compositions over three elements: the data fixes two combinations, not three."""
    rng = np.random.default_rng(3)
    counts = np.array([[2, 1, 0], [0, 1, 2]])[rng.integers(0, 2, 50)]
    numbers = np.concatenate([np.repeat([1, 6, 8], row) for row in counts])
    s = molecule_structures(numbers, np.zeros((len(numbers), 3)), counts.sum(axis=1))
    chosen = np.array([-13.6, -1029.5, -2042.0])
    s.labels[("x", "energy")] = Label(counts @ chosen, np.ones(50, dtype=bool))
    with pytest.warns(StatisticsWarning, match="determine only 2 of 3"):
        result = compute_statistics(s)
    entry = result.levels["x"]
    assert (entry.reference_method, entry.rank) == ("minimum_norm", 2)
    ref = np.array([entry.reference_energies[e] for e in ("H", "C", "O")])
    np.testing.assert_allclose(
        np.array([[2, 1, 0], [0, 1, 2]]) @ ref, [[2, 1, 0], [0, 1, 2]] @ chosen
    )
    assert entry.energy_per_atom_std < 1e-9


def test_manifest_without_statistics_still_opens(ani1, tmp_path):
    """Stores written before ``mfdata stats`` existed carry ``"statistics": {}``."""
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(ani1.path, copy)
    data = json.loads((copy / MANIFEST).read_text())
    data["statistics"] = {}
    del data["manifest_checksum"]  # nor did they carry a manifest checksum
    (copy / MANIFEST).write_text(json.dumps(data))
    store = Store(copy)
    assert store.manifest.statistics.levels == {}
    assert store.verify() == []
