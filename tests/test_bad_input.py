"""Bad input is refused safely: one clear line from the CLI, a non-zero exit, no store left behind.

Each test runs ``mfdata`` as a user would (a subprocess) on a real file made bad in one way, and
checks the exit status, that stderr carries one ``mfdata: error:`` line naming the file and the
record (no traceback), and that nothing that looks like a store is left at the output path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.db
import h5py
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from mfdata.linking import link_sources
from mfdata.readers import read_source
from mfdata.records import InvalidDataError
from mfdata.store.manifest import StoreError
from mfdata.store.store import Store, write_store
from tests.conftest import SHARED, run_cli

ACAC_LEVEL = "pbe-d3-def2svp"


def _check(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    if code != 2:
        return proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mfdata: error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def refused(*args, code: int = 2) -> str:
    """Run ``mfdata ARGS``, expect exit ``code`` and one error line; return that line."""
    return _check(run_cli(*args, check=False), code)


def refused_each(*commands: tuple, code: int = 2) -> list[str]:
    """``refused`` for several commands at once, run side by side (each pays the import)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mfdata.cli", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for args, proc in zip(commands, procs, strict=True):
        stdout, stderr = proc.communicate()
        results.append(
            _check(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr), code)
        )
    return results


def writable_copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    os.chmod(target, 0o644)
    return target


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with the sha256 of its bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        out[relative] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def acac_text(shared: Path, n: int = 5) -> list[list[str]]:
    """The first ``n`` records of a real extxyz file, as lists of lines."""
    lines = (shared / "botnet_acac" / "train_300K.xyz").read_text().splitlines(keepends=True)
    size = int(lines[0]) + 2
    return [lines[i * size : (i + 1) * size] for i in range(n)]


def join(frames: list[list[str]]) -> str:
    return "".join(line for frame in frames for line in frame)


def set_energy(frame: list[str], token: str) -> None:
    """Replace the value of ``energy=`` in the comment line of ``frame``."""
    comment = frame[1]
    start = comment.index("energy=") + len("energy=")
    frame[1] = comment[:start] + token + comment[comment.index(" ", start) :]


@pytest.fixture(scope="module")
def ani_master(tmp_path_factory) -> Path:
    """One store of the real ANI-1x sample, written in-process (faster than the CLI)."""
    path = str(SHARED / "modelforge_testdata" / "ani1_n5.hdf5")
    source = read_source(path)
    out = tmp_path_factory.mktemp("master") / "ani"
    write_store(out, link_sources([source], None), [source])
    return out


@pytest.fixture
def ani_store(tmp_path, ani_master) -> Path:
    """A private copy of the ANI store, for a test to damage."""
    return Path(shutil.copytree(ani_master, tmp_path / "ani"))


# --- labels: NaN marks missing only where the source says so -------------------------------------


def test_nan_ani_energy_is_missing_but_inf_is_an_error(tmp_path, shared):
    path = writable_copy(shared / "modelforge_testdata" / "ani1_n5.hdf5", tmp_path / "ani.h5")
    with h5py.File(path, "r+") as f:
        name = next(iter(f))
        f[name]["wb97x_dz.energy"][1] = np.nan
    run_cli("convert", path, "--out", tmp_path / "nan")
    levels = Store(tmp_path / "nan").info()["levels"]
    assert levels["wb97x-631gd"] == {
        "energy": 7,
        "forces": 8,
        "dipole": 4,
        "cm5_charges": 8,
        "hirshfeld_charges": 8,
    }

    with h5py.File(path, "r+") as f:
        f[name]["wb97x_dz.energy"][1] = np.inf
    line = refused("convert", path, "--out", tmp_path / "inf")
    assert f"{path}: group {name} conformer 1: wb97x-631gd energy is NaN or inf" in line
    assert not (tmp_path / "inf").exists()


def test_nan_extxyz_energy_is_an_error_naming_the_record(tmp_path, shared):
    frames = acac_text(shared)
    set_energy(frames[3], "nan")
    path = tmp_path / "nan.xyz"
    path.write_text(join(frames))
    line = refused("convert", path, "--level", ACAC_LEVEL, "--out", tmp_path / "out")
    assert f"{path}: record 3: {ACAC_LEVEL} energy is NaN or inf" in line
    assert not (tmp_path / "out").exists()


def test_boolean_energy_is_not_a_number(tmp_path, shared):
    frames = acac_text(shared)
    set_energy(frames[2], "T")
    path = tmp_path / "bool.xyz"
    path.write_text(join(frames))
    line = refused("convert", path, "--level", ACAC_LEVEL, "--out", tmp_path / "out")
    assert f"{path}: record 2: energy is True, not a number" in line


# --- shapes and counts ---------------------------------------------------------------------------


def test_forces_with_a_wrong_number_of_rows(tmp_path, shared):
    """ANI HDF5, sGDML npz and ASE db: forces for one atom too few, refused naming the file."""
    ani = writable_copy(shared / "modelforge_testdata" / "ani1_n5.hdf5", tmp_path / "ani.h5")
    with h5py.File(ani, "r+") as f:
        group = f[next(iter(f))]
        forces = group["wb97x_dz.forces"][()]
        del group["wb97x_dz.forces"]
        group["wb97x_dz.forces"] = forces[:, :-1]
    frames = read(shared / "botnet_acac" / "train_300K.xyz", ":4")
    npz = tmp_path / "acac.npz"
    np.savez(
        npz,
        R=np.array([a.positions for a in frames]),
        z=frames[0].numbers,
        E=np.array([a.get_potential_energy() for a in frames]),
        F=np.array([a.get_forces()[:-1] for a in frames]),
        r_unit="Ang",
        e_unit="eV",
        theory="PBE+D3/def2-SVP",
    )
    db_path = tmp_path / "acac.db"
    with ase.db.connect(db_path) as db:
        for i, frame in enumerate(frames):
            atoms = frame.copy()
            forces = frame.get_forces()[: -1 if i == 2 else None]
            energy = frame.get_potential_energy()
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
            db.write(atoms)
    lines = refused_each(
        ("convert", ani, "--out", tmp_path / "a"),
        ("convert", npz, "--out", tmp_path / "b"),
        ("convert", db_path, "--level", ACAC_LEVEL, "--out", tmp_path / "c"),
    )
    assert str(ani) in lines[0]
    assert "wb97x_dz.forces has shape (2, 12, 3), expected (2, 13, 3)" in lines[0]
    assert f"{npz}: F has shape (4, 14, 3), not (4, 15, 3)" in lines[1]
    assert f"{db_path}: record 2: forces has shape (14, 3), expected (15, 3)" in lines[2]
    assert not any((tmp_path / name).exists() for name in "abc")


def test_atom_count_that_disagrees(tmp_path, shared):
    frames = acac_text(shared)
    frames[1][0] = "14\n"
    path = tmp_path / "count.xyz"
    path.write_text(join(frames))
    line = refused("convert", path, "--level", ACAC_LEVEL, "--out", tmp_path / "out")
    assert f"{path}: record 1 (its atom count disagrees with its lines: line 34," in line


def test_truncated_files(tmp_path, shared):
    text = join(acac_text(shared))
    xyz = tmp_path / "cut.xyz"
    xyz.write_text(text[: len(text) - 200])
    data = (shared / "modelforge_testdata" / "SPICE-1.1.4_n2.hdf5").read_bytes()
    h5 = tmp_path / "cut.hdf5"
    h5.write_bytes(data[: len(data) // 2])
    lines = refused_each(
        ("convert", xyz, "--level", ACAC_LEVEL, "--out", tmp_path / "a"),
        ("convert", h5, "--out", tmp_path / "b"),
    )
    assert f"{xyz}: record 4: cannot be read as extxyz" in lines[0]
    assert f"{h5}: " in lines[1]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- units, levels, formats ----------------------------------------------------------------------


def test_unknown_unit(tmp_path, shared):
    path = shared / "qm7b_showcase_hf_mp2_ccsd" / "showcase-mp2-ccsd-energy.xyz"
    key = "MP2_energy_Ha"
    unknown, wrong_kind = refused_each(
        *[
            ("convert", path, "--map", f"{key}=mp2-daugccpvdz:energy", "--units", f"{key}={unit}")
            + ("--out", tmp_path / "out")
            for unit in ("furlong", "Bohr")
        ]
    )
    assert f"{path}: key '{key}' (energy): unknown unit 'furlong'" in unknown
    assert "hartree" in unknown  # the known units are listed
    assert f"{path}: key '{key}' (energy): unit 'Bohr' measures length" in wrong_kind
    assert not (tmp_path / "out").exists()


def test_unknown_level_suggests_close_matches(tmp_path, shared):
    path = shared / "water_dimers_mp2_ccsdt" / "pe_c-mp2_ad_nf_n12_cp_1-800.xyz"
    mapped, level = refused_each(
        ("convert", path, "--map", "Emp2=mp2-augccpvdzz:energy", "--out", tmp_path / "out"),
        ("convert", path, "--level", "wb97x_dzz", "--out", tmp_path / "out"),
    )
    assert "unknown level of theory 'mp2-augccpvdzz'" in mapped
    assert "did you mean" in mapped and "mp2-augccpvdz" in mapped
    assert "did you mean" in level and "wb97x-631gd" in level
    assert not (tmp_path / "out").exists()


def test_sgdml_unknown_user_level_is_not_blamed_on_the_file(tmp_path, shared):
    frames = read(shared / "botnet_acac" / "train_300K.xyz", ":2")
    npz = tmp_path / "acac.npz"
    np.savez(
        npz,
        R=np.array([a.positions for a in frames]),
        z=frames[0].numbers,
        E=np.array([a.get_potential_energy() for a in frames]),
        r_unit="Ang",
        e_unit="eV",
        theory="PBE+D3/def2-SVP",
    )
    line = refused("convert", npz, "--level", "nonsense-level", "--out", tmp_path / "out")
    assert "unknown level of theory 'nonsense-level'" in line and "from the file" not in line


def test_isolated_atoms_with_two_energies_for_one_element(tmp_path, shared):
    """Two isolated C atoms with different energies: no silent choice between them."""
    text = (shared / "botnet_3BPA" / "iso_atoms.xyz").read_text()
    carbon = text.splitlines(keepends=True)[:3]  # the first record is the C atom
    assert carbon[2].startswith("C")
    path = tmp_path / "iso.xyz"
    path.write_text(text + "".join(carbon).replace("energy=-1029.48", "energy=-1029.40"))
    with pytest.raises(InvalidDataError, match=r"iso\.xyz: record 4 \(isolated atom\): C at"):
        read_source(str(path), level="wb97x-631gd", all_isolated=True)


def test_duplicate_ids_refuse_linking(tmp_path, shared):
    frames = read(shared / "water_dimers_mp2_ccsdt" / "pe_c-mp2_ad_nf_n12_cp_1-800.xyz", ":6")
    for i, atoms in enumerate(frames):
        atoms.info["conf"] = i if i != 4 else 1
    write(tmp_path / "a.xyz", frames)
    source = read_source(
        str(tmp_path / "a.xyz"),
        maps=[("Emp2", "mp2-augccpvdz", "energy")],
        units={"Emp2": "eV"},
        id_key="conf",
    )
    with pytest.raises(InvalidDataError, match=r"a\.xyz: record 4: id 1 \(id:conf\) is also"):
        link_sources([source, source], "id:conf")


# --- the output path and stores on disk ----------------------------------------------------------


def test_out_that_exists_is_untouched(tmp_path, shared, ani_store):
    source = shared / "modelforge_testdata" / "ani1_n5.hdf5"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me\n")
    for target in (other, ani_store):
        before = snapshot(target)
        line = refused("convert", source, "--out", target)
        assert f"{target}: already exists" in line
        assert snapshot(target) == before
    assert not list(tmp_path.glob(".*.partial-*"))


def test_directory_without_a_manifest_is_not_a_store(tmp_path, ani_store):
    empty = tmp_path / "empty"
    empty.mkdir()
    (ani_store / "manifest.json").unlink()
    for path in (empty, ani_store):
        with pytest.raises(StoreError, match=r"not an mfkit store \(no manifest.json\)"):
            Store(path)
    for line in refused_each(("info", empty), ("verify", ani_store)):
        assert "not an mfkit store (no manifest.json)" in line


def test_truncated_manifest_is_refused(ani_store):
    manifest = ani_store / "manifest.json"
    text = manifest.read_text()
    for cut in (0, 1, len(text) // 3, len(text) // 2, len(text) - 3):
        manifest.write_text(text[:cut])
        with pytest.raises(StoreError, match="unreadable manifest"):
            Store(ani_store)
    for line in refused_each(("info", ani_store), ("verify", ani_store)):
        assert f"{manifest}: unreadable manifest" in line
    manifest.write_text("[1, 2]")
    with pytest.raises(StoreError, match="not a JSON object"):
        Store(ani_store)


def test_invalid_manifest_is_one_line(ani_store):
    manifest = ani_store / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["name"]
    data["n_atoms"] = -1
    manifest.write_text(json.dumps(data))
    line = refused("info", ani_store)
    assert f"{manifest}: invalid manifest: name: Field required (and 1 more)" in line


def test_newer_format_version_is_refused(ani_store):
    manifest = ani_store / "manifest.json"
    data = json.loads(manifest.read_text())
    data["format_version"] = "2.0"
    manifest.write_text(json.dumps(data))
    for line in refused_each(("info", ani_store), ("verify", ani_store)):
        assert "store format version 2.0 is newer than this mfkit understands" in line
        assert "upgrade mfkit" in line


def _chunks(store: Path, array: str) -> list[Path]:
    folder = store / "data.zarr" / array
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json")


def test_verify_detects_a_modified_chunk(ani_store):
    assert Store(ani_store).verify() == []
    # a valid chunk with other values: the energies of another level
    target = _chunks(ani_store, "labels/wb97x-631gd/energy/values")[0]
    other = _chunks(ani_store, "labels/wb97x-def2tzvpp/energy/values")[0]
    original = target.read_bytes()
    target.write_bytes(other.read_bytes())
    stderr = refused("verify", ani_store, code=1)
    assert "labels/wb97x-631gd/energy/values: checksum mismatch" in stderr
    # bytes that do not decode at all
    target.write_bytes(b"\x00garbage" * 8)
    assert "cannot read arrays" in refused("verify", ani_store, code=1)
    target.write_bytes(original)
    assert Store(ani_store).verify() == []


def test_partial_directory_is_never_a_store(tmp_path, ani_store):
    """Even a complete store, renamed to the temporary name, is refused: the name marks it."""
    partial = tmp_path / ".ani.partial-0123abcd"
    shutil.copytree(ani_store, partial)
    with pytest.raises(StoreError, match="interrupted conversion"):
        Store(partial)
    assert "interrupted conversion" in refused("info", partial)


# --- a conversion killed mid-write ---------------------------------------------------------------


def _big_ani2x(path: Path, conformers: int = 200_000, atoms: int = 12) -> None:
    """An ANI-2x-layout file large enough that writing its store takes about a second."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        group = f.create_group(f"{atoms:03d}")
        group["species"] = rng.choice([1, 6, 7, 8], size=(conformers, atoms)).astype(np.uint8)
        group["coordinates"] = (rng.normal(size=(conformers, atoms, 3)) * 3).astype(np.float32)
        group["energies"] = rng.normal(size=conformers) - 200
        # Hartree/Å, as the release: about 1 eV/Å RMS, plausible (1 Hartree/Å RMS is refused)
        group["forces"] = (0.04 * rng.normal(size=(conformers, atoms, 3))).astype(np.float32)


@pytest.mark.slow
def test_sigkill_mid_write_leaves_nothing_that_looks_like_a_store(tmp_path):
    source = tmp_path / "big.h5"
    _big_ani2x(source)
    out = tmp_path / "stores" / "big"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfdata.cli", "convert", str(source), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        partial: list[Path] = []
        while not partial and proc.poll() is None and time.monotonic() < deadline:
            partial = list(out.parent.glob(".big.partial-*")) if out.parent.exists() else []
            time.sleep(0.002)
        # kill it once the first array chunks are on disk: mid-write, not before
        while proc.poll() is None and time.monotonic() < deadline:
            if partial and any((partial[0] / "data.zarr").rglob("c/*")):
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the conversion ended before the kill"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert partial, "no partial directory appeared"
    assert not out.exists()
    leftovers = list(out.parent.glob(".big.partial-*"))
    assert leftovers and (leftovers[0] / "data.zarr").exists(), "killed before it wrote anything"
    for target in (out, leftovers[0]):
        with pytest.raises(StoreError):
            Store(target)
    lines = refused_each(
        ("info", out), ("verify", out), ("info", leftovers[0]), ("verify", leftovers[0])
    )
    assert "no such store path" in lines[0] and "no such store path" in lines[1]
    assert "interrupted conversion" in lines[2] and "interrupted conversion" in lines[3]
