"""Training configs of a study's runs: one shared base, one budget, the kinds of model.

Every model of a study has the same architecture and shared settings: the base config,
``--config`` or :data:`STUDY_DEFAULTS`. A run's config is that base with the run's model
(:func:`single`, :func:`multihead`, :func:`finetuned`, or a recipe's own settings) and then
:func:`run_config`'s study-wide settings on top: the seed, the training stores and their split
``study``, the budget (:class:`mftrain.studies.args.Budget`: ``trainer.max_steps`` and/or
``trainer.max_time_minutes``, epochs open) and the run's directory. Under a time budget alone a
cosine schedule, which decays over steps, is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mftrain.config import ConfigError, TrainConfig, load_config, with_overrides
from mftrain.studies.args import Budget
from mftrain.studies.data import SPLIT

# Settings every model shares unless --config gives a base config (see the reports'
# "Hyperparameters" sections). float32: 2.5x faster steps than float64 on the CPU, and the errors
# the studies measure are far above its precision.
STUDY_DEFAULTS = {
    "data.batch_size": 8,
    "data.epoch_size": 256,
    "optimizer.lr": 0.01,
    "trainer.precision": "float32",
    "trainer.progress_bar": False,
}
# The learning-rate schedule the defaults add: over a budget of steps, cosine decay to a floor of
# 1/100 of the start; over time alone, halving after 10 validations (epochs of 256 structures)
# without improvement, down to 1/20: a validation part of a few structures is noisy, and without
# a floor a long run's rate decays to nothing.
STEPS_SCHEDULE = {"kind": "cosine", "min_lr": 1e-4}
TIME_SCHEDULE = {"kind": "plateau", "factor": 0.5, "patience": 10, "min_lr": 5e-4}


def base_config(path: str | None, budget: Budget) -> TrainConfig:
    """The settings every model of a study shares: ``--config``, or :data:`STUDY_DEFAULTS`."""
    if path is not None:
        config = load_config(path)
    else:
        config = with_overrides(TrainConfig(), study_defaults(None, budget))
    cosine = config.lr_scheduler is not None and config.lr_scheduler.kind == "cosine"
    if cosine and budget.steps is None:
        raise ConfigError(
            f"{path}: lr_scheduler cosine decays over max_steps, but this study's budget is time "
            "alone; give --steps, or use plateau or exponential"
        )
    return config


def study_defaults(config: str | None, budget: Budget) -> dict[str, Any] | None:
    """The shared settings of a study without ``--config`` (what results.json records), for its
    ``budget``; None with a config."""
    if config:
        return None
    schedule = TIME_SCHEDULE if budget.steps is None else STEPS_SCHEDULE
    return STUDY_DEFAULTS | {"lr_scheduler": schedule}


def run_config(
    base: TrainConfig,
    model: dict[str, Any],
    seed: int,
    stores: list[str],
    budget: Budget,
    out: Path,
) -> TrainConfig:
    """``base`` with the run's ``budget``, the ``model``'s settings (dotted keys; a two-stage
    model sets its first stage's share of the budget) and the study's for this run."""
    return with_overrides(
        base,
        {
            "trainer.max_steps": budget.steps or 10**9,
            "trainer.max_epochs": None,
            "trainer.max_time_minutes": budget.minutes,
            **model,
            "seed": seed,
            "data.stores": stores,
            "data.split": SPLIT,
            "data.train_part": "train",
            "data.val_part": "val",
            "out": str(out),
        },
    )


MULTIHEAD = "multihead"  # the multi-head model's name in the results


def single_name(level: str) -> str:
    """The name in the results of the model trained on ``level`` alone."""
    return f"single_{level}"


def single(level: str) -> dict[str, Any]:
    """One head, trained on ``level`` alone."""
    return {"strategy": "single", "data.levels": [level]}


def multihead(levels: list[str]) -> dict[str, Any]:
    """One head per level on one backbone, the levels balanced in every batch."""
    return {
        "strategy": "multihead",
        "data.levels": list(levels),
        "data.mixing": {"mode": "balanced"},
    }


def finetuned(level: str, source: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Fine-tuned on ``level`` from checkpoint ``source`` (``finetune`` ``options``: backbone,
    layer-wise learning rates, energies only...); the budget counts this stage alone."""
    return {
        "strategy": "pretrain_finetune",
        "data.levels": None,
        "finetune": {"level": level, "from_checkpoint": str(source), **options},
    }
