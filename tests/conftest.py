"""Shared fixtures: the real QM files in ../shared/data and a helper that runs the CLI."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

from tests.cli_process import run_command

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# The suite (and CI) replays the same fuzz examples every run, so a run's verdict does not depend
# on chance; `pytest --hypothesis-profile=explore` draws new ones (that is how fuzzing finds bugs).
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("default")

# Files that train models, longest first (summed test times of `pytest --durations=0 -n 2`).
# `--dist loadfile` hands each file to one worker in collection order (with
# `--no-loadscope-reorder`, set in pyproject.toml): starting the longest first lets the two
# workers finish together instead of one waiting on a study started last. Only the order changes.
LONGEST_FIRST = (
    "test_mftrain_study_recipes.py",
    "test_mftrain_finetune.py",
    "test_mftrain_study.py",
    "test_mftrain_ddp.py",
    "test_mftrain_calculator.py",
    "test_mftrain_variants.py",
    "test_mftrain_demo.py",
    "test_mftrain_fit.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """No test touches the user's real registry, module-scoped fixtures included. Under
    pytest-xdist (``-n 2``: one worker per core) each worker and the processes it starts use one
    thread, so two workers do not fight over the cores."""
    os.environ["MFKIT_HOME"] = tempfile.mkdtemp(prefix="mfkit_home_")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of :data:`LONGEST_FIRST` first, in that order; the rest as collected."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def private_registry(tmp_path_factory, monkeypatch) -> Path:
    """Each test gets its own store registry (MFKIT_HOME), inherited by CLI subprocesses."""
    home = tmp_path_factory.mktemp("mfkit_home")
    monkeypatch.setenv("MFKIT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: CI runs with ../shared beside the clone")
    return SHARED


def run_cli(*args, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``mfdata`` in a process of its own, as a user would (:mod:`tests.cli_process`)."""
    return _checked("mfdata", run_command("mfdata.cli", list(args), cwd), check)


def run_mftrain(*args, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``mftrain`` in a process of its own, as a user would (:mod:`tests.cli_process`)."""
    return _checked("mftrain", run_command("mftrain.cli", list(args), cwd), check)


def _checked(name: str, proc: subprocess.CompletedProcess, check: bool):
    if check and proc.returncode != 0:
        shown = " ".join(proc.args[3:])
        raise AssertionError(f"{name} {shown} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc
