"""Running the fine-tuning strategies: stage 1 (pre-training), then stage 2 (fine-tuning).

Each stage is an ordinary ``mftrain.train`` run; :mod:`mftrain.finetune_plan` says what each
trains. ``OUT/stages.json`` sums both up (validation metrics per level, final and best) and names
the final checkpoint. Rerunning skips a finished stage 1 and resumes an interrupted stage. Every
check of both stages runs before stage 1 trains.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mfdata.files import atomic_write_text, file_sha256
from mfdata.loading.lmdb_dataset import FidelityDataset
from mfdata.progress import Echo, silent
from mftrain import train
from mftrain.checkpoint import MONITOR, read_checkpoint
from mftrain.config import ConfigError, TrainConfig
from mftrain.finetune_plan import (
    Stage2,
    finetuning_config,
    finetuning_settings,
    level_id,
    pretraining_config,
    pretraining_levels,
    read_source,
)
from mftrain.run_log import read_rows, validation_rows, validation_summary

SUMMARY = "stages.json"


def _check_training_samples(config: TrainConfig, stage: Stage2) -> None:
    """Stage 2 has training samples at every level it draws from."""
    d = config.data
    part = f"{d.split}:{d.train_part}"
    dataset = FidelityDataset(
        d.stores,
        stage.levels,
        split=part,
        subset=d.subset,
        selection=d.selection,
        labels=tuple(d.labels),
    )
    ratios = stage.mixing.ratios or dict.fromkeys(stage.levels, 1.0)
    empty = [lvl for lvl, ids in dataset.pools.items() if ratios.get(lvl, 0) > 0 and not len(ids)]
    if empty:
        raise ConfigError(
            f"finetune.level: the stores have no {part} samples ({', '.join(d.labels)}) at "
            f"{', '.join(empty)}, which the fine-tuning stage trains on"
        )


def stage_summary(run: Path) -> dict[str, Any]:
    """A finished run: its checkpoints and its validation metrics per level, last and best."""
    best = read_checkpoint(run / "best.ckpt")
    levels = best.levels
    rows = validation_rows(read_rows(run))
    return {
        "dir": str(run),
        "strategy": best.strategy,
        "levels": levels,
        "steps": read_checkpoint(run / "last.ckpt").global_step,
        "best_checkpoint": str(best.path),
        "best_checkpoint_sha256": file_sha256(best.path),
        "last_checkpoint": str(run / "last.ckpt"),
        "validation": {
            "final": validation_summary(rows[-1], levels) if rows else None,
            "best": validation_summary(min(rows, key=lambda r: r[MONITOR]), levels)
            if rows
            else None,
        },
    }


def _read_summary(out: Path) -> dict[str, Any]:
    path = out / SUMMARY
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")


def _finished_pretraining(summary: dict[str, Any], best: Path) -> bool:
    done = summary.get("pretrain") or {}
    return best.is_file() and done.get("best_checkpoint_sha256") == file_sha256(best)


def fit_stages(config: TrainConfig, echo: Echo = print) -> Path:
    """Run a fine-tuning strategy: pre-training (unless ``finetune.from_checkpoint``), then
    fine-tuning; returns the output directory. Every check of both stages runs before stage 1
    trains. A finished stage 1 (recorded in ``stages.json``) is not run again."""
    launch = train.launch_of(config.trainer)
    writer = launch.rank == 0
    if not writer:
        echo = silent
    out = Path(config.out or train.DEFAULT_OUT).resolve()
    modify = not launch.started_together
    available = train.available_levels(train.prepare_stores(config, echo, modify))
    summary = _read_summary(out)
    summary["strategy"] = config.strategy
    f = config.finetune

    if f.from_checkpoint is None:
        levels = pretraining_levels(config, available)
        stage = finetuning_settings(config, available, None)  # stage 2's checks, before stage 1
        _check_training_samples(config, stage)
        pretrain = pretraining_config(config, levels, out / "pretrain")
        best = out / "pretrain" / "best.ckpt"
        if _finished_pretraining(summary, best):
            # refuses a directory that holds a run of another configuration
            train.resume_point(train.prepare(pretrain, silent, modify_stores=modify))
            echo(f"stage 1 (pre-training) finished earlier: {best}; not running it again")
        else:
            echo(f"stage 1 of 2: pre-training {', '.join(levels)} in {out / 'pretrain'}")
            train.fit_run(pretrain, echo)
            if writer:
                summary["pretrain"] = stage_summary(out / "pretrain")
                _write_summary(out, summary)
    else:
        best = Path(f.from_checkpoint).resolve()
        summary["pretrain"] = {"from_checkpoint": str(best)}
    source = read_source(best)
    start = pretraining_levels(config, available, source)
    finetuning = finetuning_config(config, source, start, out / "finetune")
    step = "stage 2 of 2: " if f.from_checkpoint is None else ""
    level = level_id("finetune.level", f.level)
    echo(f"{step}fine-tuning {level} from {best} in {out / 'finetune'}")
    train.fit_run(finetuning, echo)
    if writer:
        summary["finetune"] = stage_summary(out / "finetune")
        summary["final_checkpoint"] = summary["finetune"]["best_checkpoint"]
        _write_summary(out, summary)
        final = summary["final_checkpoint"]
        echo(f"both stages' metrics in {out / SUMMARY}; the final checkpoint is {final}")
    return out
