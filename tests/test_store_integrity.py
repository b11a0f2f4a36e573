"""Stores that survive concurrency, kills and corruption (issue 17).

Real parts only: concurrent writers are real processes (forked, or the CLI), kills are real
SIGKILLs at the named commit points (``MFKIT_TEST_KILL_AT``, see ``mfdata.files.kill_point``),
corruptions are changed bytes on disk. Stores are the 8-structure ANI-1x sample, copied per test.
"""

from __future__ import annotations

import json
import multiprocessing
import os
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
from mfdata.registry import check_name_free, open_store, register, registered
from mfdata.split import make_split, split_indices
from mfdata.stats import store_statistics, update_statistics
from mfdata.store.lmdb_store import LmdbStore, pack
from mfdata.store.lock import store_lock
from mfdata.store.manifest import MANIFEST, StoreError, write_manifest
from mfdata.store.store import Store
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


def test_a_flipped_lmdb_record_is_refused_before_training(tmp_path, base):
    store = tmp_path / "p"
    shutil.copytree(base, store)
    pack(store)
    shard = store / Store(store).manifest.lmdb.shards[0]
    env = lmdb.open(str(shard), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        key = (3).to_bytes(8, "big")
        value = bytearray(txn.get(key))
        value[-1] ^= 0x07  # the last atomic number
        txn.put(key, bytes(value))
    env.close()
    with pytest.raises(StoreError, match="record checksum mismatch"):
        LmdbStore(store).record(3)
    from mfdata.loading.lmdb_dataset import FidelityDataset

    with pytest.raises(StoreError, match="record checksum mismatch"):
        FidelityDataset([str(store)], [LEVEL])


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


# --------------------------------------------------------------------------- 9. names


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "a\nb", "", ".hidden", "x" * 200])
def test_unsafe_store_and_split_names_are_refused(store, name):
    with pytest.raises(UsageError, match="letters, digits"):
        check_name_free(name, store)
    with pytest.raises(UsageError, match="split name"):
        make_split(Store(store), name)


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
