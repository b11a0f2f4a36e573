"""mftrain's training config: the JSON Schema stays in sync, bad configs fail before training
naming the field, flags override the file, strategies pick the heads."""

from __future__ import annotations

import pytest
import yaml

from mfdata.levels import UnknownLevelError
from mfdata.resources import schema_file
from mftrain.config import (
    SCHEMA_FILE,
    ConfigError,
    TrainConfig,
    load_config,
    schema_text,
    with_overrides,
)
from mftrain.strategies import plan
from tests.conftest import run_mftrain

AVAILABLE = ["wb97x-631gd", "ccsdt-star-cbs", "pbe-d3-def2svp"]


def test_schema_matches_the_config_model():
    """schemas/mftrain-config.schema.json is generated: run python -m mftrain.config on change."""
    assert schema_file(SCHEMA_FILE).read_text(encoding="utf-8") == schema_text()


def test_defaults_serve_without_a_config():
    config = load_config(None)
    assert config == TrainConfig()
    assert config.strategy == "multihead" and config.data.levels is None
    assert (config.model.num_layers, config.model.l_max, config.model.num_features) == (2, 1, 16)


def test_bad_config_fails_before_training_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "trainer": {"max_steps": 0, "precision": "float16"},
                "model": {"num_feature": 8},
                "lr_scheduler": {"kind": "plateau", "factor": 2.0},
            }
        )
    )
    out = tmp_path / "run"
    proc = run_mftrain("fit", bad, "--data", "nowhere", "--out", out, check=False)
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert message.count("\n") == 0 and message.startswith("mftrain: error: ")
    for field in (
        "trainer.max_steps",
        "trainer.precision",
        "model.num_feature: unknown field",
        "lr_scheduler.factor",
    ):
        assert field in message
    assert not out.exists(), "nothing is written for a bad config"

    with pytest.raises(ConfigError, match=r"command line: trainer\.max_steps"):
        with_overrides(TrainConfig(), {"trainer.max_steps": -3})
    not_yaml = tmp_path / "list.yaml"
    not_yaml.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(not_yaml)


def test_flags_override_the_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "strategy": "multihead",
                "data": {"stores": ["a"], "levels": ["x"]},
                "trainer": {"max_steps": 5},
            }
        )
    )
    config = with_overrides(
        load_config(path),
        {
            "data.stores": ["b", "c"],
            "data.levels": ["wb97x_dz"],
            "strategy": "single",
            "trainer.max_steps": 7,
            "out": "dir",
        },
    )
    assert config.data.stores == ["b", "c"] and config.data.levels == ["wb97x_dz"]
    assert (config.strategy, config.trainer.max_steps, config.out) == ("single", 7, "dir")


def test_strategies_choose_heads_in_order():
    all_levels = plan(TrainConfig(), AVAILABLE)
    assert all_levels.levels == AVAILABLE and all_levels.strategy == "multihead"
    aliased = TrainConfig.model_validate(
        {
            "data": {
                "levels": ["CCSD(T)*/CBS", "wb97x_dz"],
                "mixing": {"mode": "explicit", "ratios": {"wb97x_dz": 3, "ccsd(t)_cbs": 1}},
            },
            "loss": {"levels": {"ccsd(t)_cbs": {"forces": 0}}},
        }
    )
    chosen = plan(aliased, AVAILABLE)
    assert chosen.levels == ["ccsdt-star-cbs", "wb97x-631gd"], "ids, in the order given"
    assert chosen.mixing.ratios == {"wb97x-631gd": 3, "ccsdt-star-cbs": 1}
    assert chosen.level_coeffs == {"ccsdt-star-cbs": {"forces": 0.0}}

    with pytest.raises(ConfigError, match="strategy single trains one level, but 3"):
        plan(TrainConfig(strategy="single"), AVAILABLE)
    single = plan(
        TrainConfig.model_validate({"strategy": "single", "data": {"levels": ["pbe-d3-def2svp"]}}),
        AVAILABLE,
    )
    assert single.levels == ["pbe-d3-def2svp"]
    with pytest.raises(ConfigError, match="not in the stores"):
        plan(TrainConfig.model_validate({"data": {"levels": ["mp2-ccpvdz"]}}), AVAILABLE)
    with pytest.raises(UnknownLevelError):
        plan(TrainConfig.model_validate({"data": {"levels": ["not-a-level"]}}), AVAILABLE)
    with pytest.raises(ConfigError, match="not one of the heads"):
        plan(
            TrainConfig.model_validate(
                {
                    "data": {"levels": ["wb97x_dz"]},
                    "loss": {"levels": {"pbe-d3-def2svp": {"energy": 2}}},
                }
            ),
            AVAILABLE,
        )
