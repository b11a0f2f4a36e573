"""Store benchmark: conversion speed, bytes on disk and read speed, side by side with peers.

    python benchmarks/store.py --quick      # under a minute
    python benchmarks/store.py              # ~20 minutes on 2 cores: mfkit at 1M, peers at 100k

A synthetic ANI-like dataset (formula groups of 3-30 H/C/N/O atoms; ωB97X/6-31G(d) and
ωB97X/def2-TZVPP energies and forces on every conformer, CCSD(T)*/CBS energies on 10 %; float32
coordinates and forces, float64 energies, in Hartree as the ANI-1x release) is written as an
ANI-1x-layout HDF5 file with gzip, then:

- converted with ``mfdata convert`` (structures/s, wall and per CPU-second), profiled in process;
- measured on disk: mfkit Zarr (lossless and ``--precision compact``) vs the gzip HDF5 and extxyz;
- packed with ``mfdata pack`` and read at random into torch dicts, against nequip's
  ``NequIPLMDBDataset`` and ``ase.db`` (sqlite) holding the same structures, plus block-sequential
  reads from Zarr;
- the real files in ../shared/data are converted too (time and bytes).

Progress goes to stderr; the last line of stdout is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
HARTREE_EV = 27.211386024367243
ELEMENTS = np.array([1, 6, 7, 8], dtype=np.uint8)
ATOM_ENERGY_HA = {1: -0.5, 6: -37.8, 7: -54.6, 8: -75.0}
LEVEL = "wb97x-631gd"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _file_bytes(path: Path) -> int:
    """Bytes a file takes: its size, or its allocated blocks when it is sparse (LMDB maps)."""
    st = path.stat()
    return min(st.st_size, st.st_blocks * 512)


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (or of the file)."""
    if path.is_file():
        return _file_bytes(path)
    return sum(_file_bytes(p) for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- synthetic data


def synthetic_groups(n_structures: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Formula groups in ANI-1x layout (Hartree, Å), ``n_structures`` conformers in all."""
    rng = np.random.default_rng(seed)
    groups = []
    remaining = n_structures
    while remaining > 0:
        n_atoms = int(rng.integers(3, 31))
        conformers = int(min(remaining, rng.integers(50, 1000)))
        numbers = rng.choice(ELEMENTS, size=n_atoms, p=[0.5, 0.3, 0.1, 0.1])
        base = rng.uniform(0, 1.5 * n_atoms ** (1 / 3), size=(n_atoms, 3))
        coordinates = (base + rng.normal(0, 0.1, size=(conformers, n_atoms, 3))).astype(np.float32)
        e0 = sum(ATOM_ENERGY_HA[int(z)] for z in numbers)
        e_dz = e0 + rng.normal(0, 0.01, conformers)
        e_tz = e_dz - 0.02 * n_atoms + rng.normal(0, 0.002, conformers)
        e_cc = e_dz - 0.05 * n_atoms + rng.normal(0, 0.002, conformers)
        e_cc[rng.random(conformers) >= 0.1] = np.nan
        f_dz = rng.normal(0, 0.03, size=(conformers, n_atoms, 3)).astype(np.float32)
        f_tz = (f_dz + rng.normal(0, 0.003, size=f_dz.shape)).astype(np.float32)
        groups.append(
            {
                "atomic_numbers": numbers,
                "coordinates": coordinates,
                "wb97x_dz.energy": e_dz,
                "wb97x_dz.forces": f_dz,
                "wb97x_tz.energy": e_tz,
                "wb97x_tz.forces": f_tz,
                "ccsd(t)_cbs.energy": e_cc,
            }
        )
        remaining -= conformers
    return groups


def write_ani_h5(path: Path, groups: list[dict[str, np.ndarray]], shuffle: bool = False) -> None:
    """The ANI-1x release layout: one group per formula, gzip-compressed datasets."""
    with h5py.File(path, "w") as f:
        for g, data in enumerate(groups):
            z = data["atomic_numbers"]
            symbols = "".join(f"{'HCNO'[list(ELEMENTS).index(e)]}" for e in z[:6])
            group = f.create_group(f"{symbols}{len(z)}_{g}")
            for name, array in data.items():
                group.create_dataset(name, data=array, compression="gzip", shuffle=shuffle)


def write_extxyz(path: Path, groups: list[dict[str, np.ndarray]], limit: int) -> int:
    """The same structures as extxyz (eV, eV/Å; one key per level), at most ``limit``."""
    from ase import Atoms
    from ase.io import write

    frames = []
    for data in groups:
        for c in range(len(data["coordinates"])):
            atoms = Atoms(numbers=data["atomic_numbers"], positions=data["coordinates"][c])
            atoms.info["energy_wb97x_dz"] = data["wb97x_dz.energy"][c] * HARTREE_EV
            atoms.info["energy_wb97x_tz"] = data["wb97x_tz.energy"][c] * HARTREE_EV
            if np.isfinite(data["ccsd(t)_cbs.energy"][c]):
                atoms.info["energy_ccsd_t_cbs"] = data["ccsd(t)_cbs.energy"][c] * HARTREE_EV
            atoms.arrays["forces_wb97x_dz"] = data["wb97x_dz.forces"][c] * HARTREE_EV
            atoms.arrays["forces_wb97x_tz"] = data["wb97x_tz.forces"][c] * HARTREE_EV
            frames.append(atoms)
            if len(frames) == limit:
                break
        if len(frames) == limit:
            break
    write(path, frames, format="extxyz")
    return len(frames)


def write_aselmdb(path: Path, groups: list[dict[str, np.ndarray]]) -> int:
    """The wb97x_dz labels of ``groups`` as fairchem writes OMol25 (ase-db-backends' aselmdb:
    calculator energy and forces in eV and eV/Å, charge, spin and data_id in the row's data)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase_db_backends.aselmdb import LMDBDatabase

    n = 0
    with LMDBDatabase(path) as db:
        for data in groups:
            for c in range(len(data["coordinates"])):
                atoms = Atoms(numbers=data["atomic_numbers"], positions=data["coordinates"][c])
                atoms.calc = SinglePointCalculator(
                    atoms,
                    energy=float(data["wb97x_dz.energy"][c]) * HARTREE_EV,
                    forces=data["wb97x_dz.forces"][c].astype(np.float64) * HARTREE_EV,
                )
                db.write(atoms, data={"charge": 0, "spin": 1, "data_id": f"s{n}"})
                n += 1
    Path(f"{path}-lock").unlink(missing_ok=True)
    return n


def take(groups: list[dict[str, np.ndarray]], n: int) -> list[dict[str, np.ndarray]]:
    """The first ``n`` conformers of ``groups``, as groups."""
    out = []
    for data in groups:
        if n <= 0:
            break
        k = min(n, len(data["coordinates"]))
        out.append({key: v if key == "atomic_numbers" else v[:k] for key, v in data.items()})
        n -= k
    return out


def aselmdb_case(work: Path, env: dict[str, str], n: int, n_files: int) -> dict:
    """aselmdb conversion against the ANI HDF5 reader on the same ``n`` structures (one level:
    energy and forces), per CPU-second; then the same structures as ``n_files`` small files (a
    shard glob), whose peak memory should stay that of one file of ``n`` (flat in files)."""
    groups = take(synthetic_groups(n, seed=2), n)
    one_level = [
        {k: g[k] for k in ("atomic_numbers", "coordinates", "wb97x_dz.energy", "wb97x_dz.forces")}
        for g in groups
    ]
    h5 = work / "aselmdb_peer.h5"
    write_ani_h5(h5, one_level)
    one = work / "one.aselmdb"
    write_aselmdb(one, one_level)
    shards = work / "shards"
    shards.mkdir(exist_ok=True)
    conformers = [
        {
            **{k: g[k] for k in ("atomic_numbers",)},
            **{k: g[k][c : c + 1] for k in g if k != "atomic_numbers"},
        }
        for g in one_level
        for c in range(len(g["coordinates"]))
    ]
    per_file = -(-len(conformers) // n_files)
    files = []
    for k in range(0, len(conformers), per_file):
        path = shards / f"data.{len(files):05d}.aselmdb"
        write_aselmdb(path, conformers[k : k + per_file])
        files.append(path)
    log(f"aselmdb case: {n} structures written as HDF5, one aselmdb file, {len(files)} files")
    startup = run_mfdata("levels", env=env)
    runs = {
        "hdf5_ani": run_mfdata("convert", h5, "--out", work / "asel_h5", env=env),
        "aselmdb_one_file": run_mfdata(
            "convert", one, "--level", "omol25", "--out", work / "asel_one", env=env
        ),
        f"aselmdb_{len(files)}_files": run_mfdata(
            "convert", *files, "--level", "omol25", "--out", work / "asel_many", env=env
        ),
    }
    out = {
        "n_structures": n,
        "n_files": len(files),
        "cli_startup_cpu_s": round(startup["cpu_s"], 2),
        "cli_startup_max_rss_mb": round(startup["max_rss_mb"]),
    }
    for name, t in runs.items():
        out[name] = {
            "wall_s": round(t["wall_s"], 2),
            "cpu_s": round(t["cpu_s"], 2),
            "structures_per_cpu_s": round(n / t["cpu_s"]),
            "structures_per_cpu_s_without_startup": round(
                n / max(1e-9, t["cpu_s"] - startup["cpu_s"])
            ),
            "max_rss_mb": round(t["max_rss_mb"]),
        }
    key = "structures_per_cpu_s_without_startup"
    out["aselmdb_vs_hdf5_per_cpu_s"] = round(out["aselmdb_one_file"][key] / out["hdf5_ani"][key], 3)
    return out


def aselmdb_memory_case(work: Path, env: dict[str, str], per_file: int, counts: list[int]) -> dict:
    """Peak memory of converting K aselmdb files of ``per_file`` structures each, for each K in
    ``counts``: a conversion file by file should stay flat in K (one file in memory)."""
    groups = take(synthetic_groups(per_file * max(counts), seed=3), per_file * max(counts))
    conformers = [
        {"atomic_numbers": g["atomic_numbers"]}
        | {k: g[k][c : c + 1] for k in ("coordinates", "wb97x_dz.energy", "wb97x_dz.forces")}
        for g in groups
        for c in range(len(g["coordinates"]))
    ]
    shards = work / "memory_shards"
    shards.mkdir(exist_ok=True)
    files = []
    for k in range(max(counts)):
        path = shards / f"data.{k:05d}.aselmdb"
        write_aselmdb(path, conformers[k * per_file : (k + 1) * per_file])
        files.append(path)
    out = {"structures_per_file": per_file}
    for n_files in counts:
        log(f"aselmdb memory case: {n_files} files of {per_file}")
        t = run_mfdata(
            "convert",
            *files[:n_files],
            "--level",
            "omol25",
            "--out",
            work / f"mem_{n_files}",
            env=env,
        )
        out[f"{n_files}_files"] = {
            "n_structures": n_files * per_file,
            "wall_s": round(t["wall_s"], 2),
            "cpu_s": round(t["cpu_s"], 2),
            "max_rss_mb": round(t["max_rss_mb"]),
        }
    return out


# --------------------------------------------------------------------------- mfkit


def run_mfdata(*args: object, env: dict[str, str]) -> dict[str, float]:
    """Run the ``mfdata`` CLI; wall time, the child's CPU time and its peak resident memory."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mfdata.cli", *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            stderr = err.read().decode(errors="replace")
            raise RuntimeError(f"mfdata {' '.join(map(str, args))} failed:\n{stderr}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
    }


def profile_convert(source: Path, out: Path, top: int = 15) -> dict:
    """Convert in process: wall time of each stage, and the mfdata/h5py/zarr functions that take
    the most time (cumulative, under cProfile)."""
    from mfdata.linking import link_sources
    from mfdata.readers import read_source
    from mfdata.store.store import write_store

    stages = {}
    profiler = cProfile.Profile()
    cpu = time.process_time()
    start = time.perf_counter()
    profiler.enable()
    source_data = read_source(str(source))
    stages["read_source_s"] = time.perf_counter() - start
    structures = link_sources([source_data], None, 1e-4)
    stages["link_s"] = time.perf_counter() - start - stages["read_source_s"]
    write_store(out, structures, [source_data])
    profiler.disable()
    stages["total_s"] = time.perf_counter() - start
    stages["write_store_s"] = stages["total_s"] - stages["read_source_s"] - stages["link_s"]
    stages["cpu_s"] = time.process_time() - cpu
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():
        if not any(part in filename for part in ("mfdata", "h5py", "zarr", "numcodecs")):
            continue
        rows.append(
            {
                "function": f"{Path(filename).parent.name}/{Path(filename).name}:{line}({name})",
                "cumtime_s": round(cumtime, 3),
                "tottime_s": round(tottime, 3),
                "calls": calls,
            }
        )
    rows.sort(key=lambda r: -r["cumtime_s"])
    return {
        "stages_s_under_cprofile": {k: round(v, 2) for k, v in stages.items()},
        "top_cumulative": rows[:top],
    }


def timed_passes(read, order: list[int]) -> dict[str, float]:
    """Reads/s over ``order`` twice: the first pass maps pages of the file into the process (or
    reads them from disk if the OS evicted them); the second is the steady state of training
    epochs on a dataset that fits in memory."""
    out = {}
    for name in ("first_pass", "warm"):
        start = time.perf_counter()
        for i in order:
            read(i)
        out[name] = len(order) / (time.perf_counter() - start)
    return out


def random_reads_mfkit(store: Path, n_reads: int, seed: int = 1) -> dict[str, float]:
    """Random single-structure reads/s into torch dicts (float64) from the LMDB shards."""
    from mfdata.store.lmdb_store import LmdbStore

    reader = LmdbStore(store)
    order = np.random.default_rng(seed).integers(0, len(reader), n_reads).tolist()
    reader.torch_dict(0, LEVEL)  # open the shards
    return timed_passes(lambda i: reader.torch_dict(i, LEVEL), order)


def block_reads_zarr(store: Path, block: int = 8192) -> float:
    """Structures/s reading consecutive blocks (geometry + one level's labels) from Zarr."""
    import zarr

    root = zarr.open_group(str(store / "data.zarr"), mode="r")
    n_atoms = root["structures/n_atoms"][...]
    start_atoms = np.concatenate([[0], np.cumsum(n_atoms, dtype=np.int64)])
    n = len(n_atoms)
    t0 = time.perf_counter()
    for a in range(0, n, block):
        b = min(n, a + block)
        lo, hi = int(start_atoms[a]), int(start_atoms[b])
        root["atoms/numbers"][lo:hi]
        root["atoms/positions"][lo:hi]
        root["structures/cell"][a:b]
        root[f"labels/{LEVEL}/energy/values"][a:b]
        root[f"labels/{LEVEL}/energy/present"][a:b]
        root[f"labels/{LEVEL}/forces/values"][lo:hi]
        root[f"labels/{LEVEL}/forces/present"][a:b]
    return n / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- peers


def peer_frames(store: Path, limit: int):
    """ase.Atoms of the store's first ``limit`` structures with their wb97x-631gd labels."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    from mfdata.store.lmdb_store import LmdbStore

    reader = LmdbStore(store)
    for i in range(min(limit, len(reader))):
        r = reader.record(i)
        atoms = Atoms(numbers=r["numbers"], positions=r["positions"], cell=r["cell"], pbc=r["pbc"])
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(r[f"{LEVEL}/energy"]), forces=np.array(r[f"{LEVEL}/forces"])
        )
        yield atoms


def build_nequip_lmdb(store: Path, path: Path, limit: int) -> float:
    """NequIPLMDBDataset.save_from_iterator over the same structures as AtomicDataDicts."""
    from nequip.data import from_ase
    from nequip.data.dataset import NequIPLMDBDataset

    start = time.perf_counter()
    NequIPLMDBDataset.save_from_iterator(
        str(path), (from_ase(a) for a in peer_frames(store, limit)), map_size=1 << 34
    )
    return time.perf_counter() - start


def random_reads_nequip(path: Path, n_reads: int, seed: int = 1) -> dict[str, float]:
    from nequip.data.dataset import NequIPLMDBDataset

    dataset = NequIPLMDBDataset(str(path))
    order = np.random.default_rng(seed).integers(0, len(dataset), n_reads).tolist()
    dataset[0]  # open the environment
    return timed_passes(dataset.__getitem__, order)


def build_ase_db(store: Path, path: Path, limit: int) -> float:
    import ase.db

    start = time.perf_counter()
    with ase.db.connect(str(path), append=False) as db:
        for atoms in peer_frames(store, limit):
            db.write(atoms)
    return time.perf_counter() - start


def random_reads_ase_db(path: Path, n_reads: int, seed: int = 1) -> dict[str, float]:
    """Row -> Atoms -> nequip AtomicDataDict, as an ASE-based loader would do."""
    import ase.db
    from nequip.data import from_ase

    db = ase.db.connect(str(path))
    n = db.count()
    order = np.random.default_rng(seed).integers(1, n + 1, n_reads).tolist()
    from_ase(db.get(id=1).toatoms())
    return timed_passes(lambda i: from_ase(db.get(id=i).toatoms()), order)


# --------------------------------------------------------------------------- real files

REAL_FILES = [
    ("ani1_n5", ["modelforge_testdata/ani1_n5.hdf5"]),
    ("ani2x_minimal", ["modelforge_testdata/ani2x_minimal.hdf5"]),
    ("spice_n2", ["modelforge_testdata/SPICE-1.1.4_n2.hdf5"]),
    ("bpa_train300K", ["botnet_3BPA/train_300K.xyz", "--level", "wb97x_dz"]),
    (
        "acac_md600K",
        ["botnet_acac/test_MD_600K.xyz", "--level", "pbe-d3-def2svp"],
    ),
    (
        "solvent_train",
        [
            "mace_tutorial_solvent_xtb/solvent_train.xyz",
            "--level",
            "GFN2-xTB",
            "--isolated-atoms",
            "config_type=IsolatedAtom",
            "--pbc",
            "F",
        ],
    ),
    (
        "water_mp2_avtz",
        [
            "water_dimers_mp2_ccsdt/water_dimers_amoeba_bulk300K_1000_4.5_lt_Roo_lt_6.0_MP2_AVTZ.xyz",
            "--level",
            "mp2/avtz",
            "--map",
            "force=mp2/avtz:forces",
            "--units",
            "force=eV/Å",
        ],
    ),
]


def real_files(work: Path, env: dict[str, str]) -> list[dict]:
    from mfdata.store.store import Store

    rows = []
    for name, args in REAL_FILES:
        source = SHARED / args[0]
        if not source.exists():
            log(f"  {name}: {source} missing, skipped")
            continue
        out = work / f"real_{name}"
        try:
            t = run_mfdata("convert", source, *args[1:], "--out", out, env=env)
        except RuntimeError as exc:
            log(f"  {name}: conversion failed: {exc}")
            rows.append({"name": name, "error": str(exc).splitlines()[-1]})
            continue
        n = Store(out).manifest.n_structures
        rows.append(
            {
                "name": name,
                "n_structures": n,
                "convert_wall_s": round(t["wall_s"], 2),
                "source_bytes_per_structure": round(dir_bytes(source) / n, 1),
                "zarr_bytes_per_structure": round(dir_bytes(out / "data.zarr") / n, 1),
            }
        )
        log(f"  {rows[-1]}")
    return rows


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--n", type=int, help="structures for mfkit (default 1M; quick 20k)")
    parser.add_argument("--peers", type=int, help="structures for peers (default 100k; quick 3k)")
    parser.add_argument("--reads", type=int, help="random reads per reader")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument("--no-profile", action="store_true", help="skip the in-process profile")
    parser.add_argument(
        "--only-aselmdb",
        action="store_true",
        help="only the aselmdb case (aselmdb vs HDF5 conversion, a glob of small files)",
    )
    parser.add_argument(
        "--aselmdb-memory",
        help="only peak memory of K aselmdb files of --aselmdb-n structures each, for each K of "
        "this comma-separated list (e.g. 100,1000)",
    )
    parser.add_argument("--aselmdb-n", type=int, help="structures (default 100k; quick 2k)")
    parser.add_argument("--aselmdb-files", type=int, help="small files (default 10k; quick 200)")
    args = parser.parse_args()
    n_big = args.n or (20_000 if args.quick else 1_000_000)
    n_peer = args.peers or (3_000 if args.quick else 100_000)
    n_reads = args.reads or (10_000 if args.quick else 20_000)
    n_ase_db = min(n_peer, 2_000 if args.quick else 100_000)
    n_extxyz = min(n_big, 2_000 if args.quick else 20_000)

    tmp = None
    if args.workdir:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="mfkit-bench-")
        work = Path(tmp.name)
    env = {**os.environ, "MFKIT_HOME": str(work / "mfkit_home")}
    os.environ["MFKIT_HOME"] = env["MFKIT_HOME"]  # in-process writes register here too
    result: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "n_structures": n_big,
        "n_peer": n_peer,
        "n_random_reads": n_reads,
    }
    try:
        n_asel = args.aselmdb_n or (2_000 if args.quick else 100_000)
        n_asel_files = args.aselmdb_files or (200 if args.quick else 10_000)
        if args.aselmdb_memory:
            counts = [int(k) for k in args.aselmdb_memory.split(",")]
            result = {"machine": result["machine"]}
            result["aselmdb_memory"] = aselmdb_memory_case(work, env, args.aselmdb_n or 20, counts)
            print(json.dumps(result))
            return
        if args.only_aselmdb:
            result = {"machine": result["machine"]}
            result["aselmdb"] = aselmdb_case(work, env, n_asel, n_asel_files)
            print(json.dumps(result))
            return
        # ---------------------------------------------------------------- data
        t0 = time.perf_counter()
        groups = synthetic_groups(n_big, seed=0)
        big_h5 = work / "synthetic.h5"
        write_ani_h5(big_h5, groups)
        n_atoms_total = sum(g["coordinates"].shape[0] * g["coordinates"].shape[1] for g in groups)
        log(
            f"synthetic: {n_big} structures, {n_atoms_total} atoms, {len(groups)} groups, "
            f"{time.perf_counter() - t0:.1f} s"
        )
        result["n_atoms"] = n_atoms_total
        result["n_groups"] = len(groups)

        # ---------------------------------------------------------------- convert
        startup = run_mfdata("levels", env=env)
        big = work / "synthetic_store"
        t = run_mfdata("convert", big_h5, "--out", big, env=env)
        compact = work / "synthetic_compact"
        tc = run_mfdata("convert", big_h5, "--out", compact, "--precision", "compact", env=env)
        convert = {
            "wall_s": round(t["wall_s"], 2),
            "cpu_s": round(t["cpu_s"], 2),
            "cli_startup_s": round(startup["wall_s"], 2),
            "structures_per_s": round(n_big / t["wall_s"]),
            "structures_per_cpu_s": round(n_big / t["cpu_s"]),
            "structures_per_s_without_startup": round(
                n_big / max(1e-9, t["wall_s"] - startup["wall_s"])
            ),
            "compact_wall_s": round(tc["wall_s"], 2),
        }
        log(f"convert: {convert}")
        if not args.no_profile:
            profile = profile_convert(big_h5, work / "profiled_store")
            convert["profile"] = profile
            log(f"profile stages: {profile['stages_s_under_cprofile']}")
            for row in profile["top_cumulative"]:
                log(
                    f"  {row['cumtime_s']:8.3f} s cum {row['tottime_s']:8.3f} s own  "
                    f"{row['calls']:>7} calls  {row['function']}"
                )
            shutil.rmtree(work / "profiled_store", ignore_errors=True)
        result["convert"] = convert
        result["convert_structures_per_s"] = convert["structures_per_s"]
        result["convert_structures_per_cpu_s"] = convert["structures_per_cpu_s"]

        # ---------------------------------------------------------------- bytes
        shuffled_h5 = work / "synthetic_shuffle.h5"
        write_ani_h5(shuffled_h5, groups, shuffle=True)
        xyz = work / "synthetic.extxyz"
        n_xyz = write_extxyz(xyz, groups, n_extxyz)
        del groups
        sizes = {
            "hdf5_gzip": dir_bytes(big_h5) / n_big,
            "hdf5_gzip_shuffle": dir_bytes(shuffled_h5) / n_big,
            "zarr_lossless": dir_bytes(big / "data.zarr") / n_big,
            "zarr_compact": dir_bytes(compact / "data.zarr") / n_big,
            "extxyz": dir_bytes(xyz) / n_xyz,
        }
        shuffled_h5.unlink()

        # ---------------------------------------------------------------- pack + reads
        tp = run_mfdata("pack", big, env=env)
        result["pack"] = {
            "wall_s": round(tp["wall_s"], 2),
            "structures_per_s": round(n_big / tp["wall_s"]),
        }
        sizes["lmdb"] = dir_bytes(big / "lmdb") / n_big
        result["bytes_per_structure"] = {k: round(v, 1) for k, v in sizes.items()}
        result["zarr_bytes_vs_gzip_hdf5"] = round(sizes["zarr_lossless"] / sizes["hdf5_gzip"], 3)
        result["compact_bytes_vs_gzip_hdf5"] = round(sizes["zarr_compact"] / sizes["hdf5_gzip"], 3)
        log(f"bytes/structure: {result['bytes_per_structure']}")

        reads: dict[str, dict[str, float]] = {}
        reads[f"mfkit_lmdb_{n_big}"] = random_reads_mfkit(big, n_reads)
        zarr_rate = block_reads_zarr(big)
        reads[f"zarr_block_sequential_{n_big}"] = {"first_pass": zarr_rate, "warm": zarr_rate}
        log(f"reads at {n_big}: {reads}")

        # peers on the same structures: a store of n_peer structures
        peer_h5 = work / "peer.h5"
        write_ani_h5(peer_h5, synthetic_groups(n_peer, seed=0))
        peer = work / "peer_store"
        run_mfdata("convert", peer_h5, "--out", peer, env=env)
        run_mfdata("pack", peer, env=env)
        reads["mfkit_lmdb"] = random_reads_mfkit(peer, n_reads)
        nequip_path = work / "peer_nequip.lmdb"
        result["nequip_lmdb_build_s"] = round(build_nequip_lmdb(peer, nequip_path, n_peer), 1)
        sizes["nequip_lmdb"] = dir_bytes(nequip_path) / n_peer
        reads["nequip_lmdb"] = random_reads_nequip(nequip_path, max(500, n_reads // 4))
        db_path = work / "peer_ase.db"
        result["ase_db_build_s"] = round(build_ase_db(peer, db_path, n_ase_db), 1)
        result["ase_db_n_structures"] = n_ase_db
        sizes["ase_db"] = dir_bytes(db_path) / n_ase_db
        reads["ase_db"] = random_reads_ase_db(db_path, max(500, n_reads // 10))
        result["bytes_per_structure"] = {k: round(v, 1) for k, v in sizes.items()}
        result["reads_per_s"] = {k: round(v["warm"]) for k, v in reads.items()}
        result["reads_per_s_first_pass"] = {k: round(v["first_pass"]) for k, v in reads.items()}
        warm, first = result["reads_per_s"], result["reads_per_s_first_pass"]
        result["lmdb_read_speedup_vs_nequip"] = round(warm["mfkit_lmdb"] / warm["nequip_lmdb"], 1)
        result["lmdb_read_speedup_vs_nequip_first_pass"] = round(
            first["mfkit_lmdb"] / first["nequip_lmdb"], 1
        )
        result["lmdb_read_speedup_vs_ase_db"] = round(warm["mfkit_lmdb"] / warm["ase_db"], 1)
        log(f"reads/s (warm): {warm}")
        log(f"reads/s (first pass): {first}")

        # ---------------------------------------------------------------- aselmdb
        result["aselmdb"] = aselmdb_case(work, env, n_asel, n_asel_files)
        log(f"aselmdb: {result['aselmdb']}")

        # ---------------------------------------------------------------- real files
        result["real_files"] = real_files(work, env)

        result["goals"] = {
            "convert_per_core_50k": convert["structures_per_cpu_s"] >= 50_000,
            "lmdb_reads_15x_nequip": result["lmdb_read_speedup_vs_nequip"] >= 15,
            "zarr_lossless_le_gzip_hdf5": result["zarr_bytes_vs_gzip_hdf5"] <= 1.0,
            "zarr_compact_le_0.6_gzip_hdf5": result["compact_bytes_vs_gzip_hdf5"] <= 0.6,
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
