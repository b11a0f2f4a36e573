"""Fuzzing the readers with corrupt inputs: bad input is an error naming the file, never a crash.

The property, for every format: ``read_source`` either returns a Source that passes ``validate``,
or raises a user error (an :class:`~mfdata.errors.MfkitError`: InvalidDataError, UnitError,
UnknownLevelError...) whose message names the file. Any other exception (IndexError, KeyError,
TypeError, ...) fails the test, and so does a structure or label dropped without a word. Where a
corruption cannot be read as valid data (NaN in a geometry, inf in a label, a wrong atom count, a
dropped column) the test demands the error, and that it names the record.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import ase.db
import h5py
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfdata.errors import MfkitError
from mfdata.readers import read_source
from mfdata.records import Source, validate

from .conftest import SHARED

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ACAC = SHARED / "botnet_acac" / "train_300K.xyz"
ACAC_LEVEL = "pbe-d3-def2svp"


def outcome(path: Path, **options) -> tuple[Source | None, str]:
    """``read_source(path)``: (source, "") when it reads, (None, message) on a user error.

    Any other exception propagates and fails the test; a source must pass ``validate`` again and
    an error must name the file.
    """
    try:
        source = read_source(str(path), **options)
    except MfkitError as exc:
        message = str(exc)
        assert str(path) in message, f"the error does not name the file: {message}"
        assert "\n" not in message.strip(), f"not a one-line reason: {message!r}"
        return None, message
    validate(source)
    return source, ""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# --- extxyz -------------------------------------------------------------------------------------

N_FRAMES = 3


def _acac_frames() -> list[list[str]]:
    """The first frames of a real extxyz file, as lines (with their newlines)."""
    lines = ACAC.read_text().splitlines(keepends=True)
    size = int(lines[0]) + 2
    return [lines[i * size : (i + 1) * size] for i in range(N_FRAMES)]


FRAMES = _acac_frames()
N_ATOMS = len(FRAMES[0]) - 2
XYZ = "".join(line for frame in FRAMES for line in frame)


def _write_xyz(workdir: Path, text: str | bytes) -> Path:
    path = workdir / "fuzz.xyz"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _all_labels_present(source: Source) -> None:
    """Every frame of the base file has energy and forces: none may go missing quietly."""
    labels = source.structures.labels
    assert set(labels) == {(ACAC_LEVEL, "energy"), (ACAC_LEVEL, "forces")}
    for label in labels.values():
        assert label.present.all()


def test_extxyz_base_file_reads(workdir):
    source, _ = outcome(_write_xyz(workdir, XYZ), level=ACAC_LEVEL)
    assert source is not None and source.structures.n_structures == N_FRAMES
    _all_labels_present(source)


@FUZZ
@given(cut=st.integers(0, len(XYZ) - 1))
def test_extxyz_truncated_anywhere(workdir, cut):
    """A cut inside a record is an error; a cut between records keeps every earlier record."""
    source, _ = outcome(_write_xyz(workdir, XYZ[:cut]), level=ACAC_LEVEL)
    ends, last_line_starts, offset = [], [], 0
    for frame in FRAMES:
        size = sum(len(line) for line in frame)
        ends.append(offset + size - 1)  # the frame is complete without its final newline
        last_line_starts.append(offset + size - len(frame[-1]))
        offset += size
    complete = sum(end <= cut for end in ends)
    if source is None:
        return
    n = source.structures.n_structures
    # a cut inside the last number of a record can leave a shorter number: undetectable
    inside_last_line = complete < N_FRAMES and cut > last_line_starts[complete]
    assert n == complete or (n == complete + 1 and inside_last_line), (cut, n, complete)
    _all_labels_present(source)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(XYZ) - 1), st.integers(0, 255)), min_size=1, max_size=4
    )
)
def test_extxyz_replaced_bytes(workdir, edits):
    data = bytearray(XYZ.encode())
    for position, byte in edits:
        data[position] = byte
    outcome(_write_xyz(workdir, bytes(data)), level=ACAC_LEVEL)


@FUZZ
@given(
    frame=st.integers(0, N_FRAMES - 1),
    atom=st.integers(0, N_ATOMS - 1),
    column=st.integers(0, 6),
    token=st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity"]),
)
def test_extxyz_nan_or_inf_is_an_error_naming_the_record(workdir, frame, atom, column, token):
    """NaN or inf in a position, a force or the energy (column 0): extxyz has no missing marker."""
    frames = [list(f) for f in FRAMES]
    if column == 0:
        comment = frames[frame][1]
        start = comment.index("energy=") + len("energy=")
        end = comment.index(" ", start)
        frames[frame][1] = comment[:start] + token + comment[end:]
    else:
        fields = frames[frame][2 + atom].split()
        fields[column] = token
        frames[frame][2 + atom] = " ".join(fields) + "\n"
    source, message = outcome(
        _write_xyz(workdir, "".join(line for f in frames for line in f)), level=ACAC_LEVEL
    )
    assert source is None
    assert f"record {frame}:" in message


@FUZZ
@given(
    frame=st.integers(0, N_FRAMES - 1),
    atoms=st.sets(st.integers(0, N_ATOMS - 1), min_size=1),
    column=st.integers(0, 6),
)
def test_extxyz_dropped_column_is_an_error(workdir, frame, atoms, column):
    frames = [list(f) for f in FRAMES]
    for atom in atoms:
        fields = frames[frame][2 + atom].split()
        del fields[column]
        frames[frame][2 + atom] = " ".join(fields) + "\n"
    source, message = outcome(
        _write_xyz(workdir, "".join(line for f in frames for line in f)), level=ACAC_LEVEL
    )
    assert source is None
    assert f"record {frame}" in message


@FUZZ
@given(
    frame=st.integers(0, N_FRAMES - 1),
    delta=st.integers(-N_ATOMS, 5).filter(lambda d: d != 0),
)
def test_extxyz_wrong_atom_count_is_an_error(workdir, frame, delta):
    frames = [list(f) for f in FRAMES]
    frames[frame][0] = f"{N_ATOMS + delta}\n"
    source, message = outcome(
        _write_xyz(workdir, "".join(line for f in frames for line in f)), level=ACAC_LEVEL
    )
    assert source is None
    assert f"record {frame}" in message


def _number(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


COMMENT_TOKENS = st.one_of(
    st.sampled_from(["T", "F", "abc", "nan", "inf", "1.5", "100000", "-3", "2", '"1 2 3"', '""']),
    st.from_regex(r"[A-Za-z0-9.+-]{1,8}", fullmatch=True),
)


@FUZZ
@given(
    frame=st.integers(0, N_FRAMES - 1),
    key=st.sampled_from(["energy", "total_charge", "multiplicity", "Lattice", "pbc"]),
    token=COMMENT_TOKENS,
)
def test_extxyz_comment_values(workdir, frame, key, token):
    """Energy, charge and multiplicity must be numbers of the right kind; no text, no booleans."""
    frames = [list(f) for f in FRAMES]
    comment = frames[frame][1]
    if key == "energy":
        start = comment.index("energy=") + len("energy=")
        comment = comment[:start] + token + comment[comment.index(" ", start) :]
    elif key == "Lattice":
        start = comment.index('Lattice="') + len('Lattice="')
        comment = comment[:start] + token + comment[comment.index(" ", start) :]
    elif key == "pbc":
        comment = comment.replace('pbc="F F F"', f"pbc={token}")
    else:
        comment = comment.rstrip("\n") + f" {key}={token}\n"
    frames[frame][1] = comment
    path = _write_xyz(workdir, "".join(line for f in frames for line in f))
    source, message = outcome(path, level=ACAC_LEVEL)
    value = _number(token)
    if key == "energy":
        good = value is not None and np.isfinite(value)
    elif key in ("total_charge", "multiplicity"):
        good = value is not None and np.isfinite(value) and value == round(value)
        good = good and abs(value) <= 32767
    else:
        return  # ASE decides what a Lattice or pbc token means; the property above holds
    if good:
        assert source is not None, message
        _all_labels_present(source)
    else:
        assert source is None, f"{key}={token} was accepted"
        assert f"record {frame}" in message


# --- HDF5: ANI-1x, ANI-2x and SPICE layouts built with h5py --------------------------------------

Layout = dict[str, dict[str, tuple[np.ndarray, dict[str, str]]]]


def _ani1x_layout(rng: np.random.Generator) -> Layout:
    """Two formula groups in the ANI-1x release layout, with a CC energy missing (NaN) once."""
    out: Layout = {}
    for name, z, c in (("C1H4", [6, 1, 1, 1, 1], 3), ("H2O1", [8, 1, 1], 2)):
        n = len(z)
        cc = rng.normal(size=c) - 40
        cc[0] = np.nan
        out[name] = {
            "atomic_numbers": (np.array(z, dtype=np.uint8), {}),
            "coordinates": (rng.normal(size=(c, n, 3)).astype(np.float32), {}),
            "wb97x_dz.energy": (rng.normal(size=c) - 40, {}),
            "wb97x_dz.forces": (rng.normal(size=(c, n, 3)).astype(np.float32), {}),
            "hf_dz.energy": (rng.normal(size=c) - 40, {}),
            "mp2_dz.corr_energy": (rng.normal(size=c) * 0.1, {}),
            "ccsd(t)_cbs.energy": (cc, {}),
        }
    return out


def _ani2x_layout(rng: np.random.Generator) -> Layout:
    out: Layout = {}
    for name, n, c in (("002", 2, 3), ("003", 3, 2)):
        out[name] = {
            "species": (rng.choice([1, 6, 7, 8], size=(c, n)).astype(np.int64), {}),
            "coordinates": (rng.normal(size=(c, n, 3)).astype(np.float32), {}),
            "energies": (rng.normal(size=c) - 40, {}),
            "forces": (rng.normal(size=(c, n, 3)), {}),
        }
    return out


def _spice_layout(rng: np.random.Generator) -> Layout:
    out: Layout = {}
    for name, z, c, smiles in (
        ("ethyne-na", [6, 6, 1, 1, 11], 3, "C#C.[Na+]"),
        ("w", [8, 1, 1], 2, "O"),
    ):
        n = len(z)
        out[name] = {
            "atomic_numbers": (np.array(z, dtype=np.int16), {}),
            "conformations": (rng.normal(size=(c, n, 3)).astype(np.float32), {"units": "bohr"}),
            "dft_total_energy": (rng.normal(size=c) - 40, {"units": "hartree"}),
            "dft_total_gradient": (
                rng.normal(size=(c, n, 3)).astype(np.float32),
                {"units": "hartree/bohr"},
            ),
            "smiles": (np.array([smiles.encode()], dtype=object), {}),
        }
    return out


LAYOUTS = {"ani1x": _ani1x_layout, "ani2x": _ani2x_layout, "spice": _spice_layout}
COORDINATES = {"ani1x": "coordinates", "ani2x": "coordinates", "spice": "conformations"}
# datasets where NaN marks a missing label (per conformer): ANI energies
NAN_MEANS_MISSING = {"ani1x": (".energy", ".corr_energy"), "ani2x": ("energies",), "spice": ()}


def _write_h5(path: Path, layout: Layout) -> None:
    with h5py.File(path, "w") as f:
        for group_name, datasets in layout.items():
            group = f.create_group(group_name)
            for name, (value, attrs) in datasets.items():
                if isinstance(value, str) and value == "<group>":
                    group.create_group(name)
                    continue
                if value.dtype == object:
                    group.create_dataset(name, data=value, dtype=h5py.string_dtype())
                else:
                    group.create_dataset(name, data=value)
                for key, text in attrs.items():
                    group[name].attrs[key] = text


MUTATIONS = ["drop", "shape", "dtype", "nan", "inf", "group", "numbers", "unit", "none"]


def _mutate(layout: Layout, fmt: str, data: st.DataObject) -> tuple[str, str, str]:
    """One corruption of one dataset; returns (mutation, group, dataset)."""
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    group = data.draw(st.sampled_from(sorted(layout)), label="group")
    name = data.draw(st.sampled_from(sorted(layout[group])), label="dataset")
    value, attrs = layout[group][name]
    if kind == "drop":
        del layout[group][name]
    elif kind == "shape":
        how = data.draw(st.sampled_from(["shorter", "longer", "extra-axis", "scalar", "flat"]))
        if how == "shorter" and value.shape and value.shape[-1] > 1:
            value = value[..., :-1]
        elif how == "longer" and value.shape:
            value = np.concatenate([value, value[..., :1]], axis=-1)
        elif how == "extra-axis":
            value = value[..., None]
        elif how == "scalar":
            value = value.reshape(-1)[:1].reshape(())
        else:
            value = value.reshape(-1)
        layout[group][name] = (value, attrs)
    elif kind == "dtype":
        dtype = data.draw(st.sampled_from(["S4", "bool", "complex128", "float16", "int32", "rec"]))
        if dtype == "rec":
            value = np.zeros(value.shape, dtype=[("a", "f8"), ("b", "i4")])
        elif value.dtype == object:
            value = np.zeros(value.shape, dtype=dtype)
        else:
            with np.errstate(invalid="ignore"):  # NaN to int32 is the point here
                value = value.astype(dtype)
        layout[group][name] = (value, attrs)
    elif kind in ("nan", "inf") and value.dtype.kind == "f" and value.size:
        value = value.copy()
        index = data.draw(st.integers(0, value.size - 1), label="index")
        value.reshape(-1)[index] = np.nan if kind == "nan" else -np.inf
        layout[group][name] = (value, attrs)
    elif kind == "group":
        layout[group][name] = ("<group>", {})  # type: ignore[assignment]
    elif kind == "numbers" and name in ("atomic_numbers", "species"):
        bad = data.draw(st.sampled_from([0, 119, 257, -1]), label="number")
        value = value.astype(np.int64)
        value.reshape(-1)[0] = bad
        layout[group][name] = (value, attrs)
    elif kind == "unit" and "units" in attrs:
        unit = data.draw(st.sampled_from(["furlong", "bohr", "hartree", "", "kcal/mol/Å"]))
        layout[group][name] = (value, {"units": unit})
    else:
        kind = "none"
    return kind, group, name


@FUZZ
@given(fmt=st.sampled_from(sorted(LAYOUTS)), seed=st.integers(0, 2**16), data=st.data())
def test_hdf5_layouts_corrupted(workdir, fmt, seed, data):
    layout = LAYOUTS[fmt](np.random.default_rng(seed))
    n_conformers = sum(len(g[COORDINATES[fmt]][0]) for g in layout.values())
    kind, group, name = _mutate(layout, fmt, data)
    path = workdir / f"fuzz-{fmt}.h5"
    _write_h5(path, layout)
    source, message = outcome(path, format=fmt)
    if kind == "none":
        assert source is not None, message
    if kind == "inf" or (kind == "nan" and not name.endswith(NAN_MEANS_MISSING[fmt])):
        assert source is None, f"{kind} in {group}/{name} was accepted"
    if kind in ("shape", "numbers") and source is None:
        assert group in message
    if source is None:
        return
    # nothing dropped quietly: every conformer is a structure, every surviving energy is there
    assert source.structures.n_structures == n_conformers
    if kind in ("none", "nan") and fmt != "ani1x":
        energy = "energies" if fmt == "ani2x" else "dft_total_energy"
        stored = [k for k in source.structures.labels if k[1] == "energy"]
        expected = sum(int(np.isfinite(g[energy][0]).sum()) for g in layout.values())
        assert int(source.structures.labels[stored[0]].present.sum()) == expected


@FUZZ
@given(
    fmt=st.sampled_from(sorted(LAYOUTS)),
    truncate=st.booleans(),
    position=st.floats(0, 1, exclude_max=True),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=20),
)
def test_hdf5_damaged_bytes(workdir, fmt, truncate, position, edits):
    """A truncated or bit-damaged HDF5 file: HDF5's own errors become one user error."""
    path = workdir / f"bytes-{fmt}.h5"
    _write_h5(path, LAYOUTS[fmt](np.random.default_rng(0)))
    data = bytearray(path.read_bytes())
    if truncate:
        data = data[: int(position * len(data))]
    for where, byte in edits:
        if data:
            data[int(where * len(data))] = byte
    path.write_bytes(bytes(data))
    outcome(path)


def test_real_hdf5_truncated(workdir):
    """The real ANI-1x sample cut at a spread of points."""
    data = (SHARED / "modelforge_testdata" / "ani1_n5.hdf5").read_bytes()
    path = workdir / "truncated.h5"
    for cut in np.linspace(0, len(data) - 1, 25).astype(int):
        path.write_bytes(data[:cut])
        source, _ = outcome(path)
        assert source is None or source.structures.n_structures == 8


# --- sGDML npz ------------------------------------------------------------------------------------

UNPICKLED: list[str] = []


def _mark_unpickled(tag: str) -> str:
    """Called only if an object array is unpickled: the reader must never do that."""
    UNPICKLED.append(tag)
    return tag


class PickleBomb:
    """An object whose unpickling runs code (here, a harmless marker)."""

    def __reduce__(self):
        return (_mark_unpickled, ("bomb",))


def _sgdml_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    c, z = 4, np.array([6, 1, 1, 1, 1])
    return {
        "R": rng.normal(size=(c, len(z), 3)),
        "z": z,
        "E": rng.normal(size=(c, 1)) - 2e4,
        "F": rng.normal(size=(c, len(z), 3)),
        "r_unit": np.array("Ang"),
        "e_unit": np.array("kcal/mol"),
        "theory": np.array("PBE+D3/def2-SVP"),
    }


@FUZZ
@given(
    seed=st.integers(0, 2**16),
    key=st.sampled_from(["R", "z", "E", "F", "r_unit", "e_unit", "theory"]),
    mutation=st.sampled_from(
        ["drop", "object", "shorter", "extra-axis", "scalar", "text", "nan", "inf", "bytes", "none"]
    ),
    compressed=st.booleans(),
)
def test_sgdml_corrupted(workdir, seed, key, mutation, compressed):
    arrays = _sgdml_arrays(np.random.default_rng(seed))
    value = arrays[key]
    if mutation == "drop":
        del arrays[key]
    elif mutation == "object":
        arrays[key] = np.array([PickleBomb(), 1.0], dtype=object)
    elif mutation == "shorter" and value.ndim:
        arrays[key] = value[..., :-1]
    elif mutation == "extra-axis":
        arrays[key] = value[..., None]
    elif mutation == "scalar":
        arrays[key] = value.reshape(-1)[:1].reshape(())
    elif mutation == "text":
        arrays[key] = np.full(value.shape, "x")
    elif mutation in ("nan", "inf") and value.dtype.kind == "f":
        value = value.copy()
        value.reshape(-1)[-1] = np.nan if mutation == "nan" else np.inf
        arrays[key] = value
    elif mutation == "bytes" and value.dtype.kind == "U":
        arrays[key] = np.array(str(value).encode())
    else:
        mutation = "none"
    path = workdir / "fuzz.npz"
    with open(path, "wb") as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)
    source, message = outcome(path)
    assert not UNPICKLED, "an object array was unpickled"
    if mutation in ("none", "bytes"):
        assert source is not None, message
    if mutation in ("nan", "inf", "object", "text") or (mutation == "drop" and key != "F"):
        assert source is None, f"{mutation} in {key} was accepted"
    if source is not None:
        assert source.structures.n_structures == 4
        assert all(label.present.all() for label in source.structures.labels.values())
        kinds = {kind for _, kind in source.structures.labels}
        assert kinds == ({"energy"} if mutation == "drop" else {"energy", "forces"})


@FUZZ
@given(
    truncate=st.booleans(),
    position=st.floats(0, 1, exclude_max=True),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8),
    compressed=st.booleans(),
)
def test_sgdml_damaged_bytes(workdir, truncate, position, edits, compressed):
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(
        buffer, **_sgdml_arrays(np.random.default_rng(0))
    )
    data = bytearray(buffer.getvalue())
    if truncate:
        data = data[: int(position * len(data))]
    for where, byte in edits:
        if data:
            data[int(where * len(data))] = byte
    path = workdir / "bytes.npz"
    path.write_bytes(bytes(data))
    outcome(path)


def test_sgdml_object_arrays_are_never_unpickled(workdir):
    """An object array (a pickle inside the npz) is refused where needed, ignored elsewhere."""
    path = workdir / "bomb.npz"
    arrays = _sgdml_arrays(np.random.default_rng(0))
    np.savez(path, **arrays, meta=np.array([PickleBomb()], dtype=object))
    source, message = outcome(path)
    assert source is not None, message  # an unused member is not loaded at all
    np.savez(path, **{**arrays, "R": np.array([PickleBomb()], dtype=object)})
    source, message = outcome(path)
    assert source is None and "'R'" in message and "Object arrays" in message
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.save(member, value) if key != "F" else pickle.dump(PickleBomb(), member)
            archive.writestr(f"{key}.npy", member.getvalue())  # F: a bare pickle, no npy header
    source, message = outcome(path)
    assert source is None and "F" in message.removeprefix(str(path))
    assert not UNPICKLED


# --- ASE database ---------------------------------------------------------------------------------

DB_FRAMES = read(ACAC, f":{N_FRAMES}")


@FUZZ
@given(
    record=st.integers(0, N_FRAMES - 1),
    mutation=st.sampled_from(
        ["energy-inf", "forces-rows", "forces-nan", "forces-columns", "charge", "energy-text"]
        + ["multiplicity", "none"]
    ),
    value=st.sampled_from([1.5, "abc", 10**6, float("nan"), True]),
    damage=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=3),
)
def test_ase_db_corrupted(workdir, record, mutation, value, damage):
    path = workdir / "fuzz.db"
    path.unlink(missing_ok=True)
    with ase.db.connect(path) as db:
        for i, frame in enumerate(DB_FRAMES):
            atoms = frame.copy()
            energy, forces = frame.get_potential_energy(), frame.get_forces()
            key_value_pairs, data = {}, {}
            if i == record:
                if mutation == "energy-inf":
                    energy = np.inf
                elif mutation == "forces-rows":
                    forces = forces[:-1]
                elif mutation == "forces-nan":
                    forces = forces.copy()
                    forces[0, 0] = np.nan
                elif mutation == "forces-columns":
                    data["forces"] = forces[:, :2]  # a data array that shadows nothing
                elif mutation in ("charge", "multiplicity"):
                    key_value_pairs["total_charge" if mutation == "charge" else mutation] = value
                elif mutation == "energy-text":
                    key_value_pairs["energy2"] = "abc"
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
            try:
                db.write(atoms, key_value_pairs=key_value_pairs, data=data)
            except (ValueError, TypeError, AssertionError):
                return  # ase itself refuses to write this row: nothing to read
    if damage:
        blob = bytearray(path.read_bytes())
        for where, byte in damage:
            blob[int(where * len(blob))] = byte
        path.write_bytes(bytes(blob))
    source, message = outcome(path, level=ACAC_LEVEL)
    if damage or source is None:
        return
    assert mutation not in ("energy-inf", "forces-rows", "forces-nan"), "bad row accepted"
    assert source.structures.n_structures == N_FRAMES
