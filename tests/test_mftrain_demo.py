"""The README's main command: the embedded default converts, trains and scores."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_trains_and_scores_the_bundled_sample(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mftrain.cli", "demo", "--out", str(tmp_path), "--max-steps", "20"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "best.ckpt").is_file()
    assert (tmp_path / "run" / "eval-test" / "parity_wb97x-631gd.png").is_file()
    assert "wb97x-631gd" in proc.stdout and "meV/atom" in proc.stdout
