"""``mftrain fit``'s one entry point: a strategy runs in one stage or in two.

The fine-tuning strategies (``pretrain_finetune``, ``multihead_finetune``) run two ordinary runs
(:func:`mftrain.stages.fit_stages`); every other strategy one (:func:`mftrain.train.fit_run`).
"""

from __future__ import annotations

from pathlib import Path

from mfdata.progress import Echo
from mftrain.config import TrainConfig
from mftrain.stages import fit_stages
from mftrain.train import fit_run


def fit(config: TrainConfig, echo: Echo = print) -> Path:
    """Train as ``config`` says; returns the output directory."""
    if config.finetune is not None:
        return fit_stages(config, echo)
    return fit_run(config, echo)
