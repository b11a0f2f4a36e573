"""Stores that survive concurrency, kills and corruption (issue 17).

Real parts only: concurrent writers are real processes (forked, or the CLI), kills are real
SIGKILLs at the named commit points (``MFKIT_TEST_KILL_AT``, see ``mfdata.files.kill_point``),
corruptions are changed bytes on disk. Stores are the 8-structure ANI-1x sample, copied per test.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
import zarr

from mfdata.convert import convert, merge
from mfdata.errors import MfkitError, UsageError
from mfdata.export import write_extxyz
from mfdata.files import KILL_AT
from mfdata.query import load_selection
from mfdata.registry import check_name_free, open_store, register, registered
from mfdata.split import make_split, split_indices
from mfdata.stats import store_statistics, update_statistics
from mfdata.store.lmdb_store import LAYOUT_KEY, LmdbStore, index_key, pack
from mfdata.store.lock import claimed_directory, store_lock
from mfdata.store.manifest import MANIFEST, StoreError, write_manifest
from mfdata.store.store import Store, remove_abandoned
from mfdata.store.verify import repair
from mfdata.store.zarr_store import ZARR_DIR
from tests.conftest import run_cli

FORK = multiprocessing.get_context("fork")
LEVEL = "wb97x-631gd"


@pytest.fixture(scope="module")
def base(tmp_path_factory, shared) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "base"
    convert(shared / "modelforge_testdata" / "ani1_n5.hdf5", out, name="integrity-base")
    return out


@pytest.fixture
def store(tmp_path, base) -> Path:
    copy = tmp_path / "s"
    shutil.copytree(base, copy)
    return copy


def _cli(*args: object, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mfdata.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _in_processes(target, args: list[tuple]) -> list[int]:
    """Run ``target(*a)`` for each ``a`` in its own forked process, all at once; exit codes."""
    procs = [FORK.Process(target=target, args=a) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    return [p.exitcode for p in procs]


# --------------------------------------------------------------------------- 1. locks


def _split(path: Path, name: str) -> None:
    make_split(Store(path), name, fractions=[0.5, 0.5])


def _write(path: Path, what: str) -> None:
    {"pack": lambda: pack(path), "stats": lambda: update_statistics(path)}.get(
        what, lambda: _split(path, what)
    )()


def test_concurrent_writers_all_land(store):
    """Splits, a pack and statistics written at once by five processes: every change lands."""
    codes = _in_processes(_write, [(store, w) for w in ("a", "pack", "b", "stats", "c")])
    assert codes == [0] * 5
    manifest = Store(store).manifest
    assert sorted(manifest.splits) == ["a", "b", "c"]
    assert manifest.lmdb is not None and manifest.statistics.levels
    assert Store(store).verify() == []


def _register(home: str, names: list[str], path: str) -> None:
    os.environ["MFKIT_HOME"] = home
    for name in names:
        register(name, path)


def test_concurrent_registrations_all_land(private_registry, base):
    names = [[f"r{p}-{i}" for i in range(10)] for p in range(6)]
    codes = _in_processes(_register, [(str(private_registry), n, str(base)) for n in names])
    assert codes == [0] * 6
    assert {n for batch in names for n in batch} <= set(registered())
    assert not list(private_registry.glob(".stores.json.*"))
    proc = _cli("register", base, "--name", "killed", env={KILL_AT: "replace:stores.json"})
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and list(private_registry.glob(".stores.json.*"))
    assert "killed" not in registered()
    register("again", base)  # the next registration removes what the killed one left
    assert not list(private_registry.glob(".stores.json.*"))


def test_a_held_lock_makes_a_writer_wait_then_fail_in_one_line(store):
    with store_lock(store):
        proc = _cli("split", store, "--name", "x", env={"MFKIT_LOCK_TIMEOUT": "0.5"})
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "waiting for another process writing" in err
    assert err.strip().splitlines()[-1].startswith("mfdata: error: ")
    assert "another mfkit process is still writing it" in err and "Traceback" not in err
    os.environ["MFKIT_LOCK_TIMEOUT"] = "0"
    try:  # re-entrant in one process; exclusive across processes, a forked child included
        with store_lock(store), store_lock(store):
            assert _in_processes(_split, [(store, "y")]) != [0]
            _split(store, "z")
    finally:
        del os.environ["MFKIT_LOCK_TIMEOUT"]
    assert Store(store).manifest.splits == ["z"]


# --------------------------------------------------------------------------- 2, 8. kills


def test_kills_at_commit_points_leave_no_broken_store(tmp_path, base, shared):
    """SIGKILL at each commit point of split, pack, convert and registration; every store
    still opens, the rerun of the same command succeeds (no --force), and verify --repair
    leaves nothing behind."""
    points = {
        "split:renamed": ("split", "{s}", "--name", "x", "--fractions", "0.5,0.5"),
        "replace:manifest.json": ("split", "{s}", "--name", "x", "--fractions", "0.5,0.5"),
        "pack:renamed": ("pack", "{s}"),
        "pack:committed": ("pack", "{s}"),
        "directory:written": ("convert", "{src}", "--out", "{s}-new"),
        "register": ("convert", "{src}", "--out", "{s}-new"),
    }
    src = shared / "modelforge_testdata" / "ani1_n5.hdf5"
    procs = {}
    for k, (point, args) in enumerate(points.items()):
        s = tmp_path / f"k{k}"
        shutil.copytree(base, s)
        procs[point] = (
            s,
            args,
            _cli(*(a.format(s=s, src=src) for a in args), env={KILL_AT: point}),
        )
    for point, (s, args, proc) in procs.items():
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, point
        new = Path(f"{s}-new")
        if args[0] == "convert":
            assert Store(s).verify() == []
            if point == "register":  # complete, not registered: register it by hand
                assert open_store(new).verify() == []
                assert new.name not in registered()
                assert run_cli("register", new).returncode == 0
                assert open_store(new.name).path == new.resolve()
                continue
            assert not new.exists() and list(tmp_path.glob(f".{new.name}.partial-*"))
            convert(src, new)  # the rerun removes what the killed one left
            assert not list(tmp_path.glob(f".{new.name}.partial-*"))
            continue
        assert Store(s).manifest.splits == []
        if args[0] == "split":
            problems = Store(s).verify()
            assert any("leftovers of interrupted writes" in p for p in problems), point
            _split(s, "x")  # the rerun replaces the uncommitted split
        elif point == "pack:renamed":
            assert Store(s).manifest.lmdb is None
            pack(s)  # resumes without --force
        else:
            assert Store(s).manifest.lmdb is not None
        repair(s)
        assert Store(s).verify() == [], point
        assert not [p for p in s.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_the_next_convert_removes_what_killed_converts_left_beside_it(tmp_path, shared):
    """A killed conversion's temporary directory goes with the next conversion to any name in
    that directory; a live writer's stays."""
    src = shared / "modelforge_testdata" / "ani1_n5.hdf5"
    proc = _cli("convert", src, "--out", tmp_path / "a", env={KILL_AT: "directory:written"})
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    (left,) = tmp_path.glob(".a.partial-*")
    with claimed_directory(tmp_path, ".live.partial-") as live:
        convert(src, tmp_path / "b")
        assert not left.exists() and live.is_dir()
    assert remove_abandoned(tmp_path) == [live]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_the_next_export_removes_what_a_killed_export_left_beside_it(tmp_path, store):
    """A killed export's temporary file goes with the next write of that file; a temporary
    file whose writer is alive (holding its lock) stays."""
    import fcntl

    out = tmp_path / "x.xyz"
    args = ("export", store, "--level", LEVEL, "--out", out)
    proc = _cli(*args, env={KILL_AT: "replace:x.xyz"})
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    (left,) = tmp_path.glob(".x.xyz.*.partial")
    live = tmp_path / ".x.xyz.live.partial"
    with open(live, "w") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        run_cli(*args)
        assert out.is_file() and not left.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "s", "x.xyz"]


# --------------------------------------------------------------------------- 3. read paths


def _change_values(store: Path, name: str, change) -> None:
    """Rewrite one array's values in place (a silent corruption: it still decodes)."""
    array = zarr.open_array(str(store / ZARR_DIR / name), mode="r+", zarr_format=3)
    values = array[...]
    change(values)
    array[...] = values


def test_corrupted_arrays_never_reach_exports_merges_statistics_or_loaders(tmp_path, base):
    store, other = tmp_path / "a", tmp_path / "b"
    for copy in (store, other):
        shutil.copytree(base, copy)
    pack(other)
    _change_values(store, "atoms/positions", lambda v: v.__setitem__((3, 1), v[3, 1] + 0.5))
    opened = Store(store)
    checks = {
        "read": opened.read,
        "export": lambda: write_extxyz(opened, LEVEL, tmp_path / "x.xyz"),
        "merge": lambda: merge([store], tmp_path / "m"),
        "pack": lambda: pack(store, force=True),
    }
    for what, call in checks.items():
        with pytest.raises(MfkitError, match=r"atoms/positions do not match the checksum"):
            call()
        assert not (tmp_path / "x.xyz").exists() and not (tmp_path / "m").exists(), what
    from mfdata.loading.zarr_dataset import ZarrFidelityDataset

    with pytest.raises(MfkitError, match="atoms/positions do not match"):
        ZarrFidelityDataset([str(store)], [LEVEL])
    _change_values(other, f"labels/{LEVEL}/energy/values", lambda v: v.__setitem__(0, v[0] + 1))
    with pytest.raises(MfkitError, match=f"labels/{LEVEL}/energy/values do not match"):
        store_statistics(Store(other))
    _change_values(other, f"labels/{LEVEL}/energy/present", lambda v: v.__setitem__(0, False))
    from mfdata.loading.lmdb_dataset import FidelityDataset

    with pytest.raises(MfkitError, match=f"labels/{LEVEL}/energy/present do not match"):
        FidelityDataset([str(other)], [LEVEL])


def _edit_shard(shard: Path, change) -> None:
    """Apply ``change(txn)`` to a copy of an LMDB shard in one write transaction, and put the
    copy in its place (a reader in this process may hold the shard open)."""
    copy = shard.with_name("edited")
    shutil.copyfile(shard, copy)
    env = lmdb.open(str(copy), subdir=False, lock=False)
    try:
        with env.begin(write=True) as txn:
            change(txn)
    finally:
        env.close()
    os.replace(copy, shard)


def _flip(txn, key: bytes, offset: int, bits: int = 0x07) -> None:
    value = bytearray(txn.get(key))
    value[offset] ^= bits
    txn.put(key, bytes(value))


def test_a_flipped_lmdb_record_is_a_one_line_error_when_read(tmp_path, base):
    """Every record carries a CRC checked on each read: a flipped atomic number (or a record
    moved to another key) names the shard and the structure, before any byte is interpreted."""
    store = tmp_path / "p"
    shutil.copytree(base, store)
    pack(store)
    shard = store / Store(store).manifest.lmdb.shards[0]
    _edit_shard(shard, lambda txn: _flip(txn, index_key(3), -5))  # the last atomic number
    from mfdata.loading.lmdb_dataset import FidelityDataset

    dataset = FidelityDataset([str(store)], [LEVEL])  # opening reads no record
    message = rf"{shard}: record 3 fails its checksum: the shard is corrupted; re-pack"
    for i in range(len(dataset)):
        if dataset.sample_structure[i] == 3:
            with pytest.raises(StoreError, match=message):
                dataset[i]
        else:
            dataset[i]
    with pytest.raises(StoreError, match=message):
        LmdbStore(store).record(3)
    problems = Store(store).verify()
    assert any("1 record(s) fail their checksum (structures 3)" in p for p in problems)

    def swap(txn) -> None:  # two intact records under each other's keys
        a, b = bytes(txn.get(index_key(4))), bytes(txn.get(index_key(5)))
        txn.put(index_key(4), b)
        txn.put(index_key(5), a)

    _edit_shard(shard, swap)
    with pytest.raises(StoreError, match=rf"{shard}: record 4 fails its checksum"):
        LmdbStore(store).record(4)


def test_a_changed_lmdb_layout_is_refused_when_the_shard_is_opened(tmp_path, base):
    """A label renamed in the layout would make its values absent (NaN) in training."""
    store = tmp_path / "p"
    shutil.copytree(base, store)
    pack(store)
    shard = store / Store(store).manifest.lmdb.shards[0]
    layout = {}

    def rename(txn) -> None:
        layout.update(json.loads(bytes(txn.get(LAYOUT_KEY))))
        text = bytes(txn.get(LAYOUT_KEY)).replace(b"/forces", b"/forcez")
        txn.put(LAYOUT_KEY, text)

    _edit_shard(shard, rename)
    with pytest.raises(StoreError, match=rf"{shard}: LMDB layout checksum mismatch"):
        LmdbStore(store).open()
    assert any("LMDB layout checksum mismatch" in p for p in Store(store).verify())
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    _edit_shard(shard, lambda txn: txn.put(LAYOUT_KEY, deep))
    with pytest.raises(StoreError, match=rf"^{shard}: unreadable LMDB layout: RecursionError$"):
        LmdbStore(store).open()


def test_packs_without_record_checksums_are_refused_until_repacked(tmp_path, base):
    """Layout version 1 (before per-record checksums) is not read: one line says re-pack."""
    store = tmp_path / "p"
    shutil.copytree(base, store)
    pack(store)
    manifest = Store(store).manifest
    info = manifest.lmdb.model_copy(update={"layout_version": 1})
    write_manifest(store, manifest.model_copy(update={"lmdb": info}))
    hint = (
        "LMDB layout version 1 is not 2 (per-record checksums); re-pack with `mfdata pack --force`"
    )
    with pytest.raises(StoreError, match=re.escape(f"{store}: {hint}")):
        LmdbStore(store)
    assert Store(store).verify() == [f"{store / 'lmdb'}: {hint}"]
    pack(store, force=True)
    assert Store(store).verify() == [] and LmdbStore(store).record(3)["numbers"].size


def test_damaged_zarr_metadata_and_index_never_give_a_traceback_or_a_wrong_query(store):
    """A ``zarr.json`` that no longer parses is a problem for verify and one line for readers;
    a query reads the index only after checking it (values and label columns)."""
    from mfdata.loading.zarr_dataset import ZarrFidelityDataset
    from mfdata.query import select
    from mfdata.schema import QuerySpec

    meta = store / ZARR_DIR / "labels" / LEVEL / "zarr.json"
    text = meta.read_bytes()
    meta.write_bytes(text.replace(b"{", b"\xff", 1))
    assert any("is unreadable (corrupted metadata or chunk)" in p for p in Store(store).verify())
    for read in (Store(store).read, lambda: store_statistics(Store(store))):
        with pytest.raises(MfkitError, match="is unreadable \\(corrupted metadata or chunk\\)"):
            read()
    meta.write_bytes(text)
    meta = store / ZARR_DIR / "labels" / LEVEL / "energy" / "present" / "zarr.json"
    text = meta.read_bytes()
    meta.write_bytes(text.replace(b"{", b"\xff", 1))
    with pytest.raises(MfkitError, match="is unreadable \\(corrupted metadata or chunk\\)"):
        ZarrFidelityDataset([str(store)], [LEVEL])
    meta.write_bytes(text)

    spec = QuerySpec(has=[(LEVEL, "energy")])
    n_atoms = zarr.open_array(str(store / ZARR_DIR / "structures/n_atoms"), mode="r+")
    original = n_atoms[...]
    n_atoms[0] = original[0] + 1
    with pytest.raises(MfkitError, match="structures/n_atoms do not match the checksum"):
        select([Store(store)], spec)
    n_atoms[...] = original
    labels = zarr.open_array(str(store / ZARR_DIR / "index/labels"), mode="r+", zarr_format=3)
    columns = labels.attrs["columns"]
    labels.attrs["columns"] = columns[::-1]
    with pytest.raises(MfkitError, match="the index's label columns"):
        select([Store(store)], spec)
    assert any("index/labels columns" in p for p in Store(store).verify())


# --------------------------------------------------------------------------- 4. metadata


def test_verify_and_readers_check_splits_and_every_manifest_byte(store):
    make_split(Store(store), "d", fractions=[0.5, 0.5])
    assert Store(store).verify() == []
    part = zarr.open_array(str(store / "splits" / "d" / "part"), mode="r+", zarr_format=3)
    values = part[...]
    part[0] = -3  # a structure moved to part -3
    problems = Store(store).verify()
    assert problems and "split 'd' does not match the checksum" in problems[0]
    with pytest.raises(StoreError, match="split 'd' does not match the checksum"):
        split_indices(Store(store), "d", "train")
    part[...] = values

    path = store / MANIFEST
    text = path.read_text()
    data = json.loads(text)
    data["statistics"] = {"levels": {LEVEL: {"reference_energies": {"H": -13.6}}}}
    path.write_text(json.dumps(data))
    with pytest.raises(StoreError, match="manifest checksum mismatch"):
        Store(store)
    path.write_text(text.replace('"count": 8', '"count": 7', 1))
    with pytest.raises(StoreError, match="manifest checksum mismatch"):
        Store(store)

    # a manifest written consistently (by a buggy writer) but wrong: verify recomputes it
    path.write_text(text)
    manifest = Store(store).manifest
    wrong = manifest.model_copy(deep=True)
    wrong.levels[LEVEL].labels["energy"].count = 7
    wrong.elements = ["H", "C"]
    write_manifest(store, wrong)
    problems = Store(store).verify()
    assert any("manifest says 7 energy" in p for p in problems)
    assert any("manifest elements ['H', 'C']" in p for p in problems)


# --------------------------------------------------------------------------- 5. hostile manifests


def _hostile(store: Path, change) -> None:
    data = json.loads((store / MANIFEST).read_text())
    data.pop("manifest_checksum")
    change(data)
    (store / MANIFEST).write_text(json.dumps(data) if isinstance(data, dict) else data)


def test_hostile_manifests_are_one_line_errors(store):
    cases = {
        "shard path": (
            lambda d: d.update(
                lmdb={"layout_version": 1, "shards": ["../../../etc/passwd"], "checksum": "x"}
            ),
            "lmdb.shards.0",
        ),
        "n_structures": (lambda d: d.update(n_structures=10**30), "n_structures"),
        "more structures than arrays": (
            lambda d: d.update(n_structures=10**9),
            "the arrays hold 8 and 120",
        ),
        "array path": (lambda d: d["checksums"].update({"../x": "0"}), "checksums"),
        "split name": (lambda d: d.update(splits=["../../x"]), "splits.0"),
        "format_version": (lambda d: d.update(format_version="abc"), "format_version 'abc'"),
    }
    original = (store / MANIFEST).read_text()
    for what, (change, message) in cases.items():
        (store / MANIFEST).write_text(original)
        _hostile(store, change)
        with pytest.raises(MfkitError, match=message.replace(".", r"\.")):
            Store(store)
        assert str(store) in str(pytest.raises(MfkitError, Store, store).value), what
    (store / MANIFEST).write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    proc = _cli("info", store)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err
    assert err.strip() == f"mfdata: error: {store}/{MANIFEST}: unreadable manifest: RecursionError"


def test_nested_json_in_selections_and_the_registry_is_one_line(tmp_path, store):
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    selection = tmp_path / "selection.json"
    selection.write_text(deep)
    with pytest.raises(StoreError, match=rf"^{selection}: unreadable selection: RecursionError$"):
        load_selection(selection)
    selection.write_text(json.dumps({"created": "now", "query": {}, "stores": [{"a": 1}]}))
    with pytest.raises(StoreError, match=rf"^{selection}: invalid selection: stores.0.name: "):
        load_selection(selection)
    registry = Path(os.environ["MFKIT_HOME"]) / "stores.json"
    registry.write_text(deep)
    with pytest.raises(StoreError, match=rf"^{registry}: unreadable store registry: Recursion"):
        registered()


# --------------------------------------------------------------------------- 9. names


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "a\nb", "", ".hidden", "x" * 200])
def test_unsafe_store_and_split_names_are_refused(store, name):
    with pytest.raises(UsageError, match="letters, digits"):
        check_name_free(name, store)
    with pytest.raises(UsageError, match="split name"):
        make_split(Store(store), name)


# --------------------------------------------------------------------------- read-only stores

# Runs mfdata commands in one process and prints {command: [exit status, stderr]}; a traceback
# (an error that is not a user error) fails the test with its traceback.
_COMMANDS = """
import contextlib, io, json, sys
from pathlib import Path
from mfdata.cli import main
try:
    Path(sys.argv[2], "probe").touch()
    print(json.dumps(None))  # can write anyway: the test cannot make a store read-only here
    sys.exit()
except PermissionError:
    pass
results = {}
for args in json.loads(sys.argv[1]):
    sys.argv = ["mfdata", *args]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
        except SystemExit as exc:
            results[" ".join(args[:2])] = [exc.code or 0, err.getvalue()]
print(json.dumps(results))
"""


def _without_root_powers() -> None:
    """Root writes read-only files: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    bounding set (PR_CAPBSET_DROP), so the exec'd Python obeys file modes like a user."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):
            libc.prctl(24, capability, 0, 0, 0)


def test_write_commands_on_a_read_only_store_are_one_line_errors(tmp_path, store):
    src = tmp_path / "src.xyz"
    write_extxyz(Store(store), LEVEL, src)
    pack(store)
    (store / ".lock").unlink()  # the lock file cannot be made either
    bare = tmp_path / "bare"
    shutil.copytree(store, bare)
    (store / ".lock").touch()
    out = tmp_path / "out"
    out.mkdir()
    commands = {
        "info": ("info", store),
        "verify": ("verify", store),
        "query": ("query", store, "--has", f"{LEVEL}:energy"),
        "export": ("export", store, "--level", LEVEL, "--out", out / "x.xyz"),
        "split": ("split", store, "--name", "x"),
        "split bare": ("split", bare, "--name", "x"),
        "stats": ("stats", store),
        "pack": ("pack", store, "--force"),
        "repair": ("verify", bare, "--repair"),
        "convert": ("convert", src, "--out", tmp_path / "new", "--level", LEVEL),
    }
    for path in [tmp_path, *tmp_path.rglob("*")]:
        if path != out and out not in path.parents and not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o222)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _COMMANDS,
                json.dumps([list(map(str, c)) for c in commands.values()]),
                str(store),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=_without_root_powers,
        )
    finally:
        for path in [tmp_path, *tmp_path.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    if results is None:
        pytest.skip("this process cannot make a store read-only to itself")
    codes = {name: tuple(results[" ".join(map(str, c[:2]))]) for name, c in commands.items()}
    for name in ("info", "verify", "query", "export"):
        assert codes[name] == (0, ""), name
    for name in ("split", "split bare", "stats", "pack", "repair", "convert"):
        status, err = codes[name]
        # convert also warns that the export's cm5_charges array is not read without --map
        err = "".join(line for line in err.splitlines(True) if ": warning: " not in line)
        assert status == 2 and err.count("\n") == 1, (name, err)
        assert "cannot write here (Permission denied); this command needs write access" in err
    assert Store(store).verify() == [] and Store(bare).verify() == []


# --------------------------------------------------------------------------- mftrain


def _prepare(path: Path) -> None:
    from mftrain.config import TrainConfig
    from mftrain.train import prepare_stores

    prepare_stores(TrainConfig.model_validate({"data": {"stores": [str(path)]}}), lambda _: None)


def test_two_fits_prepare_one_unsplit_store_at_once(tmp_path, shared):
    """What two concurrent ``mftrain fit`` do to a fresh store (pack, statistics, the default
    split): both succeed, one prepares while the other waits, and the store verifies."""
    from ase.io import read, write

    import mftrain.train  # noqa: F401 - imported once, before the fork

    write(tmp_path / "bpa.xyz", read(shared / "botnet_3BPA" / "train_300K.xyz", ":40"))
    store = convert(tmp_path / "bpa.xyz", tmp_path / "bpa", level=LEVEL).path

    assert _in_processes(_prepare, [(store,), (store,)]) == [0, 0]
    manifest = Store(store).manifest
    assert manifest.splits == ["default"] and manifest.lmdb is not None
    assert Store(store).verify() == []


def test_paths_reach_nequip_configs_as_written(tmp_path):
    """A path with ``${...}`` or a quote is read back by OmegaConf and Hydra as written."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from mftrain.train import RESUME_ENV, literal

    paths = ["/h/${oc.env:HOME}/x", "/o'k/\\${y}/z\\", str(tmp_path)]
    config = OmegaConf.create(literal({"data": {"stores": paths}, "out": paths[1]}))
    assert list(config.data.stores) == paths and config.out == paths[1]
    os.environ[RESUME_ENV] = paths[1]
    try:
        override = OverridesParser.create().parse_override(f"++ckpt_path=${{oc.env:{RESUME_ENV}}}")
        assert OmegaConf.create({"ckpt_path": override.value()}).ckpt_path == paths[1]
    finally:
        del os.environ[RESUME_ENV]
