"""What the fine-tuning strategies (``pretrain_finetune``, ``multihead_finetune``) train.

Both run in two stages (:mod:`mftrain.stages` runs them). Stage 1 is an ordinary run
(``single`` on the pre-training level, or ``multihead`` on every pre-training level) in
``OUT/pretrain``; stage 2 is a run in ``OUT/finetune`` whose model starts from stage 1's
``best.ckpt`` (or from ``finetune.from_checkpoint``, and then there is no stage 1). This module
turns the ``finetune`` section into each stage's config and the fine-tuning run's
:class:`~mftrain.plan.Plan`, and checks both stages against the stores and the checkpoint they
start from, before anything trains.

``multihead_finetune`` keeps every head of the pre-trained model and fine-tunes the head of
``finetune.level``: the sampler draws ``1 - replay`` of the samples from that level and ``replay``
from the others, shared equally (the other heads keep training on them). A ``level`` the
pre-trained model has no head for gets a new head whose readout starts from a pre-trained head's
(``finetune.init_from``; default: the level with the most force labels), as in MACE's multi-head
fine-tuning: the route of low-level forces, then high-level energies with replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mfdata.files import file_sha256
from mfdata.levels import UnknownLevelError, resolve_level
from mfdata.registry import open_store
from mfdata.sampler import LevelMixing
from mftrain.checkpoint import CheckpointError, read_checkpoint
from mftrain.config import ConfigError, ModelConfig, TrainConfig, UnfreezeLast, validate_config
from mftrain.finetune import FineTunedNequIPModel, parameter_groups
from mftrain.plan import Plan

STAGE_STRATEGY = {"pretrain_finetune": "single", "multihead_finetune": "multihead"}
DEFAULT_REPLAY = 0.2
_SOURCE_STRATEGIES = ("single", "multihead", *STAGE_STRATEGY)


def _target(function) -> str:
    """The ``_target_`` string that names ``function`` in a nequip config."""
    return f"{function.__module__}.{function.__qualname__}"


@dataclass
class Source:
    """A trained mftrain checkpoint that fine-tuning starts from."""

    path: Path
    sha256: str
    strategy: str
    levels: list[str]  # its heads, in order
    type_names: list[str]
    model: ModelConfig  # its architecture, avg_num_neighbors included
    global_step: int


def read_source(path: str | Path, field: str = "finetune.from_checkpoint") -> Source:
    """Read and check a checkpoint to fine-tune; ConfigError naming ``field`` if unusable."""
    try:
        checkpoint = read_checkpoint(path)
    except (FileNotFoundError, CheckpointError) as exc:
        raise ConfigError(f"{field}: {exc}") from None
    provenance = checkpoint.provenance
    if "config" not in provenance:
        raise ConfigError(f"{field}: {checkpoint.path}: not an mftrain checkpoint (no provenance)")
    if checkpoint.strategy not in _SOURCE_STRATEGIES:
        raise ConfigError(
            f"{field}: {checkpoint.path}: a {checkpoint.strategy} model; fine-tuning starts from "
            f"a model of strategy {', '.join(_SOURCE_STRATEGIES)}"
        )
    model = ModelConfig.model_validate(
        {**provenance["config"]["model"], "avg_num_neighbors": provenance["avg_num_neighbors"]}
    )
    return Source(
        path=checkpoint.path,
        sha256=file_sha256(checkpoint.path),
        strategy=checkpoint.strategy,
        levels=checkpoint.levels,
        type_names=checkpoint.type_names,
        model=model,
        global_step=checkpoint.global_step,
    )


def level_id(field: str, name: str) -> str:
    """The level id of ``name``; a ConfigError naming ``field`` if it is not a level."""
    try:
        return resolve_level(name).id
    except UnknownLevelError as exc:
        raise ConfigError(f"{field}: {exc}") from None


def _not_in_stores(field: str, missing: list[str], available: list[str]) -> ConfigError:
    return ConfigError(
        f"{field}: {', '.join(missing)} not in the stores (they have {', '.join(available)})"
    )


def pretraining_levels(
    config: TrainConfig, available: list[str], source: Source | None = None
) -> list[str]:
    """Stage 1's heads, or (with ``source``) the heads of ``source`` fine-tuning starts from."""
    f = config.finetune
    level = level_id("finetune.level", f.level)
    named = [level_id(f"finetune.pretrain[{i}]", name) for i, name in enumerate(f.pretrain or [])]
    if len(set(named)) != len(named):
        raise ConfigError(f"finetune.pretrain {f.pretrain} names one level twice")
    single = config.strategy == "pretrain_finetune"
    if single and len(named) > 1:
        raise ConfigError(
            f"finetune.pretrain: pretrain_finetune pre-trains one level, not {len(named)} "
            "(multihead_finetune pre-trains several)"
        )
    if source is not None:
        where = f"finetune.from_checkpoint {source.path}"
        missing = [name for name in named if name not in source.levels]
        if missing:
            raise ConfigError(
                f"finetune.pretrain: {', '.join(missing)} not a head of {where} (its heads: "
                f"{', '.join(source.levels)})"
            )
        if not single:
            if named and set(named) != set(source.levels):
                raise ConfigError(
                    f"finetune.pretrain: multihead_finetune keeps every head of {where} "
                    f"({', '.join(source.levels)})"
                )
            return list(source.levels)
        if named:
            return named
        if len(source.levels) != 1:
            raise ConfigError(
                f"finetune.pretrain: {where} has heads {', '.join(source.levels)}; name the one "
                "to start from"
            )
        return list(source.levels)
    if not named:
        if not single:
            return list(available)
        others = [name for name in available if name != level]
        if len(others) != 1:
            raise ConfigError(
                f"finetune.pretrain: name the pre-training level (the stores have "
                f"{', '.join(available)})"
            )
        return others
    missing = [name for name in named if name not in available]
    if missing:
        raise _not_in_stores("finetune.pretrain", missing, available)
    return named


def _num_trainable_layers(backbone) -> str | int:
    """``finetune.backbone`` as the model builder takes it: full, frozen or k."""
    return backbone.unfreeze_last if isinstance(backbone, UnfreezeLast) else backbone


@dataclass
class Stage2:
    """What the fine-tuning run trains: heads, where each starts, mixing and loss weights."""

    levels: list[str]
    init_heads: dict[str, str | None]  # head -> the source head it starts from (None: afresh)
    mixing: LevelMixing
    level_coeffs: dict[str, dict[str, float]]
    replay: float | None


def _stage_loss_weights(config: TrainConfig, levels: list[str], known: list[str]) -> dict:
    """``loss.levels`` for a stage with heads ``levels``; naming a level of neither stage fails."""
    out = {}
    for name, weights in config.loss.levels.items():
        level = level_id(f"loss.levels.{name}", name)
        if level not in known:
            raise ConfigError(f"loss.levels.{name}: {level} is a head of neither stage")
        if level in levels:
            out[level] = {k: v for k, v in weights.model_dump().items() if v is not None}
    return out


def new_head_source(config: TrainConfig, start: list[str]) -> str:
    """The pre-trained head a new fine-tuning head starts from: ``finetune.init_from``, else the
    one whose level has the most force labels in the stores (its readout turns the shared features
    into forces best)."""
    f = config.finetune
    if f.init_from is not None:
        head = level_id("finetune.init_from", f.init_from)
        if head not in start:
            raise ConfigError(
                f"finetune.init_from: {head} is not a pre-trained head ({', '.join(start)})"
            )
        return head
    stores = [open_store(name) for name in config.data.stores]

    def forces(level: str) -> int:
        return sum(
            s.manifest.levels[level].labels["forces"].count
            for s in stores
            if level in s.manifest.levels and "forces" in s.manifest.levels[level].labels
        )

    return max(start, key=forces)


def finetuning_settings(config: TrainConfig, available: list[str], source: Source | None) -> Stage2:
    """Stage 2 as ``config`` asks, checked against the stores and the model it starts from
    (``source``; None: the model stage 1 will train)."""
    f = config.finetune
    level = level_id("finetune.level", f.level)
    if level not in available:
        raise _not_in_stores("finetune.level", [level], available)
    start = pretraining_levels(config, available, source)
    num_layers = (source.model if source else config.model).num_layers
    k = _num_trainable_layers(f.backbone)
    if isinstance(k, int) and k > num_layers:
        raise ConfigError(
            f"finetune.backbone.unfreeze_last: {k} is more than the model's {num_layers} "
            "interaction layers"
        )
    replay = None
    if config.strategy == "pretrain_finetune":
        levels = [level]
        init_heads = {level: start[0] if f.head == "keep" else None}
        mixing = LevelMixing()
    else:
        where = "finetune.from_checkpoint's heads" if source else "finetune.pretrain"
        replayed = [head for head in start if head != level]
        missing = [head for head in replayed if head not in available]
        if missing:
            raise _not_in_stores(f"{where} (multihead_finetune replays them)", missing, available)
        init_heads = {head: head for head in start}
        if level in start:
            levels = list(start)
        else:  # a new head, started from the readout of a pre-trained one
            levels = [*start, level]
            init_heads[level] = new_head_source(config, start)
        if f.head == "reinit":
            init_heads[level] = None
        replay = DEFAULT_REPLAY if f.replay is None else f.replay
        others = [head for head in levels if head != level]
        ratios = {head: replay / len(others) for head in others}
        ratios[level] = 1.0 - replay if others else 1.0
        mixing = LevelMixing(mode="explicit", ratios={head: ratios[head] for head in levels})
    coeffs = _stage_loss_weights(config, levels, sorted(set(levels) | set(start)))
    if f.energy_only:
        coeffs[level] = {**coeffs.get(level, {}), "forces": 0.0, "stress": 0.0}
    return Stage2(levels, init_heads, mixing, coeffs, replay)


def finetuning_plan(config: TrainConfig, available: list[str]) -> Plan:
    """The plan of a fine-tuning run (``finetune.from_checkpoint`` set; ``fit`` sets it to stage
    1's checkpoint): its heads, mixing and loss weights, and the model it starts from."""
    f = config.finetune
    if f.from_checkpoint is None:
        raise ConfigError(
            "finetune.from_checkpoint: a fine-tuning run starts from a checkpoint (mftrain fit "
            "makes one in a pre-training stage first)"
        )
    source = read_source(f.from_checkpoint)
    if config.model != source.model:
        differ = [
            k
            for k in ModelConfig.model_fields
            if getattr(config.model, k) != getattr(source.model, k)
        ]
        raise ConfigError(
            f"model: differs from finetune.from_checkpoint's in {', '.join(differ)}; a "
            "fine-tuned model keeps the architecture it starts from"
        )
    stage = finetuning_settings(config, available, source)
    backbone = _num_trainable_layers(f.backbone)
    notes = []
    kept = [f"{head} from {start}" for head, start in stage.init_heads.items() if start]
    if kept:
        notes.append(f"heads started from {source.path.name}: {', '.join(kept)}")
    fresh = [head for head, start in stage.init_heads.items() if start is None]
    if fresh:
        notes.append(f"heads started afresh: {', '.join(fresh)}")
    return Plan(
        config.strategy,
        stage.levels,
        stage.mixing,
        stage.level_coeffs,
        notes,
        model_target=_target(FineTunedNequIPModel),
        model_args={
            "source_checkpoint": str(source.path),
            "source_sha256": source.sha256,
            "init_heads": stage.init_heads,
            "backbone": backbone,
        },
        type_names=source.type_names,
        param_groups={
            "_target_": _target(parameter_groups),
            "lr": config.optimizer.lr,
            "num_layers": source.model.num_layers,
            "layer_lr_decay": f.layer_lr_decay,
        },
        provenance={
            "finetune": {
                "source": {
                    "path": str(source.path),
                    "sha256": source.sha256,
                    "strategy": source.strategy,
                    "levels": source.levels,
                    "global_step": source.global_step,
                },
                "level": level_id("finetune.level", f.level),
                "init_heads": stage.init_heads,
                "backbone": f.backbone if isinstance(f.backbone, str) else f.backbone.model_dump(),
                "layer_lr_decay": f.layer_lr_decay,
                "head": f.head,
                "energy_only": f.energy_only,
                "replay": stage.replay,
            }
        },
    )


def pretraining_config(config: TrainConfig, levels: list[str], out: Path) -> TrainConfig:
    """Stage 1: an ordinary ``single`` or ``multihead`` run on ``levels``."""
    data = config.model_dump(mode="json")
    data.update(strategy=STAGE_STRATEGY[config.strategy], finetune=None, out=str(out))
    data["data"]["levels"] = levels
    data["loss"]["levels"] = {
        name: weights
        for name, weights in data["loss"]["levels"].items()
        if level_id(f"loss.levels.{name}", name) in levels
    }
    return validate_config(data, "pre-training stage")


def finetuning_config(
    config: TrainConfig, source: Source, start: list[str], out: Path
) -> TrainConfig:
    """Stage 2: the fine-tuning run from ``source``, with its architecture, and the finetune
    section's steps, time, learning rate and schedule in the trainer, optimizer and
    lr_scheduler."""
    f = config.finetune
    data = config.model_dump(mode="json")
    data["model"] = source.model.model_dump(mode="json")
    data["optimizer"]["lr"] = f.lr or config.optimizer.lr
    data["trainer"]["max_steps"] = f.max_steps or config.trainer.max_steps
    data["trainer"]["max_time_minutes"] = f.max_time_minutes or config.trainer.max_time_minutes
    schedule = f.lr_scheduler or config.lr_scheduler
    data["lr_scheduler"] = schedule.model_dump(mode="json") if schedule else None
    data["finetune"].update(
        from_checkpoint=str(source.path),
        pretrain=start,
        lr=None,
        max_steps=None,
        max_time_minutes=None,
        lr_scheduler=None,
    )
    data["out"] = str(out)
    return validate_config(data, "fine-tuning stage")
