"""Converting many files without linking: file by file, in bounded memory (issue 13), with the
values and manifest of a conversion in memory, and nothing left behind by a bad file."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mfdata.convert import convert
from mfdata.errors import UsageError
from mfdata.records import MAX_SOURCES
from mfdata.store.store import Store
from tests.conftest import run_cli

LEVEL = "pbe-d3-def2svp"


def write_files(root, n_files: int, bad: int | None = None) -> list[str]:
    """``n_files`` extxyz files of three small molecules each; the first has no forces (forces
    appear in a later file), ``bad`` has a NaN energy in its second record."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n_files):
        frames = []
        for i in range(3):
            n = int(rng.integers(2, 6))
            atoms = Atoms(numbers=rng.choice([1, 6, 8], size=n), positions=rng.normal(0, 2, (n, 3)))
            energy = float("nan") if (k == bad and i == 1) else -10.0 * n + rng.normal()
            forces = None if k == 0 else rng.normal(0, 0.5, (n, 3))
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
            atoms.info["molecule"] = f"m{k % 4}"
            frames.append(atoms)
        path = root / f"part{k:03d}.xyz"
        ase.io.write(path, frames, format="extxyz")
        paths.append(str(path))
    return paths


def test_file_by_file_equals_in_memory(tmp_path):
    paths = write_files(tmp_path, 30)
    common = ("--level", LEVEL, "--group-key", "molecule")
    run_cli("convert", *paths, *common, "--out", tmp_path / "streamed")
    run_cli("convert", *paths, *common, "--link-by", "geometry", "--out", tmp_path / "linked")
    streamed, linked = Store(tmp_path / "streamed"), Store(tmp_path / "linked")
    a, a_hash = streamed.read()
    b, b_hash = linked.read()
    assert a.n_structures == 90 and sorted(a.labels) == [(LEVEL, "energy"), (LEVEL, "forces")]
    for field in ("numbers", "positions", "n_atoms", "cell", "pbc", "charge", "group", "source"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.group_names == b.group_names
    for key in a.labels:
        np.testing.assert_array_equal(a.labels[key].values, b.labels[key].values)
        np.testing.assert_array_equal(a.labels[key].present, b.labels[key].present)
    np.testing.assert_array_equal(a_hash, b_hash)
    assert not a.labels[(LEVEL, "forces")].present[:3].any()
    m, n = streamed.manifest, linked.manifest
    assert m.checksums == n.checksums and m.checksum == n.checksum
    assert (m.n_structures, m.n_atoms, m.elements, m.levels) == (
        n.n_structures,
        n.n_atoms,
        n.elements,
        n.levels,
    )
    assert m.provenance.inputs == n.provenance.inputs
    assert [i.path for i in m.provenance.inputs] == paths
    assert streamed.verify() == []


def test_bad_file_in_the_middle_leaves_nothing(tmp_path):
    paths = write_files(tmp_path, 10, bad=5)
    out = tmp_path / "out" / "store"
    proc = run_cli("convert", *paths, "--level", LEVEL, "--out", out, check=False)
    assert proc.returncode != 0
    assert "part005.xyz" in proc.stderr and "record 1" in proc.stderr
    assert "NaN" in proc.stderr and "Traceback" not in proc.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_too_many_files_for_the_source_index(tmp_path):
    with pytest.raises(UsageError, match=f"at most {MAX_SOURCES}"):
        convert([tmp_path / "x.xyz"] * (MAX_SOURCES + 1), tmp_path / "s", level=LEVEL)
    assert not (tmp_path / "s").exists()
