"""The adversarial campaign of issue 17, rerun at a small scale with real processes.

Three parts, on the 8-structure ANI-1x sample (``../shared/data``) converted, described
(statistics), split and packed:

1. **Kills**: every commit point the code marks with ``kill_point`` (listed from the source and
   checked against the table below), reached by each command that reaches it, SIGKILLs a real
   process there (``MFKIT_TEST_KILL_AT``); then ``mfdata verify --repair``, the same command
   again, and ``mfdata verify``. A store is left broken when the rerun or the last verify fails.
2. **Byte flips**: single bytes XOR-ed in every file of the store (every array chunk and its
   metadata, the manifest, the split's chunks, the LMDB data file: spread over each file, plus one
   in every LMDB record and in the layout). Each flip is checked by ``verify`` and by everything
   that reads the store: the LMDB and Zarr loaders reading every training sample (with the
   statistics that initialise the heads), a query, the statistics, ``merge`` and ``export`` (new
   stores and files) and a re-pack. A consumer either refuses (one-line error), gives exactly
   the clean store's result, or gives another result: that flip *reached* training or a new store.
   Flips that ``verify`` misses and that no consumer notices are bytes no value depends on.
3. **Hostile manifests** (deep nesting, unknown level, huge counts, bad versions, shard and array
   paths outside the store, wrong types...) fed to every command, ``mftrain fit`` included;
   anything but exit status 0-2 without a traceback counts.

Every command runs in a process forked from this one (imports paid once), with its own stderr;
a crash (signal) or a traceback is counted, never hidden. Progress on stderr; one JSON object,
the counts, as the last line of stdout.

    python benchmarks/integrity_campaign.py [--workdir DIR] [--flips-per-file 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "modelforge_testdata" / "ani1_n5.hdf5"
FIT_SOURCE = ROOT.parent / "shared" / "data" / "botnet_3BPA" / "train_300K.xyz"  # 500: splits
FIT_LEVEL = "wb97x-631gd"
SPLIT = "d"
TIMEOUT_S = 180


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def in_fork(call: Callable[[], object], env: dict[str, str] | None = None) -> dict:
    """Run ``call()`` in a forked child: its exit status (negative: killed by that signal), its
    stderr, and what it returned (JSON). An exception that escapes ``call`` is printed with its
    traceback, as an uncaught error would be."""
    return finish(start_fork(call, env))


def start_fork(call: Callable[[], object], env: dict[str, str] | None = None) -> tuple:
    """Fork a child that runs ``call()``; :func:`finish` waits for it."""
    err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()
    out = tempfile.NamedTemporaryFile()  # noqa: SIM115 - closed by finish()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            os.dup2(err.fileno(), 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.environ.update(env or {})
            Path(out.name).write_text(json.dumps(call()))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid, err, out


def finish(handle: tuple, timeout: float | None = TIMEOUT_S) -> dict:
    """Wait for a child of :func:`start_fork` (killing it after ``timeout`` seconds)."""
    pid, err, out = handle
    with err, out:
        status = _wait(pid, timeout)
        err.seek(0)
        text = Path(out.name).read_text()
        return {
            "status": status,
            "stderr": err.read().decode(errors="replace"),
            "result": json.loads(text) if text else None,
        }


def _wait(pid: int, timeout: float | None) -> int:
    deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -999  # a hang
        time.sleep(0.005)


def command(*args: object, env: dict[str, str] | None = None) -> dict:
    """``mfdata ARGS`` (or ``mftrain ARGS`` when the first is "mftrain") in a forked process."""
    args = [str(a) for a in args]
    program = "mftrain" if args[0] == "mftrain" else "mfdata"
    argv = args[1:] if program == "mftrain" else args

    def call() -> None:
        if program == "mftrain":
            from mftrain.cli import main
        else:
            from mfdata.cli import main
        sys.argv = [program, *argv]
        main()

    return in_fork(call, env)


def clean_failure(run: dict) -> bool:
    """A user error: exit status 1 or 2, no traceback, a one-line message."""
    err = run["stderr"]
    return run["status"] in (1, 2) and "Traceback" not in err and bool(err.strip())


def traceback_or_crash(run: dict) -> bool:
    return run["status"] not in (0, 1, 2) or "Traceback" in run["stderr"]


# --------------------------------------------------------------------------- the store


def build_base(work: Path) -> Path:
    base = work / "base"
    for args in (
        ("convert", SOURCE, "--out", base),
        ("stats", base),
        ("split", base, "--name", SPLIT, "--fractions", "0.5,0.25,0.25"),
        ("pack", base),
    ):
        run = command(*args)
        if run["status"] != 0:
            raise SystemExit(f"mfdata {args[0]} failed: {run['stderr']}")
    (base / ".lock").unlink(missing_ok=True)
    return base


def copy_store(base: Path, to: Path) -> Path:
    shutil.copytree(base, to, symlinks=True)
    return to


# --------------------------------------------------------------------------- 1. kills


def kill_points_in_source() -> set[str]:
    """The kill points the code marks (``replace:`` stands for every atomically replaced file)."""
    found = set()
    for path in (ROOT / "mfdata").rglob("*.py"):
        for name in re.findall(r'kill_point\(f?"([^"]+)"\)', path.read_text(encoding="utf-8")):
            found.add(name.split("{")[0])
    return found


def kill_cases(work: Path, base: Path, levels: list[str]) -> list[dict]:
    """Each kill point with each command that reaches it: the store it starts from (``base``,
    or a fresh store without shards, statistics or splits), and the command that recovers."""
    fresh, bpa = work / "fresh", work / "bpa"
    for args in (
        (SOURCE, "--out", fresh, "--name", "fresh"),
        (FIT_SOURCE, "--out", bpa, "--name", "bpa", "--level", FIT_LEVEL),
    ):
        if command("convert", *args)["status"] != 0:
            raise SystemExit(f"mfdata convert {args[0]} failed")
    split = ("split", "{s}", "--name", "x", "--fractions", "0.5,0.5")
    convert = ("convert", SOURCE, "--out", "{new}", "--name", "{name}")
    merge = ("merge", "{s}", "--out", "{new}", "--name", "{name}")
    register = ("register", "{s}", "--name", "{name}")
    export = ("export", "{s}", "--level", levels[0], "--out", "{dir}/x.xyz")
    fit = ("mftrain", "fit", "--data", "{s}", "--max-steps", "1", "--out", "{dir}/run")
    by_hand = ("register", "{new}", "--name", "{name}")  # the remedy for a complete store
    cases = [
        ("split:renamed", split, fresh, None),
        ("directory:written", split, fresh, None),
        ("replace:manifest.json", split, fresh, None),
        ("pack:renamed", ("pack", "{s}"), fresh, None),
        ("pack:committed", ("pack", "{s}"), fresh, ("verify", "{s}")),  # done: nothing to redo
        ("replace:manifest.json", ("pack", "{s}"), fresh, None),
        ("pack:renamed", ("pack", "{s}", "--force"), base, None),
        ("pack:committed", ("pack", "{s}", "--force"), base, None),
        ("replace:manifest.json", ("stats", "{s}"), fresh, None),
        ("directory:written", convert, None, None),
        ("register", convert, None, by_hand),
        ("replace:stores.json", convert, None, by_hand),
        ("directory:written", merge, base, None),
        ("register", merge, base, by_hand),
        ("replace:stores.json", merge, base, by_hand),
        ("register", register, base, None),
        ("replace:stores.json", register, base, None),
        ("replace:x.xyz", export, base, None),
        ("split:renamed", fit, bpa, ("split", "{s}", "--name", "default")),
        ("replace:manifest.json", fit, bpa, ("split", "{s}", "--name", "default")),
    ]
    return [
        {"point": point, "args": args, "store": store, "rerun": rerun or args}
        for point, args, store, rerun in cases
    ]


def run_kill(case: dict, folder: Path, k: int) -> dict:
    """Kill the command at its point; ``verify --repair``, recover (the same command again, or
    the remedy for a complete store), ``verify``: is anything left broken?"""
    folder.mkdir(parents=True)
    store = copy_store(case["store"], folder / "s") if case["store"] else None
    new = folder / "new"
    fill = {"s": store, "new": new, "dir": folder, "name": f"k{k}"}
    args = [str(a).format(**fill) for a in case["args"]]
    killed = command(*args, env={"MFKIT_TEST_KILL_AT": case["point"]})
    name = " ".join(args[:2]) if args[0] == "mftrain" else args[0]
    out = {"point": case["point"], "command": name}
    out["reached"] = killed["status"] == -signal.SIGKILL
    if traceback_or_crash(killed) and not out["reached"]:
        out["traceback"] = killed["stderr"][-400:]
    for path in _stores(store, new):
        command("verify", "--repair", path)
    rerun = command(*[str(a).format(**fill) for a in case["rerun"]])
    out["rerun_ok"] = rerun["status"] == 0
    if not out["rerun_ok"]:
        out["rerun_error"] = rerun["stderr"].strip()[-300:]
    verifies = [command("verify", path) for path in _stores(store, new)]
    out["broken"] = not out["rerun_ok"] or any(v["status"] != 0 for v in verifies)
    if out["broken"]:
        out["verify"] = [v["stderr"].strip()[-300:] for v in verifies if v["status"]]
    home = Path(os.environ["MFKIT_HOME"])
    out["leftovers"] = sorted(
        str(p.relative_to(folder.parent.parent)) if folder.parent.parent in p.parents else str(p)
        for where in (folder, home, *_stores(store, new))
        for p in where.iterdir()
        if ".partial" in p.name or ".old-" in p.name
    )
    return out


def _stores(*paths: Path | None) -> list[Path]:
    return [p for p in paths if p is not None and (p / "manifest.json").exists()]


def kill_campaign(work: Path, base: Path, levels: list[str]) -> dict:
    cases = kill_cases(work, base, levels)
    in_code = kill_points_in_source()
    tried = {c["point"] if not c["point"].startswith("replace:") else "replace:" for c in cases}
    results = []
    for k, case in enumerate(cases):
        result = run_kill(case, work / "kills" / f"k{k:02d}", k)
        log(
            f"kill {result['point']:22s} {result['command']:12s} reached={result['reached']} "
            f"broken={result['broken']} leftovers={result['leftovers']}"
        )
        results.append(result)
    return {
        "kill_points_in_code": sorted(in_code),
        "kill_points_not_tried": sorted(in_code - tried),
        "kills_tried": len(results),
        "kills_reached": sum(r["reached"] for r in results),
        "stores_left_broken": sum(r["broken"] for r in results),
        "tracebacks": sum("traceback" in r for r in results),
        "leftovers_after_repair_and_rerun": sum(len(r["leftovers"]) for r in results),
        "cases": results,
    }


# --------------------------------------------------------------------------- 2. byte flips


def _digest(*parts: object) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
    return sha.hexdigest()[:16]


def _frames_digest(dataset) -> str:
    """Every sample's tensors, in order, and the sample table."""
    sha = hashlib.sha256()
    sha.update(dataset.sample_structure.tobytes() + dataset.sample_head.tobytes())
    for i in range(len(dataset)):
        for key, value in sorted(dataset[i].items()):
            sha.update(key.encode() + value.numpy().tobytes())
    return sha.hexdigest()[:16]


def consumers(store: Path, scratch: Path, levels: list[str]) -> dict[str, Callable[[], str]]:
    """What reads a store, each giving a digest of what it produced."""
    from mfdata.convert import merge
    from mfdata.export import write_extxyz
    from mfdata.loading.lmdb_dataset import FidelityDataset
    from mfdata.loading.zarr_dataset import ZarrFidelityDataset
    from mfdata.query import decode_indices, select
    from mfdata.schema import QuerySpec
    from mfdata.stats import store_statistics
    from mfdata.store.lmdb_store import pack
    from mfdata.store.store import Store

    def lmdb_loader() -> str:  # what training reads: samples, frames, head statistics
        dataset = FidelityDataset([str(store)], levels, split=f"{SPLIT}:train")
        stats = Store(store).manifest.statistics.model_dump(mode="json")
        return _digest(_frames_digest(dataset), stats)

    def zarr_loader() -> str:
        return _frames_digest(ZarrFidelityDataset([str(store)], levels, split=f"{SPLIT}:train"))

    def query() -> str:
        spec = QuerySpec(has=[(levels[0], "energy")], max_atoms=40)
        return _digest(
            [decode_indices(e.indices).tolist() for e in select([Store(store)], spec).stores]
        )

    def statistics() -> str:
        return _digest(store_statistics(Store(store)).model_dump(mode="json"))

    def merged() -> str:
        new = merge([store], scratch / "merged", name=f"m{os.getpid()}")
        return _digest(new.manifest.checksum, new.manifest.statistics.model_dump(mode="json"))

    def exported() -> str:
        write_extxyz(Store(store), levels[0], scratch / "x.xyz")
        return _digest((scratch / "x.xyz").read_bytes())

    def repacked() -> str:
        pack(store, force=True)
        return lmdb_loader()

    return {
        "lmdb_loader": lmdb_loader,
        "zarr_loader": zarr_loader,
        "query": query,
        "statistics": statistics,
        "merge": merged,
        "export": exported,
        "repack": repacked,
    }


def check_store(store: Path, scratch: Path, levels: list[str]) -> dict[str, str]:
    """``verify``'s verdict and each consumer's outcome: a digest, "refused" or "traceback"."""
    from mfdata.errors import MfkitError
    from mfdata.store.store import Store

    scratch.mkdir(parents=True, exist_ok=True)
    out = {}
    try:
        out["verify"] = "caught" if Store(store).verify() else "silent"
    except MfkitError:
        out["verify"] = "caught"
    except Exception as exc:  # counted: a traceback
        out["verify"] = f"traceback {type(exc).__name__}: {str(exc)[:120]}"
    for name, call in consumers(store, scratch, levels).items():
        try:
            out[name] = call()
        except (MfkitError, FileExistsError, FileNotFoundError) as exc:
            out[name] = "refused"
            out[f"{name}_error"] = str(exc).splitlines()[0][:160]
        except Exception as exc:
            out[name] = f"traceback {type(exc).__name__}: {str(exc)[:120]}"
    return out


def lmdb_record_offsets(store: Path) -> dict[str, list[int]]:
    """Where in the LMDB data file each record's bytes (and the layout JSON) lie."""
    import lmdb

    from mfdata.store.lmdb_store import LAYOUT_KEY
    from mfdata.store.store import Store

    shard = store / Store(store).manifest.lmdb.shards[0]
    data = shard.read_bytes()
    env = lmdb.open(str(shard), readonly=True, lock=False, subdir=False)
    with env.begin() as txn:
        values = {bytes(k): bytes(v) for k, v in txn.cursor()}
    env.close()
    offsets = {}
    for key, value in values.items():
        start = data.find(value)
        name = "layout" if key == LAYOUT_KEY else f"record {int.from_bytes(key, 'big')}"
        # a byte of the atomic numbers (records) or of a label name (layout), and the middle
        inside = value.find(b"/forces") if key == LAYOUT_KEY else len(value) - 6
        offsets[name] = [start + inside, start + len(value) // 2]
    return {str(shard.relative_to(store)): offsets}


def flip_cases(base: Path, per_file: int, seed: int) -> list[tuple[str, int, str]]:
    """(file, offset, why) for every file of the store: ``per_file`` spread over each file, 8
    over the manifest, 24 over the LMDB file, and two in each LMDB record and in its layout."""
    rng = random.Random(seed)
    files = sorted(p for p in base.rglob("*") if p.is_file() and p.name != ".lock")
    cases = []
    for path in files:
        rel = str(path.relative_to(base))
        size = path.stat().st_size
        n = {"manifest.json": 8}.get(rel, 24 if rel.endswith(".lmdb") else per_file)
        n = min(n, size)
        for k in range(n):
            cases.append((rel, int((k + rng.random()) * size / n), "spread"))
    for rel, offsets in in_fork(lambda: lmdb_record_offsets(base))["result"].items():
        for what, where in offsets.items():
            cases += [(rel, offset, what) for offset in where]
    return cases


def run_flip(base: Path, case: tuple[str, int, str], folder: Path, levels: list[str], mask: int):
    """Flip one byte in a copy of the store and check the copy in a process of its own."""
    rel, offset, _ = case
    store = copy_store(base, folder / "s")
    path = store / rel
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))
    run = in_fork(lambda: check_store(store, folder / "scratch", levels))
    shutil.rmtree(folder, ignore_errors=True)
    return run


def classify(result: dict, reference: dict[str, str]) -> dict:
    """verify's verdict, and per consumer: refused, same, REACHED (another result) or traceback."""
    out = {"verify": result.get("verify", "crash")}
    for name in reference:
        if name == "verify":
            continue
        got = result.get(name, "crash")
        if got == reference[name]:
            out[name] = "same"
        elif got == "refused" or got.startswith(("traceback", "crash")):
            out[name] = got.split(":")[0]
        else:
            out[name] = "REACHED"
    return out


def flip_campaign(
    work: Path, base: Path, levels: list[str], per_file: int, jobs: int, seed: int
) -> dict:
    """Every flip of :func:`flip_cases`, checked in ``jobs`` runners at once, against what the
    clean store gives."""
    ref = in_fork(lambda: check_store(copy_store(base, work / "ref"), work / "ref-x", levels))
    reference = ref["result"]
    if not reference or any(
        v in ("refused", "caught") or "traceback" in v for v in reference.values()
    ):
        raise SystemExit(f"the clean store does not pass every check: {ref}")
    cases = flip_cases(base, per_file, seed)
    rng = random.Random(seed + 1)
    masks = [rng.randrange(1, 256) for _ in cases]
    log(f"{len(cases)} byte flips in {len({c[0] for c in cases})} files, {jobs} at once")
    work_of = [(k, case, mask) for k, (case, mask) in enumerate(zip(cases, masks, strict=True))]

    def runner(share: list) -> list[dict]:
        return [run_flip(base, c, work / "flips" / f"f{k:04d}", levels, m) for k, c, m in share]

    handles = [start_fork(lambda s=work_of[j::jobs]: runner(s)) for j in range(jobs)]
    results: list[dict] = [{}] * len(cases)
    for j, handle in enumerate(handles):
        for i, run in enumerate(finish(handle, timeout=None)["result"] or []):
            results[j + i * jobs] = run
    rows = []
    for (rel, offset, why), mask, run in zip(cases, masks, results, strict=True):
        outcome = classify(run.get("result") or {}, reference)
        if run.get("status") != 0:
            outcome["process"] = f"status {run.get('status')}: {run.get('stderr', '')[-200:]}"
        rows.append({"file": rel, "offset": offset, "mask": mask, "why": why, **outcome})
    return summarise_flips(rows)


def _kind(rel: str) -> str:
    if rel == "manifest.json":
        return "manifest"
    if rel.endswith(".lmdb"):
        return "lmdb data file"
    if rel.startswith("splits/"):
        return "split " + ("metadata" if rel.endswith("zarr.json") else "chunk")
    return "array " + ("metadata" if rel.endswith("zarr.json") else "chunk")


def summarise_flips(rows: list[dict]) -> dict:
    """The counts: caught by verify, reached, tracebacks, and bytes no value depends on."""
    names = [k for k in rows[0] if k not in ("file", "offset", "mask", "why", "verify", "process")]
    reached = [r for r in rows if any(r.get(c) == "REACHED" for c in names)]
    tracebacks = [
        r
        for r in rows
        if "process" in r
        or r["verify"].startswith(("traceback", "crash"))
        or any(str(r.get(c)).startswith(("traceback", "crash")) for c in names)
    ]
    caught = [r for r in rows if r["verify"] == "caught"]
    unused = [r for r in rows if r["verify"] == "silent" and all(r.get(c) == "same" for c in names)]
    by_kind: dict[str, Counter] = {}
    for r in rows:
        c = by_kind.setdefault(_kind(r["file"]), Counter())
        c["flips"] += 1
        c["caught_by_verify"] += r["verify"] == "caught"
        c["reached"] += r in reached
        c["unused_bytes"] += r in unused
    return {
        "flips": len(rows),
        "files": len({r["file"] for r in rows}),
        "caught_by_verify": len(caught),
        "missed_by_verify": len(rows) - len(caught),
        "missed_and_unused": len(unused),
        "reached_training_or_new_store": len(reached),
        "tracebacks_or_crashes": len(tracebacks),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "missed_by_verify_cases": [r for r in rows if r["verify"] != "caught"],
        "reached_cases": reached,
        "traceback_cases": tracebacks,
    }


def flip_every_record(store: Path) -> None:
    """XOR 0x80 into one atomic number of every LMDB record (Z >= 128: an IndexError in the
    type map if it were ever read)."""
    import lmdb

    from mfdata.store.store import Store

    shard = store / Store(store).manifest.lmdb.shards[0]
    env = lmdb.open(str(shard), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        for key, value in list(txn.cursor()):
            if len(key) == 8:
                value = bytearray(value)
                value[-5] ^= 0x80  # the last atomic number (before the CRC)
                txn.put(key, bytes(value))
    env.close()


def fit_campaign(work: Path, base: Path) -> dict:
    """``mftrain fit`` a few steps on the clean store, and on one whose every LMDB record has a
    flipped atomic number: the second must stop with one line, never train."""
    runs = {}
    for name in ("clean", "every record flipped"):
        folder = work / "fit" / name.replace(" ", "-")
        store = copy_store(base, folder / "s")
        if name != "clean":
            in_fork(lambda s=store: flip_every_record(s))
        args = (
            "--split",
            SPLIT,
            "--levels",
            FIT_LEVEL,
            "--max-steps",
            "2",
            "--out",
            folder / "run",
        )
        run = command("mftrain", "fit", "--data", store, *args)
        last = (run["stderr"].strip().splitlines() or [""])[-1]
        runs[name] = {"status": run["status"], "last_line": last[-300:]}
        log(f"fit {name}: status {run['status']}: {last[-160:]}")
    damaged = runs["every record flipped"]
    return {
        "clean_fit_trained": runs["clean"]["status"] == 0,
        "damaged_fit_refused_in_one_line": damaged["status"] == 2
        and "fails its checksum" in damaged["last_line"],
        "tracebacks": sum(
            traceback_or_crash({"stderr": r["last_line"], **r}) for r in runs.values()
        ),
        "cases": runs,
    }


# --------------------------------------------------------------------------- 3. hostile manifests


def hostile_manifests(levels: list[str]) -> dict[str, Callable[[dict], object]]:
    """Name -> a change of the manifest's JSON (returning text or bytes to write it raw)."""

    def update(**fields: object) -> Callable[[dict], dict]:
        return lambda d: {**d, **fields}

    def lmdb(shards: list[str]) -> Callable[[dict], dict]:
        return lambda d: {**d, "lmdb": {**d["lmdb"], "shards": shards}}

    def level_renamed(d: dict) -> dict:
        d["levels"]["no-such-level"] = d["levels"].pop(levels[0])
        return d

    def stats_level(d: dict) -> dict:
        d["statistics"]["levels"]["no-such-level"] = {"reference_energies": {"H": -13.6}}
        return d

    return {
        "deep nesting": lambda d: '{"a":' * 100_000 + "1" + "}" * 100_000,
        "deep nesting in a field": lambda d: {**d, "source": json.loads("[" * 900 + "]" * 900)},
        "not an object": lambda d: "[1, 2]",
        "truncated": lambda d: json.dumps(d)[:500],
        "empty": lambda d: "",
        "invalid UTF-8": lambda d: b'{"name": "\xff\xfe"}',
        "unknown level id": level_renamed,
        "statistics of an unknown level": stats_level,
        "n_structures 1e30": update(n_structures=10**30),
        "n_structures beyond the arrays": update(n_structures=10**9),
        "n_structures negative": update(n_structures=-1),
        "n_atoms huge": update(n_atoms=2**62),
        "format_version abc": update(format_version="abc"),
        "format_version 99": update(format_version="99.0"),
        "shard ../../etc/passwd": lmdb(["../../../../etc/passwd"]),
        "shard absolute": lmdb(["/etc/passwd"]),
        "shard in the manifest's place": lmdb(["manifest.json"]),
        "array path ../x": lambda d: {**d, "checksums": {**d["checksums"], "../x": "0" * 64}},
        "split name ../../x": update(splits=["../../x"]),
        "elements unknown": update(elements=["Xx"]),
        "wrong types": update(n_structures="eight", levels=[1, 2]),
        "wrong manifest_checksum": lambda d: {**d, "manifest_checksum": "0" * 64},
    }


def hostile_commands(store: Path, folder: Path, level: str) -> dict[str, tuple]:
    return {
        "info": ("info", store),
        "verify": ("verify", store),
        "verify --repair": ("verify", "--repair", store),
        "stats": ("stats", store),
        "pack": ("pack", store, "--force"),
        "split": ("split", store, "--name", "h"),
        "query": ("query", store, "--has", f"{level}:energy"),
        "export": ("export", store, "--level", level, "--out", folder / "x.xyz"),
        "merge": ("merge", store, "--out", folder / "merged"),
        "register": ("register", store, "--name", f"h{folder.name}"),
        "mftrain fit": (
            "mftrain",
            "fit",
            "--data",
            store,
            "--max-steps",
            "1",
            "--out",
            folder / "run",
        ),
    }


def hostile_campaign(work: Path, base: Path, levels: list[str]) -> dict:
    clean = json.loads((base / "manifest.json").read_text())
    rows = []
    for k, (name, change) in enumerate(hostile_manifests(levels).items()):
        folder = work / "hostile" / f"h{k:02d}"
        folder.mkdir(parents=True)
        data = dict(clean)
        if name != "wrong manifest_checksum":
            data.pop("manifest_checksum")
        changed = change(json.loads(json.dumps(data)))
        raw = (
            changed
            if isinstance(changed, bytes)
            else (changed if isinstance(changed, str) else json.dumps(changed))
        )
        raw = raw.encode() if isinstance(raw, str) else raw
        row = {"manifest": name, "tracebacks": [], "accepted": []}
        for what, args in hostile_commands(folder / "s", folder, levels[0]).items():
            shutil.rmtree(folder / "s", ignore_errors=True)
            copy_store(base, folder / "s")
            (folder / "s" / "manifest.json").write_bytes(raw)
            run = command(*args)
            if traceback_or_crash(run):
                row["tracebacks"].append(f"{what}: status {run['status']}: {run['stderr'][-300:]}")
            elif run["status"] == 0:
                row["accepted"].append(what)
        log(f"hostile {name:32s} tracebacks={len(row['tracebacks'])} accepted={row['accepted']}")
        rows.append(row)
    n_commands = len(hostile_commands(work, work, levels[0]))
    return {
        "hostile_manifests": len(rows),
        "commands": n_commands,
        "runs": len(rows) * n_commands,
        "tracebacks": sum(len(r["tracebacks"]) for r in rows),
        "accepted_runs": sum(len(r["accepted"]) for r in rows),
        "cases": rows,
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temp dir)")
    parser.add_argument("--flips-per-file", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="flip checks at once")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--only", choices=["kills", "flips", "fit", "hostile"], action="append")
    args = parser.parse_args()
    tmp = None
    if args.workdir:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=False)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="mfkit-campaign-")
        work = Path(tmp.name)
    os.environ["MFKIT_HOME"] = str(work / "home")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    import mfdata.cli  # noqa: F401 - imported once; every command forks from here
    import mftrain.cli  # noqa: F401
    from mfdata.store.store import Store

    torch.set_num_threads(1)
    start = time.perf_counter()
    base = build_base(work)
    levels = in_fork(lambda: Store(base).levels)["result"]
    warm_up(work, base, levels)
    parts = args.only or ["kills", "flips", "fit", "hostile"]
    result: dict[str, object] = {"store": str(SOURCE.name), "levels": levels}
    timings = {}
    for part in parts:
        t = time.perf_counter()
        if part == "kills":
            result["kills"] = kill_campaign(work, base, levels)
        elif part == "flips":
            result["flips"] = flip_campaign(
                work, base, levels, args.flips_per_file, args.jobs, args.seed
            )
        elif part == "fit":
            result["fit"] = fit_campaign(work, base)
        else:
            result["hostile"] = hostile_campaign(work, base, levels)
        timings[part] = round(time.perf_counter() - t, 1)
    result["seconds"] = {**timings, "total": round(time.perf_counter() - start, 1)}
    (work / "campaign.json").write_text(json.dumps(result, indent=1))
    log(f"details: {work / 'campaign.json'}")
    print(json.dumps(headline(result)))
    if tmp is not None:
        tmp.cleanup()


def warm_up(work: Path, base: Path, levels: list[str]) -> None:
    """Run every check once here, so the forked children start with every lazy import and
    codec already loaded (a throwaway copy: no child reads it)."""
    check_store(copy_store(base, work / "warm"), work / "warm-x", levels)


def headline(result: dict) -> dict:
    """The counts, without the per-case lists."""
    out = {}
    for part, value in result.items():
        if isinstance(value, dict):
            out[part] = {k: v for k, v in value.items() if not k.endswith("cases")}
        else:
            out[part] = value
    return out


if __name__ == "__main__":
    main()
