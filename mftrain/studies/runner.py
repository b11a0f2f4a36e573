"""The one run loop of every ``mftrain study`` recipe.

:func:`run_study` takes a recipe (:class:`mftrain.studies.recipe.Recipe`) and its checked
arguments and, in this order: opens the store and builds the recipe (its checks against the
store), records the study's plan in ``OUT/study-plan.json`` or refuses a directory that holds a
study with other arguments (:func:`check_plan`), writes the study stores
(:mod:`mftrain.studies.data`) with the held-out check for every seed, builds every run's config
(a bad one fails before anything trains), trains the runs phase by phase and scores each on the
test store as it finishes, and writes ``OUT/results.json`` and ``OUT/report.md``.

Runs: each is ``mftrain fit`` in a process of its own on a written config
(``RUN/study-config.yaml``, with the resolved ``mftrain.yaml`` and nequip ``config.yaml`` that fit
writes beside it), its log in ``RUN/fit.log``. The processes are forked from a server that
imported torch, nequip and mftrain once (multiprocessing's ``forkserver``), so a run starts in
well under a second instead of the ~8 s those imports take on 2 cores; each still starts clean
(nothing ran in the server) and a crash stays in its process. Runs go ``--jobs`` at a time
(default: one per CPU core), each with :data:`THREADS` torch thread; the study's own scoring,
export and MD run with as many. A run that finished (``RUN/fit-done.json``) is not run again
when the study is repeated in the same directory; one that was killed resumes from its
``last.ckpt``. A failed run stops the runs not yet started and raises :class:`RunError` with
the end of its log.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from mfdata.errors import MfkitError, UsageError
from mfdata.progress import Echo, progress
from mfdata.registry import open_store
from mftrain.checkpoint import read_checkpoint
from mftrain.config import TrainConfig, load_config, with_overrides
from mftrain.evaluate import evaluate
from mftrain.fit import fit
from mftrain.studies.configs import base_config, run_config
from mftrain.studies.data import (
    check_held_out,
    default_store,
    draw,
    prepare_study_data,
    training_store,
)
from mftrain.studies.recipe import A, Job, Recipe, Scored, Seed
from mftrain.studies.tables import show

PLAN_FILE = "study-plan.json"
DONE_FILE = "fit-done.json"
# Torch threads per run: small molecules gain little from more, and on a busy machine idle
# threads spin. Measured on 2 shared cores under load: 200 training steps took 29 s with one
# thread and 173 s with two; a force call of the MD check took 13 ms with one and 770 ms with two.
THREADS = 1
# What a run imports: this module (torch, nequip.data, mftrain), and what ``mftrain fit`` imports
# only once it trains: nequip's train script, model and Lightning, mfdata's data module, and s3fs,
# which Lightning imports where installed to check its log directory. ~1.5 s a run on 2 cores.
RUN_MODULES = (
    "mftrain.studies.runner",
    "nequip.scripts.train",
    "nequip.utils.xpu",
    "mftrain.model",
    "mftrain.training_module",
    "mfdata.loading.datamodule",
    "mfdata.stats",
    "s3fs",
)
# The runs' processes fork from a server that has imported them (started on first use).
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(list(RUN_MODULES))


class RunError(MfkitError):
    """A run's ``mftrain fit`` failed; the message ends with its log's last lines."""


def run_study(recipe_type: type[Recipe[A]], args: A, echo: Echo = print) -> dict[str, Any]:
    """Run the study ``recipe_type`` with ``args``; returns what it writes to results.json."""
    base = base_config(args.config, args.budget())
    store = open_store(args.data or default_store())
    recipe = recipe_type(args, store)
    out = Path(args.out).resolve()
    plan = {
        **args.plan(),
        "data": str(store.path.resolve()),
        "checksum": store.manifest.checksum,
        **recipe.plan(),
        "base_config": base.model_dump(mode="json"),
    }
    check_plan(out, plan)
    started = time.perf_counter()
    data = prepare_study_data(
        store, recipe.scarce, recipe.scored, args.n_test, out / "data", args.split_seed, echo
    )
    seeds = []
    for seed in range(args.seeds):
        chosen = draw(data, seed, args.val_fraction)
        stores = {
            (n, kept): [str(training_store(data, chosen, n, echo, kept))]
            for n in recipe.sizes
            for kept in recipe.kept
        }
        check_held_out(data.test, [path for paths in stores.values() for path in paths])
        seeds.append(Seed(seed, chosen, stores, out / "runs" / f"seed-{seed}"))
    jobs = [job for seed in seeds for job in recipe.jobs(seed)]
    with quiet_nequip():
        runs = run_jobs(jobs, base, data.test, args.jobs, echo)
        results = recipe.results(data, seeds, runs, echo)
    summary = {
        **results.entries,
        "study": {
            "recipe": recipe.name,
            "arguments": plan,
            **results.study,
            "source_store": data.info,
            "test_indices": data.test_index.tolist(),
            "wall_seconds": round(time.perf_counter() - started, 1),
        },
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    report = recipe.report(out, summary, results.arrays)
    (out / "report.md").write_text(report, encoding="utf-8")
    return summary


def check_plan(out: Path, plan: dict[str, Any]) -> None:
    """Record the study's plan in ``OUT``, or refuse (UsageError) a directory that holds a study
    with another plan, or anything that is not a study."""
    path = out / PLAN_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != plan:
            differs = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            raise UsageError(
                f"{out}: holds a study with other arguments ({', '.join(differs)} differ); "
                "choose another --out, or remove it to start over"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: exists and is not a study directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")


def run_jobs(
    jobs: Sequence[Job], base: TrainConfig, test: Path, parallel: int | None, echo: Echo
) -> list[Scored]:
    """Train ``jobs`` phase by phase, ``parallel`` at a time (default: one per CPU core), each
    scored on the ``test`` store as it finishes; returns them scored, in job order."""
    configs = [run_config(base, j.model, j.seed, j.stores, j.budget, j.run) for j in jobs]
    scored: list[Scored | None] = [None] * len(jobs)
    phases = sorted({job.phase for job in jobs})
    for phase in phases:
        todo = [k for k, job in enumerate(jobs) if job.phase == phase]
        at_once = parallel or default_jobs(len(todo))
        budgets = " / ".join(sorted({jobs[k].budget.describe() for k in todo}))
        stage = f" (phase {phase} of {len(phases)})" if len(phases) > 1 else ""
        echo(f"{len(todo)} runs of {budgets} each, {at_once} at a time{stage}")

        def done(i: int, fitted: dict[str, Any], todo: list[int] = todo) -> None:
            k = todo[i]
            scored[k] = run = score(jobs[k], fitted, test)
            echo(describe(run))

        run_parallel([(jobs[k].run, configs[k]) for k in todo], at_once, done)
    return [s for s in scored if s is not None]


def score(job: Job, fitted: dict[str, Any], test: Path) -> Scored:
    """A finished run's final checkpoint on every structure of the ``test`` store."""
    checkpoint = Path(fitted["checkpoint"])
    result = evaluate(checkpoint, str(test), split=None, echo=lambda _: None)
    return Scored(
        job, result.metrics, result.parity, fitted["steps"], fitted["seconds"], checkpoint
    )


def describe(run: Scored) -> str:
    """One progress line: the run, its steps and time, and its heads' errors."""
    size = "" if run.job.n is None else f" N={run.job.n}"
    errors = "".join(
        f"; {level} force MAE {show(m.get('forces_mae'))} meV/Å, energy MAE "
        f"{show(m.get('energy_mae_per_atom'), digits=2)} meV/atom"
        for level, m in run.metrics.items()
    )
    return (
        f"seed {run.job.seed}{size} {run.job.name}: {run.steps} steps in {run.seconds:.0f} s"
        + errors
    )


def default_jobs(runs: int) -> int:
    """Runs at a time: one per CPU core (each has one thread), at most ``runs``."""
    return max(1, min(os.cpu_count() or 1, runs))


def run_parallel(
    runs: Sequence[tuple[Path, TrainConfig]],
    jobs: int,
    done: Callable[[int, dict[str, Any]], None],
) -> None:
    """Fit ``runs`` (directory, config), ``jobs`` at a time; ``done(k, fitted)`` is called in
    this thread as run ``k`` finishes. A failed run stops the ones not yet started."""
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


def final_checkpoint(run: Path) -> Path:
    """The checkpoint a run ends with: ``best.ckpt``, or a fine-tuning run's stage 2's."""
    stages = run / "stages.json"
    if stages.is_file():
        return Path(json.loads(stages.read_text(encoding="utf-8"))["final_checkpoint"])
    return run / "best.ckpt"


def run_steps(run: Path, final: Path) -> int:
    """The optimiser steps of a run: both stages' when it pre-trained itself, else those of the
    stage that wrote ``final`` (a run fine-tuned from another run's checkpoint)."""
    steps = read_checkpoint(final.parent / "last.ckpt").global_step
    stages = run / "stages.json"
    if stages.is_file():
        steps += json.loads(stages.read_text(encoding="utf-8"))["pretrain"].get("steps", 0)
    return steps


def fit_in_subprocess(config: TrainConfig, out: Path) -> dict[str, Any]:
    """``mftrain fit`` on ``config`` in a process of its own (forked from :data:`FORKSERVER`)
    with :data:`THREADS` torch threads, its output in ``OUT/fit.log``; returns the final
    checkpoint, its optimiser steps (:func:`run_steps`) and the wall time. A run that finished
    before is not run again."""
    out.mkdir(parents=True, exist_ok=True)
    done = out / DONE_FILE
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    path = out / "study-config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "utf-8")
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    process = FORKSERVER.Process(
        target=_fit_process, args=(path, out, env, os.getcwd()), name=f"mftrain fit {out}"
    )
    process.start()
    process.join()
    if process.exitcode != 0:
        tail = (out / "fit.log").read_text(encoding="utf-8").strip().splitlines()[-15:]
        raise RunError(
            f"mftrain fit in {out} failed (exit status {process.exitcode}):\n" + "\n".join(tail)
        )
    final = final_checkpoint(out)
    fitted = {
        "checkpoint": str(final),
        "steps": run_steps(out, final),
        "seconds": round(time.perf_counter() - started, 1),
    }
    done.write_text(json.dumps(fitted) + "\n", encoding="utf-8")
    return fitted


def _fit_process(config: Path, out: Path, env: dict[str, str], cwd: str) -> None:
    """A run's process: the study's environment and directory (the server kept its own from
    when it started), output to ``OUT/fit.log``, then what ``mftrain fit CONFIG --out OUT`` does
    (an error ends the process with its traceback in the log)."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    torch.set_num_threads(THREADS)
    with open(out / "fit.log", "a", encoding="utf-8") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    settings = with_overrides(load_config(config), {"out": str(out)})
    fit(settings, echo=print)


@contextmanager
def quiet_nequip() -> Iterator[None]:
    """nequip's INFO logs off and torch at :data:`THREADS` threads, for the study's own
    evaluation, export and MD."""
    previous = torch.get_num_threads()
    logging.disable(logging.INFO)  # nequip's loggers set their own levels: disable, not filter
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        torch.set_num_threads(previous)
