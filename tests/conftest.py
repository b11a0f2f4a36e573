"""Shared fixtures: the real QM files in ../shared/data and a helper that runs the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: CI runs with ../shared beside the clone")
    return SHARED


def run_cli(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``mfdata`` in a subprocess, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "mfdata.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mfdata {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc
