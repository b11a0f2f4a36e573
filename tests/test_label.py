"""mfdata label and mfdata sample: real tblite and PySCF calculations on water, real CLI runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.units import Bohr, Hartree
from pydantic import ValidationError

from mfdata.examples import bundled_store
from mfdata.label import JOURNAL_IN_STORE, journal_path, read_journal, subset_indices
from mfdata.levels import registry
from mfdata.resources import example_file
from mfdata.schema import ComputeRecipe
from mfdata.split import read_split
from mfdata.store.manifest import StoreError
from mfdata.store.store import Store
from tests.conftest import run_cli


def water_frames(n: int, seed: int = 0, **info) -> list[Atoms]:
    """Distorted water molecules (0.05 Å noise), with the given info entries."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.info.update(info)
        frames.append(atoms)
    return frames


@pytest.fixture
def water(tmp_path: Path) -> Path:
    path = tmp_path / "water.xyz"
    ase.io.write(path, water_frames(6, charge=0, multiplicity=1), format="extxyz")
    return path


def test_tblite_labels_equal_a_direct_ase_calculation(water, tmp_path):
    from tblite.ase import TBLite

    run_cli(
        "label", water, "--level", "gfn2-xtb", "--labels", "energy,forces", "--out", tmp_path / "x"
    )
    store = Store(tmp_path / "x")
    s, _ = store.read()
    assert store.manifest.levels["gfn2-xtb"].labels["forces"].unit == "eV/Å"
    for i, atoms in enumerate(ase.io.read(water, index=":")):
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        assert s.labels[("gfn2-xtb", "energy")].values[i] == pytest.approx(
            atoms.get_potential_energy(), abs=1e-8
        )
        np.testing.assert_allclose(
            s.labels[("gfn2-xtb", "forces")].values[3 * i : 3 * i + 3],
            atoms.get_forces(),
            atol=1e-8,
        )
    (run,) = store.manifest.provenance.labelling
    assert run.recipe.program == "tblite" and run.program_version and run.n_structures == 6


def test_pyscf_labels_equal_a_direct_pyscf_calculation(water, tmp_path):
    from pyscf import gto, scf

    run_cli("label", water, "--level", "hf-sto3g-pyscf", "--workers", "2", "--out", tmp_path / "h")
    s, _ = Store(tmp_path / "h").read()
    for i in (0, 5):
        atoms = ase.io.read(water, index=i)
        mol = gto.M(
            atom=[(a.symbol, a.position) for a in atoms], basis="sto-3g", unit="Angstrom", verbose=0
        )
        mf = scf.RHF(mol)
        energy = mf.kernel()
        gradient = mf.nuc_grad_method().kernel()  # Hartree/Bohr
        assert s.labels[("hf-sto3g-pyscf", "energy")].values[i] == pytest.approx(
            energy * Hartree, abs=1e-6
        )
        np.testing.assert_allclose(
            s.labels[("hf-sto3g-pyscf", "forces")].values[3 * i : 3 * i + 3],
            -gradient * Hartree / Bohr,
            atol=1e-5,
        )


def test_sigkill_then_resume_computes_each_structure_once(tmp_path):
    source = tmp_path / "many.xyz"
    ase.io.write(source, water_frames(40, charge=0, multiplicity=1), format="extxyz")
    out = tmp_path / "killed"
    journal = journal_path(out)
    command = [sys.executable, "-m", "mfdata.cli", "label", str(source)]
    command += ["--level", "hf-sto3g-pyscf", "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 6:  # header + 5 results
            break
        assert proc.poll() is None, "finished before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run left something at the output path"
    with pytest.raises(StoreError):
        Store(out)
    before = journal.read_bytes()
    _, done_before, _ = read_journal(journal)
    assert 5 <= len(done_before) < 40
    with open(journal, "ab") as handle:  # a kill in the middle of writing a line
        handle.write(b'{"i": 39, "seconds": 0.1, "ener')

    result = run_cli(*command[3:])
    assert "resuming" in result.stderr
    assert not journal.exists()
    store = Store(out)
    assert store.manifest.n_structures == 40
    kept = (out / JOURNAL_IN_STORE).read_bytes()
    assert kept.startswith(before[: before.rindex(b"\n") + 1]), "journaled lines were rewritten"
    records = [json.loads(line) for line in kept.splitlines()[1:]]
    indices = [r["i"] for r in records]
    assert sorted(indices) == list(range(40)), "a structure is missing or was computed twice"
    resumed = records[len(done_before) :]
    assert not {r["i"] for r in resumed} & set(done_before), "a journaled structure was redone"
    assert {r["pid"] for r in resumed}.isdisjoint({r["pid"] for r in done_before.values()})
    s, _ = store.read()
    energies = s.labels[("hf-sto3g-pyscf", "energy")].values
    assert np.isfinite(energies).all() and np.ptp(energies) > 0


@pytest.fixture(scope="module")
def bpa(tmp_path_factory, shared) -> Path:
    """50 MD frames of a 27-atom molecule (3BPA), neutral singlets: ~0.05 s each at GFN2-xTB,
    so that a run on two workers lasts long enough to kill something in the middle of it."""
    frames = ase.io.read(shared / "botnet_3BPA" / "train_300K.xyz", index=":50")
    path = tmp_path_factory.mktemp("bpa") / "bpa.xyz"
    info = {"charge": 0, "multiplicity": 1}
    ase.io.write(path, [Atoms(a.numbers, a.positions, info=info) for a in frames], format="extxyz")
    return path


REFERENCE = """
import sys, ase.io, numpy as np
from tblite.ase import TBLite
energies, forces = [], []
for atoms in ase.io.read(sys.argv[1], index=":"):
    atoms.calc = TBLite(method="GFN2-xTB", charge=0, multiplicity=1, verbosity=0)
    energies.append(atoms.get_potential_energy())
    forces.append(atoms.get_forces())
np.savez(sys.argv[2], energy=np.array(energies), forces=np.concatenate(forces))
"""


@pytest.fixture(scope="module")
def bpa_reference(bpa) -> dict[str, np.ndarray]:
    """Energies and forces from direct tblite calls, in a process of one OpenMP thread (as the
    workers): several threads on a busy machine make tblite many times slower."""
    path = bpa.with_suffix(".npz")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", REFERENCE, str(bpa), str(path)], check=True, env=env)
    return dict(np.load(path))


@pytest.fixture
def dask_client():
    """A client of a two-worker Dask cluster on 127.0.0.1, as someone else would have started."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def wait_for_results(journal: Path, proc: subprocess.Popen, n: int) -> None:
    """Until the journal holds ``n`` results, while ``proc`` runs."""
    deadline = time.monotonic() + 120
    while not (journal.exists() and journal.read_bytes().count(b"\n") > n):
        assert proc.poll() is None, "finished before it could be interrupted"
        assert time.monotonic() < deadline, "no results"
        time.sleep(0.02)


def labelled_once(out: Path, reference: dict[str, np.ndarray]) -> tuple[Store, list[dict]]:
    """The store at ``out`` and its journal's records, checked: every structure once in both,
    with the reference energies and forces."""
    store = Store(out)
    records = [json.loads(line) for line in (out / JOURNAL_IN_STORE).read_bytes().splitlines()]
    assert sorted(r["i"] for r in records[1:]) == list(range(len(reference["energy"])))
    assert store.manifest.n_structures == len(reference["energy"])
    s, _ = store.read()
    for label in ("energy", "forces"):
        np.testing.assert_allclose(
            s.labels[("gfn2-xtb", label)].values, reference[label], rtol=0, atol=1e-8
        )
    return store, records[1:]


def test_a_worker_killed_mid_run_loses_nothing_and_repeats_nothing(
    bpa, bpa_reference, dask_client, tmp_path
):
    address = dask_client.scheduler.address
    out = tmp_path / "x"
    journal = journal_path(out)
    command = [sys.executable, "-m", "mfdata.cli", "label", str(bpa), "--level", "gfn2-xtb"]
    command += ["--scheduler", address, "--out", str(out)]
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        wait_for_results(journal, proc, 5)
        victim = next(w for w, keys in dask_client.processing().items() if keys)
        pid = dask_client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        _, done_at_kill, _ = read_journal(journal)
        assert proc.wait(timeout=120) == 0, stderr.seek(0) or stderr.read()
    assert len(done_at_kill) < 50
    (removed,) = [e for _, e in dask_client.get_events(victim) if e["action"] == "remove-worker"]
    lost = [key for key in removed["processing-tasks"] if key.startswith("label-gfn2-xtb")]
    assert lost, "the killed worker was computing nothing of this run"
    store, records = labelled_once(out, bpa_reference)
    assert store.manifest.provenance.labelling[0].scheduler == address
    assert {r["scheduler"] for r in records} == {address}
    assert victim in {r["worker"] for r in records}


def test_a_killed_client_resumes_where_it_stopped(bpa, bpa_reference, tmp_path):
    import psutil

    out = tmp_path / "y"
    journal = journal_path(out)
    args = ["label", str(bpa), "--level", "gfn2-xtb", "--workers", "2", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfdata.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_results(journal, proc, 5)
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, "the killed client's worker processes kept running"
    _, done_before, _ = read_journal(journal)
    assert 5 <= len(done_before) < 50

    assert "resuming" in run_cli(*args).stderr
    store, records = labelled_once(out, bpa_reference)
    resumed = records[len(done_before) :]
    assert len(resumed) == 50 - len(done_before)
    assert not {r["i"] for r in resumed} & set(done_before), "a journaled structure was redone"
    assert {r["pid"] for r in resumed}.isdisjoint({r["pid"] for r in done_before.values()})
    assert store.manifest.provenance.labelling[0].scheduler == "local:2"


def test_an_item_that_kills_every_worker_is_named_alone():
    import dask

    from mfdata.dask_cluster import TaskFailed, dask_client, in_batches

    def die_on_ten(items: list[int]) -> list[int]:
        """Kills its worker process when given item 10, as a crashing program would. Local, so
        that Dask sends it by value: the workers need not import this test module."""
        if 10 in items:
            os._exit(1)
        return items

    finished = []
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),  # one try, not four
        dask_client("local:2", at_most=2) as client,
        pytest.raises(TaskFailed) as failed,
    ):
        for items in in_batches(client, die_on_ten, (), list(range(40)), lambda i: i, "t"):
            finished += items
    assert failed.value.items == [10], "not the item that kills, or not it alone"
    reason = failed.value.reason
    assert "killed every worker it ran on, with nothing else in flight (tries: 1;" in reason
    assert 10 not in finished and len(finished) == len(set(finished))


def test_resume_refuses_a_journal_of_another_run(water, tmp_path):
    out = tmp_path / "x"
    journal_path(out).write_text(
        json.dumps({"journal": "mfdata label", "level": "gfn1-xtb"}) + "\n", encoding="utf-8"
    )
    proc = run_cli("label", water, "--level", "gfn2-xtb", "--out", out, check=False)
    assert proc.returncode == 2
    assert "another labelling run" in proc.stderr and "level" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--level", "wb97x-631gd"], "no compute recipe"),
        (["--level", "ccsdt-ccpvdz-pyscf", "--labels", "forces"], "computes only energy"),
        (["--level", "gfn2-xtb", "--n", "7"], "has 6 structures"),
        (["--level", "gfn2-xtb", "--charge", "1"], "states charge 0, but --charge 1"),
        (["--level", "gfn2-xtb", "--multiplicity", "2"], "states multiplicity 1"),
        (["--level", "nonsense"], "unknown level"),
        (["--level", "gfn2-xtb", "--workers", "2", "--scheduler", "local:2"], "give one"),
        (["--level", "gfn2-xtb", "--scheduler", "local:0"], "need local:N (N >= 1"),
    ],
)
def test_bad_requests_fail_before_any_work(water, tmp_path, args, message):
    out = tmp_path / "x"
    proc = run_cli("label", water, *args, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and not journal_path(out).exists()


def test_existing_output_is_refused(water, tmp_path):
    (tmp_path / "x").mkdir()
    proc = run_cli("label", water, "--level", "gfn2-xtb", "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_charge_is_never_guessed(tmp_path):
    plain = tmp_path / "plain.xyz"
    ase.io.write(plain, water_frames(2), format="xyz")  # plain xyz: no charge, no multiplicity
    out = tmp_path / "x"
    proc = run_cli("label", plain, "--level", "gfn2-xtb", "--out", out, check=False)
    assert proc.returncode == 2 and "does not state its charge; pass --charge" in proc.stderr
    proc = run_cli(
        "label", plain, "--level", "gfn2-xtb", "--charge", "0", "--out", out, check=False
    )
    assert proc.returncode == 2 and "multiplicity" in proc.stderr
    run_cli(
        "label", plain, "--level", "gfn2-xtb", "--charge", "0", "--multiplicity", "1", "--out", out
    )
    store = Store(out)
    assert store.manifest.provenance.labelling[0].charge == 0
    s, _ = store.read()
    assert (s.charge == 0).all() and (s.multiplicity == 1).all()
    odd = tmp_path / "odd.xyz"
    ase.io.write(odd, water_frames(1, charge=1, multiplicity=1), format="extxyz")
    proc = run_cli("label", odd, "--level", "gfn2-xtb", "--out", tmp_path / "y", check=False)
    assert proc.returncode == 2 and "9 electrons cannot have multiplicity 1" in proc.stderr


def test_subsets_with_one_seed_are_nested(tmp_path):
    source = tmp_path / "ten.xyz"
    ase.io.write(source, water_frames(10, charge=0, multiplicity=1), format="extxyz")
    hashes = {}
    for n in (3, 6):
        out = tmp_path / f"n{n}"
        run_cli("label", source, "--level", "gfn2-xtb", "--n", n, "--seed", "4", "--out", out)
        store = Store(out)
        assert store.manifest.n_structures == n
        assert store.manifest.provenance.labelling[0].subset == (n, 4)
        hashes[n] = set(store.read()[1].tolist())
    assert hashes[3] < hashes[6]
    assert set(subset_indices(10, 3, 4)) < set(subset_indices(10, 6, 4))
    assert set(subset_indices(10, 3, 4)) != set(subset_indices(10, 3, 5))


def test_a_store_is_a_source(water, tmp_path):
    run_cli("label", water, "--level", "gfn2-xtb", "--out", tmp_path / "x")
    run_cli("label", tmp_path / "x", "--level", "gfn1-xtb", "--n", "2", "--out", tmp_path / "y")
    run_cli("merge", tmp_path / "x", tmp_path / "y", "--out", tmp_path / "xy")
    merged = Store(tmp_path / "xy")
    assert merged.manifest.n_structures == 6
    assert merged.manifest.levels["gfn1-xtb"].labels["energy"].count == 2
    assert [run.level for run in merged.manifest.provenance.labelling] == ["gfn2-xtb", "gfn1-xtb"]


def test_sample_writes_n_reproducible_frames(tmp_path):
    args = ["sample", "H2O", "--n", "4", "--temperature", "400", "--interval", "5"]
    args += ["--equilibration", "10", "--seed", "3"]
    run_cli(*args, "--out", tmp_path / "a.xyz")
    run_cli(*args, "--out", tmp_path / "b.xyz")
    frames = ase.io.read(tmp_path / "a.xyz", index=":")
    assert len(frames) == 4
    assert [f.info["step"] for f in frames] == [15, 20, 25, 30]
    assert all(f.info["charge"] == 0 and f.info["multiplicity"] == 1 for f in frames)
    assert all(f.info["temperature_K"] == 400 and f.info["seed"] == 3 for f in frames)
    assert np.ptp([f.positions for f in frames], axis=0).max() > 1e-3  # they move
    assert (tmp_path / "a.xyz").read_text() == (tmp_path / "b.xyz").read_text()
    proc = run_cli(*args, "--out", tmp_path / "a.xyz", check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    proc = run_cli(
        "sample",
        "NotAMolecule",
        "--n",
        "1",
        "--temperature",
        "300",
        "--out",
        tmp_path / "c.xyz",
        check=False,
    )
    assert proc.returncode == 2 and "ase.build.molecule" in proc.stderr


def test_recipes_state_what_the_program_can_compute():
    assert {"gfn2-xtb", "wb97x-631gd-pyscf", "ccsdt-ccpvdz-pyscf"} <= {
        level_id for level_id, level in registry().items() if level.compute
    }
    with pytest.raises(ValidationError, match="no analytic CCSD"):
        ComputeRecipe(program="pyscf", method="ccsd(t)", basis="cc-pvdz", labels=["forces"])
    with pytest.raises(ValidationError, match="xc is required"):
        ComputeRecipe(program="pyscf", method="dft", basis="6-31g*", labels=["energy"])
    with pytest.raises(ValidationError, match="tblite takes none"):
        ComputeRecipe(program="tblite", method="GFN2-xTB", basis="sto-3g", labels=["energy"])


def test_bundled_store_has_three_nested_levels_and_a_scoring_split():
    packaged = Path(str(example_file("methanol-store")))
    manifest_before = (packaged / "manifest.json").read_bytes()
    assert run_cli("verify", packaged).returncode == 0
    path = bundled_store()
    assert path != packaged and bundled_store() == path
    store = Store(path)
    counts = {
        level: {k: v.count for k, v in s.labels.items()}
        for level, s in store.manifest.levels.items()
    }
    assert counts == {
        "gfn2-xtb": {"energy": 1000, "forces": 1000},
        "wb97x-631gd-pyscf": {"energy": 200, "forces": 200},
        "ccsdt-ccpvdz-pyscf": {"energy": 100},
    }
    s, _ = store.read()
    dft = s.labels[("wb97x-631gd-pyscf", "energy")].present
    cc = s.labels[("ccsdt-ccpvdz-pyscf", "energy")].present
    assert not (cc & ~dft).any(), "the CCSD(T) structures are not a subset of the DFT ones"
    info, part, subset_order = read_split(store, "default")
    test = part == info.parts.index("test")
    val = part == info.parts.index("val")
    assert test.any() and val.any() and dft[test | val].all()
    assert cc[test].sum() == 20 and set(subset_order) == set(np.flatnonzero(part == 0))
    assert dft[subset_order[:140]].all() and cc[subset_order[:70]].all()
    assert {run.level for run in store.manifest.provenance.labelling} == set(counts)
    assert store.manifest.licence.startswith("MIT")
    assert (packaged / "manifest.json").read_bytes() == manifest_before


def test_a_damaged_or_hostile_journal_is_one_line(tmp_path):
    """A journal line that is not JSON, not an object, or nested beyond Python's recursion
    limit is an error naming the file and the line, never a traceback or a skipped line."""
    from mfdata.errors import MfkitError

    journal = tmp_path / "label.journal"
    deep = "[" * 100_000 + "]" * 100_000
    for lines, where in (
        ([deep, ""], "line 1"),
        (["[1, 2]", ""], "line 1"),
        (['{"plan": 1}', deep, '{"i": 0}', ""], "line 2"),
        (['{"plan": 1}', "{", '{"i": 0}', ""], "line 2"),
    ):
        journal.write_text("\n".join(lines), encoding="utf-8")
        with pytest.raises(MfkitError, match=f"^{journal}: {where} "):
            read_journal(journal)
