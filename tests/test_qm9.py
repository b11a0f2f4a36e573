"""The QM9 reader: files of the data descriptor's layout, converted through the real command line.

The layout is the data descriptor's (Ramakrishnan et al., Scientific Data 1, 140022 (2014),
Tables 2 and 3): one ``dsgdb9nsd_NNNNNN.xyz`` per molecule with the atom count; ``gdb <index>``
and 15 tab-separated scalars (A B C in GHz, mu in Debye, alpha in Bohr^3, homo lumo gap in
Hartree, r2 in Bohr^2, zpve U0 U H G in Hartree, Cv in cal/mol K); one ``symbol x y z charge``
line per atom (Å, e); then harmonic frequencies, two SMILES and two InChI; some numbers written
with Mathematica's ``*^`` exponent. The release is one .tar.bz2 of such files. The molecules below
are small and their numbers plausible (methane's are the release's first file).
"""

from __future__ import annotations

import io
import tarfile

import ase.units
import numpy as np
import pytest

from mfdata.store.store import Store
from tests.conftest import run_cli

LEVEL = "b3lyp-631g2dfp"
UNREAD = [
    "A",
    "B",
    "C",
    "Cv",
    "G",
    "H",
    "U",
    "U0",
    "alpha",
    "frequencies",
    "gap",
    "homo",
    "lumo",
    "mu",
    "r2",
    "zpve",
]

# index: (scalars after "gdb <index>", atoms as (symbol, x, y, z, charge) tokens, frequencies,
# SMILES, InChI). Methane's second H has y in '*^' notation, ammonia's A and a charge too.
MOLECULES = {
    1: (
        "157.7118 157.70997 157.70699 0. 13.21 -0.3877 0.1171 0.5048 35.3641 0.044749 "
        "-40.47893 -40.476062 -40.475117 -40.498597 6.469",
        [
            ("C", "-0.0126981359", "1.0858041578", "0.0080009958", "-0.535689"),
            ("H", "0.002150416", "-6.0313176*^-3", "0.0019761204", "0.133921"),
            ("H", "1.0117308433", "1.4637511618", "0.0002765748", "0.133922"),
            ("H", "-0.540815069", "1.4475266138", "-0.8766437152", "0.133923"),
            ("H", "-0.5238136345", "1.4379326443", "0.9063972942", "0.133923"),
        ],
        "1341.307 1341.3284 1341.365 1562.6731 1562.7453 3038.3205 3151.6034 3151.6788 3151.7078",
        "C C",
        "InChI=1S/CH4/h1H4 InChI=1S/CH4/h1H4",
    ),
    2: (
        "2.93846*^2 293.60113 191.39397 1.6256 9.46 -0.257 0.0829 0.3399 26.1563 0.034358 "
        "-56.525887 -56.523026 -56.522082 -56.544961 6.316",
        [
            ("N", "-0.0404260543", "1.0241077531", "0.0625637998", "-0.707143"),
            ("H", "0.0172574639", "0.0125452063", "-0.0273771593", "0.235712"),
            ("H", "0.9157893661", "1.3587451948", "-0.0287577581", "2.35712*^-1"),
            ("H", "-0.5202777357", "1.3435321258", "-0.7755426124", "0.235719"),
        ],
        "1130.8015 1714.8286 1714.9032 3561.3063 3683.8434 3684.1013",
        "N N",
        "InChI=1S/H3N/h1H3 InChI=1S/H3N/h1H3",
    ),
    3: (
        "799.58812 437.90386 282.94545 1.8511 6.31 -0.2928 0.0687 0.3615 19.0002 0.021375 "
        "-76.404702 -76.401867 -76.400922 -76.422349 6.002",
        [
            ("O", "-0.0343604951", "0.9775395708", "0.0076015923", "-0.589706"),
            ("H", "0.0647664923", "0.0205721989", "0.0015346341", "0.294853"),
            ("H", "0.8717903737", "1.3007924048", "0.0006931336", "0.294853"),
        ],
        "1621.1948 3939.6914 4065.7271",
        "O O",
        "InChI=1S/H2O/h1H2 InChI=1S/H2O/h1H2",
    ),
}


def number(token: str) -> float:
    return float(token.replace("*^", "e"))


def xyz_text(index: int, n_atoms: int | None = None, atoms=None, scalars=None) -> str:
    """One molecule file as the release writes it (tabs, a trailing tab after the scalars)."""
    default_scalars, default_atoms, frequencies, smiles, inchi = MOLECULES[index]
    atoms = default_atoms if atoms is None else atoms
    scalars = (default_scalars if scalars is None else scalars).split()
    lines = [
        str(len(atoms) if n_atoms is None else n_atoms),
        "\t".join([f"gdb {index}", *scalars]) + "\t",
        *("\t".join(atom) for atom in atoms),
        "\t".join(frequencies.split()),
        "\t".join(smiles.split()) + "\t",
        "\t".join(inchi.split()),
    ]
    return "\n".join(lines) + "\n"


def write_xyz(folder, index: int, text: str | None = None):
    path = folder / f"dsgdb9nsd_{index:06d}.xyz"
    path.write_text(xyz_text(index) if text is None else text)
    return path


def write_archive(path, members: dict[str, str], directory: str | None = "dsgdb9nsd") -> None:
    """A tar archive (compression from the suffix) of ``members``, in that order."""
    mode = {".bz2": "w:bz2", ".gz": "w:gz"}.get(path.suffix, "w")
    with tarfile.open(path, mode) as tar:
        if directory is not None:
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{directory}/{name}" if directory else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def expected(indices):
    """Positions, numbers, charges and energies (eV) the store must hold, from the tokens."""
    from ase.data import atomic_numbers

    atoms = [atom for i in indices for atom in MOLECULES[i][1]]
    positions = np.array([[number(t) for t in atom[1:4]] for atom in atoms])
    charges = np.array([number(atom[4]) for atom in atoms])
    numbers = np.array([atomic_numbers[atom[0]] for atom in atoms])
    energies = []
    for i in indices:
        scalars = [number(t) for t in MOLECULES[i][0].split()]
        energies.append((scalars[10] - scalars[9]) * ase.units.Hartree)  # U0 - zpve
    return positions, numbers, charges, np.array(energies)


def check_store(out, indices, n_inputs: int) -> None:
    store = Store(out)
    s, _ = store.read()
    positions, numbers, charges, energies = expected(indices)
    assert s.n_structures == len(indices)
    assert sorted(s.labels) == [(LEVEL, "charges"), (LEVEL, "energy")]
    np.testing.assert_allclose(s.labels[(LEVEL, "energy")].values, energies, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(s.labels[(LEVEL, "charges")].values, charges)
    np.testing.assert_array_equal(s.positions, positions)
    np.testing.assert_array_equal(s.numbers, numbers)
    np.testing.assert_array_equal(s.n_atoms, [len(MOLECULES[i][1]) for i in indices])
    assert not s.pbc.any()
    manifest = store.manifest
    assert manifest.levels[LEVEL].labels["energy"].source_units == ["Hartree"]
    assert manifest.levels[LEVEL].labels["charges"].source_units == ["e"]
    assert len(manifest.provenance.inputs) == n_inputs
    for source in manifest.provenance.inputs:
        assert source.reader == "qm9"
        assert source.unread_keys == UNREAD


def test_single_files_through_the_catalog(tmp_path):
    paths = [write_xyz(tmp_path, i) for i in (1, 3)]
    out = tmp_path / "s"
    proc = run_cli("convert", *map(str, paths), "--catalog", "qm9", "--out", str(out))
    assert "energy is U0 - zpve" in proc.stderr
    assert "properties not stored: " + ", ".join(UNREAD) in proc.stderr
    check_store(out, [1, 3], n_inputs=2)


def test_archive_through_the_catalog_and_detected(tmp_path):
    """The release's .tar.bz2 (a directory entry first, then the files in the archive's order,
    which need not be sorted) with --catalog qm9, and the same archive detected without it."""
    from mfdata.readers import detect_format, read_source

    archive = tmp_path / "dsgdb9nsd.xyz.tar.bz2"
    order = [3, 1, 2]
    write_archive(archive, {f"dsgdb9nsd_{i:06d}.xyz": xyz_text(i) for i in order})
    out = tmp_path / "s"
    run_cli("convert", str(archive), "--catalog", "qm9", "--out", str(out))
    check_store(out, order, n_inputs=1)

    assert detect_format(str(archive)) == "qm9"
    assert detect_format(str(write_xyz(tmp_path, 2))) == "qm9"
    source = read_source(str(archive))
    assert list(source.ids) == ["3", "1", "2"]  # the gdb index: each molecule's source id
    assert source.describe(1) == "member dsgdb9nsd/dsgdb9nsd_000001.xyz (gdb 1)"
    proc = run_cli("convert", str(archive), "--out", str(tmp_path / "detected"))
    assert f"qm9 release, level {LEVEL}" in proc.stderr
    check_store(tmp_path / "detected", order, n_inputs=1)

    plain = tmp_path / "flat.tar"  # no directory, no compression
    write_archive(plain, {f"dsgdb9nsd_{i:06d}.xyz": xyz_text(i) for i in (2,)}, directory=None)
    assert list(read_source(str(plain)).ids) == ["2"]


def bad_cases(tmp_path) -> list[tuple[object, str]]:
    """(file, what its one-line error must say): the atom count against the atom lines, a
    non-numeric value, NaN and inf, an unknown element, truncated files and archives."""
    methane = MOLECULES[1][1]
    cases = []

    def case(name: str, text: str, message: str) -> None:
        folder = tmp_path / name
        folder.mkdir()
        cases.append((write_xyz(folder, 1, text), message))

    case("count", xyz_text(1, n_atoms=6), "line 1 gives 6 atoms, but 5 atom lines follow")
    case("fewer", xyz_text(1, n_atoms=4), "line 1 gives 4 atoms, but 5 atom lines follow")
    bad = [*methane[:2], ("H", "1.01a", "1.46", "0.0", "0.13"), *methane[3:]]
    case("text", xyz_text(1, atoms=bad), "line 5: x is '1.01a', not a number")
    bad = [*methane[:3], ("H", "-0.54", "nan", "-0.87", "0.13"), *methane[4:]]
    case("nan", xyz_text(1, atoms=bad), "line 6: y is 'nan', not a finite number")
    bad = [("C", "-0.01", "1.08", "0.008", "inf"), *methane[1:]]
    case("charge", xyz_text(1, atoms=bad), "line 3: Mulliken charge is 'inf', not a finite")
    scalars = MOLECULES[1][0].replace("-40.47893", "Infinity")
    case("energy", xyz_text(1, scalars=scalars), "line 2: U0 (the energy) is 'Infinity'")
    case("short", xyz_text(1, scalars="1 2 3"), "line 2: 3 values after 'gdb 1', expected 15")
    bad = [*methane[:4], ("Xx", "-0.52", "1.43", "0.90", "0.13")]
    case("element", xyz_text(1, atoms=bad), "line 7: unknown element symbol 'Xx'")
    lines = xyz_text(1).splitlines()
    case("cut_atoms", "\n".join(lines[:5]), "but 3 atom lines follow and the file ends there")
    case(
        "cut_tail",
        "\n".join(lines[:8]),
        "truncated: the file ends at line 8, without its SMILES and InChI lines",
    )

    archive = tmp_path / "bad_member.tar.gz"
    write_archive(archive, {"dsgdb9nsd_000003.xyz": xyz_text(3), "dsgdb9nsd_000001.xyz": ""})
    cases.append((archive, "member dsgdb9nsd/dsgdb9nsd_000001.xyz: empty file"))
    archive = tmp_path / "bad_value.tar"
    bad = [*methane[:1], ("H", "0.0", "0.0", "1.2.3", "0.13"), *methane[2:]]
    write_archive(archive, {"dsgdb9nsd_000001.xyz": xyz_text(1, atoms=bad)})
    cases.append((archive, "member dsgdb9nsd/dsgdb9nsd_000001.xyz: line 4: z is '1.2.3'"))

    members = {f"dsgdb9nsd_{i:06d}.xyz": xyz_text(i) for i in (1, 2, 3)}
    whole = tmp_path / "whole.tar.bz2"
    write_archive(whole, members)
    cut = tmp_path / "cut.tar.bz2"
    cut.write_bytes(whole.read_bytes()[:-40])
    cases.append((cut, "truncated"))
    plain = tmp_path / "plain.tar"
    write_archive(plain, members)
    with tarfile.open(plain) as tar:
        last = tar.getmembers()[-1].offset  # cut at a header: tarfile alone would stop there
    cut = tmp_path / "cut.tar"
    cut.write_bytes(plain.read_bytes()[:last])
    cases.append((cut, "archive truncated after member dsgdb9nsd/dsgdb9nsd_000002.xyz"))
    return cases


def test_bad_input_is_one_line_naming_the_file(tmp_path):
    """Every case read in-process (fast), and one of each kind through the command line: exit
    status 2, one line naming the file (and archive member), nothing written."""
    from mfdata.errors import MfkitError
    from mfdata.readers import read_source

    cases = bad_cases(tmp_path)
    for path, message in cases:
        with pytest.raises(MfkitError) as error:
            read_source(str(path), format="qm9")
        text = str(error.value)
        assert text.startswith(f"{path}: ") and message in text, text
        assert "\n" not in text, text
    for path, message in [cases[i] for i in (0, 2, 3, 7, 9, 11, -1)]:
        out = tmp_path / f"store_{path.parent.name}_{path.name}"
        proc = run_cli("convert", str(path), "--catalog", "qm9", "--out", str(out), check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"mfdata: error: {path}: "), proc.stderr
        assert message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not out.exists()


@pytest.mark.parametrize("suffix", [".tar.bz2", ".xyz"])
def test_other_files_are_not_taken_for_qm9(tmp_path, suffix):
    """An extended XYZ stays extxyz; an archive of something else is not recognised."""
    from mfdata.errors import MfkitError
    from mfdata.readers import detect_format

    if suffix == ".xyz":
        path = tmp_path / "frames.xyz"
        path.write_text("2\nProperties=species:S:1:pos:R:3 energy=-1.0\nH 0 0 0\nH 0 0 0.74\n")
        assert detect_format(str(path)) == "extxyz"
        return
    path = tmp_path / "other.tar.bz2"
    write_archive(path, {"notes.txt": "hello\n"}, directory=None)
    with pytest.raises(MfkitError, match="layout not recognised; the .tar.bz2 files mfkit reads"):
        detect_format(str(path))
