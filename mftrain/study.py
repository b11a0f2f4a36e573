"""What every ``mftrain study`` recipe shares: study stores, runs, scores, and the report's parts.

A recipe compares models on one store. To make the comparison fair and checkable, models never
train on the user's store itself: the recipe writes *study stores* derived from it (mfdata's
format, under ``OUT/data``), so that what each run could see is on disk and in its provenance:

- ``test``: the held-out structures, drawn with the recipe's split seed from those that have
  every label the recipe scores; all their labels kept. Every model is scored on it.
- ``train-nN-seedK``: every other structure of the store, with the scarce (expensive) level's
  labels kept only on N training structures and on the validation structures, and a saved split
  ``study`` whose validation part is those validation structures. For seed K, the scarce level's
  structures outside the test part are shuffled once: the first ones validate, the next N train,
  so the N structures of a smaller N are among those of a larger one (nested learning curves).
  Every structure without the scarce level trains (its cheaper labels are what the study is
  about).

No training store holds a geometry of the test store: :func:`check_held_out` compares geometry
hashes. Statistics (the heads' reference energies) come from the training stores alone.

Every run is ``mftrain fit`` in a subprocess on a written config (``RUN/study-config.yaml``,
with the resolved ``mftrain.yaml`` and nequip ``config.yaml`` that fit writes beside it), and is
scored on ``test`` with :func:`mftrain.evaluate.evaluate`. A run that finished is not run again
when the study is repeated in the same directory; one that was killed resumes from its
``last.ckpt``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mfdata.levels import resolve_level
from mfdata.records import Source, Structures
from mfdata.registry import open_store
from mfdata.schema import LABEL_KINDS, SplitInfo
from mfdata.store.store import Store, store_as_source, write_store
from mftrain.config import ConfigError, TrainConfig

Echo = Callable[[str], None]
PLAN_FILE = "study-plan.json"
SCORE_FILE = "score.json"
SPLIT = "study"  # the split saved in every training store
# Torch threads per run: small molecules gain little from more, and on a busy machine idle
# threads spin. Measured on 2 shared cores under load: 200 training steps took 29 s with one
# thread and 173 s with two; a force call of the MD check took 13 ms with one and 770 ms with two.
THREADS = 1


# Settings every model shares unless --config gives a base config (see the report's
# "Hyperparameters" section): plateau schedule, because the budget is wall-clock time, not steps.
STUDY_DEFAULTS = {
    "data.batch_size": 8,
    "data.epoch_size": 256,
    "optimizer.lr": 0.01,
    "lr_scheduler": {"kind": "plateau", "factor": 0.5, "patience": 5},
    "trainer.progress_bar": False,
}


def default_store() -> str:
    """The bundled methanol store (a writable copy): every study's data when none is given."""
    from mfdata.examples import bundled_store

    return str(bundled_store())


def base_config(path: str | None) -> TrainConfig:
    """The settings every model of a study shares: ``--config``, or :data:`STUDY_DEFAULTS`."""
    from mftrain.config import load_config, with_overrides

    if path is not None:
        config = load_config(path)
    else:
        config = with_overrides(TrainConfig(), STUDY_DEFAULTS)
    if config.lr_scheduler is not None and config.lr_scheduler.kind == "cosine":
        raise ConfigError(
            f"{path}: lr_scheduler cosine decays over max_steps, but a study's budget is time; "
            "use plateau or exponential"
        )
    return config


def budget(minutes: float) -> dict[str, Any]:
    """Trainer overrides for a wall-clock budget: ``max_time_minutes``, steps and epochs open."""
    return {
        "trainer.max_steps": 10**9,
        "trainer.max_epochs": None,
        "trainer.max_time_minutes": minutes,
    }


# --------------------------------------------------------------------------- study stores


@dataclass
class StudyData:
    """The user's store read once, the test store, and the scarce level's other structures."""

    root: Path
    source: Source  # the user's store as an mfdata source (its structures and units)
    info: dict[str, Any]  # path, name, checksum of the user's store
    scarce: str
    test: Path
    test_index: np.ndarray  # structure indices in the user's store
    pool: np.ndarray  # structures with a scarce label outside the test part


@dataclass
class Draw:
    """One seed's choice among the pool: validation structures and the training order."""

    seed: int
    val: np.ndarray  # structure indices in the user's store
    order: np.ndarray  # the other pool structures, shuffled: a run with N takes the first N

    def train(self, n: int | None) -> np.ndarray:
        return np.sort(self.order if n is None else self.order[:n])


def has_label(s: Structures, level: str, kind: str | None = None) -> np.ndarray:
    """Which structures have ``kind`` (any kind when None) at ``level``."""
    found = np.zeros(s.n_structures, dtype=bool)
    for (lvl, k), label in s.labels.items():
        if lvl == level and kind in (None, k):
            found |= label.present
    return found


def keep_labels(s: Structures, level: str, keep: np.ndarray) -> Structures:
    """``s`` with ``level``'s labels removed (NaN, not present) where ``keep`` is False; a label
    left on no structure is dropped, so that the store does not list it."""
    labels = {}
    for key, label in s.labels.items():
        if key[0] == level:
            present = label.present & keep
            values = label.values.copy()
            rows = s.atom_mask(~present) if LABEL_KINDS[key[1]].per == "atom" else ~present
            values[rows] = np.nan
            label = type(label)(values, present)
        if label.present.any():
            labels[key] = label
    s.labels = labels
    return s


def _write_derived(
    source: Source, index: np.ndarray, out: Path, description: str, keep: tuple | None = None
) -> Store:
    """A store of ``source``'s structures at ``index`` (optionally with one level's labels kept
    only where a mask says), packed and with statistics."""
    from mfdata.stats import StatisticsWarning, update_statistics
    from mfdata.store.lmdb_store import pack

    structures = source.structures.select(index)
    structures.source = np.zeros(len(index), dtype=np.int16)  # one input: the user's store
    if keep is not None:
        structures = keep_labels(structures, *keep)
    write_store(out, structures, [source], name=out.name, description=description)
    pack(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StatisticsWarning)  # e.g. one molecule: rank 1
        update_statistics(out)
    return Store(out)


def prepare_study_data(
    store: str | Path,
    scarce: str,
    scored: Sequence[tuple[str, str]],
    n_test: int,
    root: Path,
    split_seed: int,
    echo: Echo,
) -> StudyData:
    """Draw the test part and write ``ROOT/test`` (or reuse it).

    ``scored``: (level, label) pairs every test structure has. Raises ConfigError when the store
    lacks them or has too few structures for ``n_test`` plus training and validation.
    """
    opened = open_store(store)
    info = {
        "path": str(opened.path.resolve()),
        "name": opened.manifest.name,
        "checksum": opened.manifest.checksum,
    }
    levels = opened.manifest.levels
    for level, kind in scored:
        if level not in levels or kind not in levels[level].labels:
            have = "; ".join(f"{lvl}: {', '.join(s.labels)}" for lvl, s in levels.items())
            raise ConfigError(
                f"{opened.path}: the study scores {level} {kind}, but the store has no {kind} at "
                f"{level} (it has {have})"
            )
    source = store_as_source(opened)
    s = source.structures
    candidates = np.ones(s.n_structures, dtype=bool)
    for level, kind in scored:
        candidates &= has_label(s, level, kind)
    candidates = np.flatnonzero(candidates)
    scarce_rows = np.flatnonzero(has_label(s, scarce))
    if n_test < 1 or len(candidates) < n_test or len(scarce_rows) - n_test < 2:
        raise ConfigError(
            f"{opened.path}: {len(candidates)} structures have every scored label and "
            f"{len(scarce_rows)} have {scarce}: too few for a test part of {n_test} plus "
            "training and validation structures (use a smaller --n-test)"
        )
    test = np.sort(np.random.default_rng(split_seed).permutation(candidates)[:n_test])
    path = root / "test"
    if not path.exists():
        echo(f"writing study store {path} ({len(test)} held-out structures)")
        where = f"{info['name']} ({info['path']}, checksum {info['checksum'][:16]})"
        _write_derived(source, test, path, f"study test part of {where}")
    pool = np.setdiff1d(scarce_rows, test)
    return StudyData(root, source, info, scarce, path, test, pool)


def draw(data: StudyData, seed: int, val_fraction: float) -> Draw:
    """Seed ``seed``'s validation structures and training order among the pool."""
    order = np.random.default_rng(seed).permutation(data.pool)
    n_val = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    return Draw(seed, np.sort(order[:n_val]), order[n_val:])


def training_store(data: StudyData, chosen: Draw, n: int | None, echo: Echo) -> Path:
    """``ROOT/train-nN-seedK``: every structure but the test ones, the scarce level's labels on
    ``n`` training structures (all: ``None``) and the validation ones, and the split ``study``."""
    from mfdata.split import save_split

    if n is not None and n > len(chosen.order):
        raise ConfigError(
            f"N = {n}: only {len(chosen.order)} {data.scarce} structures are left for training "
            f"({len(data.test_index)} held out for testing, {len(chosen.val)} for validation)"
        )
    path = data.root / f"train-n{'all' if n is None else n}-seed{chosen.seed}"
    if path.exists():
        return path
    index = np.setdiff1d(np.arange(data.source.structures.n_structures), data.test_index)
    keep = np.isin(index, np.union1d(chosen.train(n), chosen.val))
    echo(f"writing study store {path} ({len(chosen.train(n))} {data.scarce} training structures)")
    store = _write_derived(
        data.source,
        index,
        path,
        f"study training store of {data.info['name']} (checksum {data.info['checksum'][:16]}): "
        f"no test structure; {data.scarce} labels on {len(chosen.train(n))} training and "
        f"{len(chosen.val)} validation structures (seed {chosen.seed})",
        keep=(data.scarce, keep),
    )
    part = np.isin(index, chosen.val).astype(np.int8)  # 0 train, 1 val
    counts = np.bincount(part, minlength=2)
    info = SplitInfo(
        name=SPLIT,
        by="structure",
        fractions=(counts / counts.sum()).tolist(),
        parts=["train", "val"],
        sizes={"train": int(counts[0]), "val": int(counts[1])},
        seed=chosen.seed,
    )
    save_split(store, info, part, np.flatnonzero(part == 0))
    return path


def check_held_out(test: str | Path, training: Sequence[str | Path]) -> None:
    """Raise if a geometry of the ``test`` store is in one of the ``training`` stores."""
    _, test_hashes = Store(test).read()
    for path in training:
        _, hashes = Store(path).read()
        shared = np.intersect1d(test_hashes, hashes)
        if len(shared):
            raise RuntimeError(f"{path} holds {len(shared)} test geometries of {test}")


# --------------------------------------------------------------------------- runs


def final_checkpoint(run: Path) -> Path:
    """The checkpoint a run ends with: ``best.ckpt``, or a fine-tuning run's stage 2's."""
    stages = run / "stages.json"
    if stages.is_file():
        return Path(json.loads(stages.read_text(encoding="utf-8"))["final_checkpoint"])
    return run / "best.ckpt"


def fit_in_subprocess(config: TrainConfig, out: Path) -> dict:
    """``mftrain fit`` on ``config`` in a subprocess with :data:`THREADS` torch threads (its log
    in ``OUT/fit.log``); returns the final checkpoint, the step it reached (stage 2's for a
    fine-tuning run) and the wall time. A run that finished before is not run again."""
    out.mkdir(parents=True, exist_ok=True)
    done = out / "fit-done.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    path = out / "study-config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "utf-8")
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    with open(out / "fit.log", "a", encoding="utf-8") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "mftrain.cli", "fit", str(path), "--out", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if proc.returncode != 0:
        tail = (out / "fit.log").read_text(encoding="utf-8").strip().splitlines()[-15:]
        raise RuntimeError(f"mftrain fit in {out} failed:\n" + "\n".join(tail))
    from mftrain.train import checkpoint_summary

    final = final_checkpoint(out)
    summary = {
        "checkpoint": str(final),
        "steps": checkpoint_summary(final.parent / "last.ckpt")["global_step"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    done.write_text(json.dumps(summary) + "\n", encoding="utf-8")
    return summary


def default_jobs(runs: int) -> int:
    """Runs at a time: one per CPU core (each has one thread), at most ``runs``."""
    return max(1, min(os.cpu_count() or 1, runs))


def run_parallel(
    runs: Sequence[tuple[Path, TrainConfig]],
    jobs: int,
    done: Callable[[int, dict], None],
) -> None:
    """Fit ``runs`` (directory, config), ``jobs`` at a time; ``done(k, summary)`` is called in
    this thread as run ``k`` finishes. A failed run stops the ones not yet started."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from mfdata.progress import progress

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            pool.submit(fit_in_subprocess, config, out): k for k, (out, config) in enumerate(runs)
        }
        try:
            for future in progress(as_completed(futures), "study runs", " runs", len(futures)):
                done(futures[future], future.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


@contextmanager
def quiet_nequip() -> Iterator[None]:
    """nequip's INFO logs off and torch at :data:`THREADS` threads, for the study's own
    evaluation, export and MD."""
    import torch

    previous = torch.get_num_threads()
    logging.disable(logging.INFO)  # nequip's loggers set their own levels: disable, not filter
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        torch.set_num_threads(previous)


def score_checkpoint(ckpt: Path, test: Path) -> tuple[dict, dict]:
    """Per-head metrics and parity arrays of ``ckpt`` on the ``test`` store (every structure)."""
    from mftrain.evaluate import evaluate

    result = evaluate(ckpt, str(test), split=None, echo=lambda _: None)
    return result.metrics, result.parity


def learning_curve(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every metric column of a run's CSV logs as (step, value) pairs, in step order."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for path in sorted((run / "logs").glob("version_*/metrics.csv")):
        with open(path, encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                for key, value in row.items():
                    if key in ("epoch", "step") or not value:
                        continue
                    curves.setdefault(key, []).append((int(row["step"]), float(value)))
    return {k: sorted(v) for k, v in curves.items()}


# --------------------------------------------------------------------------- plans and numbers


def check_plan(out: Path, plan: dict) -> None:
    """Record the study's arguments in ``OUT``, or refuse a directory that holds another study."""
    path = out / PLAN_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != plan:
            differs = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            raise ConfigError(
                f"{out}: holds a study with other arguments ({', '.join(differs)} differ); "
                "choose another --out, or remove it to start over"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: exists and is not a study directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")


SEED_METRICS = ("forces_mae", "energy_mae_per_atom", "forces_rmse", "energy_rmse_per_atom")


def summarise(per_seed: Sequence[dict], keys: Sequence[str] = SEED_METRICS) -> dict:
    """Per key over the seeds' values: ``key`` (mean), ``key_std`` (None with one value) and
    ``key_range`` ([min, max]); None where no seed has the key."""
    out: dict = {}
    for key in keys:
        data = np.asarray([r[key] for r in per_seed if r.get(key) is not None], dtype=float)
        out[key] = float(data.mean()) if len(data) else None
        out[f"{key}_std"] = float(data.std(ddof=1)) if len(data) > 1 else None
        out[f"{key}_range"] = [float(data.min()), float(data.max())] if len(data) else None
    return out


def show(value: float | None, scale: float = 1000.0, digits: int = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def show_spread(entry: dict, key: str, digits: int = 1) -> str:
    """``entry[key]`` ± ``entry[key_std]`` (from :func:`summarise`) in milli-units."""
    text = show(entry.get(key), digits=digits)
    if entry.get(f"{key}_std") is not None:
        text += f" ± {show(entry[f'{key}_std'], digits=digits)}"
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).rjust(w) for c, w in zip(row, widths, strict=True)]
        cells[0] = str(row[0]).ljust(widths[0])
        lines.append("  ".join(cells))
    return "\n".join(lines)


def level_id(name: str) -> str:
    return resolve_level(name).id
