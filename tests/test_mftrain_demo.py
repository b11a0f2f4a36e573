"""The README's main command: with no data given, the study runs on the bundled methanol store."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_mftrain

MODELS = (
    "energy_only",
    "multi_fidelity",
    "multi_fidelity_delta",
    "multi_fidelity_finetune",
    "energy_forces",
    "low_level_as_prediction",
)


@pytest.mark.slow
def test_demo_runs_the_study_on_the_bundled_data(tmp_path):
    out = tmp_path / "demo"
    proc = run_mftrain("demo", "--out", out, "--steps", 12, "--no-md")
    results = json.loads((out / "results.json").read_text())
    printed = proc.stdout.splitlines()
    for model in MODELS:
        assert any(line.startswith(model) for line in printed), model
    assert (out / "report.md").is_file()
    assert (out / "figures" / "force_mae.png").is_file()
    assert "methanol" in (out / "report.md").read_text()
    for model in MODELS:
        assert results[model]["forces_mae"] > 0, model
