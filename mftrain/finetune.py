"""Fine-tuning: strategies ``pretrain_finetune`` and ``multihead_finetune``, in two stages.

Stage 1 is an ordinary run (``single`` on the pre-training level, or ``multihead`` on every
pre-training level) in ``OUT/pretrain``; stage 2 is a run in ``OUT/finetune`` whose model starts
from stage 1's ``best.ckpt`` (or from ``finetune.from_checkpoint``, and then there is no stage 1).
``OUT/stages.json`` sums both up (validation metrics per level, final and best) and names the
final checkpoint. Rerunning ``fit`` skips a finished stage 1 and resumes an interrupted stage.

The fine-tuning run's model is built by :func:`FineTunedNequIPModel` (``_target_:
mftrain.finetune.FineTunedNequIPModel`` in its nequip config, so that nequip's restarts rebuild it
the same way): the architecture of the checkpoint it starts from, the backbone's weights copied
from it, each head started from a named head of it (``keep``) or afresh (``reinit``), and the
parameters outside ``finetune.backbone`` frozen. A head's per-type energy shift and scale carry
over only to a head of the same level; a head of another level takes its level's statistics
(levels differ by hundreds of eV). The optimizer sees the trainable parameters only, through
nequip's ``param_groups`` hook (:func:`parameter_groups`), with layer-wise learning rates
``lr x layer_lr_decay^d`` (``d``: heads 0, last interaction layer 1, ..., type embedding
``num_layers + 1``).

``multihead_finetune`` keeps every head of the pre-trained model and fine-tunes the head of
``finetune.level``: the sampler draws ``1 - replay`` of the samples from that level and ``replay``
from the others, shared equally (the other heads keep training on them). The fine-tuned level must
be a head of the pre-trained model; to add a head for a new level, use ``pretrain_finetune`` from
the head it should start from (``finetune.pretrain``).

The checkpoint a fine-tuned model starts from must stay where it was (with the same contents:
its sha256 is checked) while that run trains or resumes. Loading the fine-tuned checkpoint
itself (``mftrain eval``, ``mftrain export``, nequip's ``ModelFromCheckpoint``) does not need it:
the checkpoint's own weights replace every weight. Checkpoints are pickles: trusted files only.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfdata.files import file_sha256
from mfdata.levels import UnknownLevelError, resolve_level
from mfdata.sampler import LevelMixing
from mftrain.config import ConfigError, ModelConfig, TrainConfig, UnfreezeLast, validate_config
from mftrain.strategies import Plan

Echo = Callable[[str], None]
STAGE_STRATEGY = {"pretrain_finetune": "single", "multihead_finetune": "multihead"}
SUMMARY = "stages.json"
DEFAULT_REPLAY = 0.2
MONITOR = "val0_epoch/weighted_sum"
_SOURCE_STRATEGIES = ("single", "multihead", *STAGE_STRATEGY)
_HEAD_KEY = re.compile(r"^(?P<prefix>.*\.energy_heads\.heads\.)(?P<head>[^.]+)\.(?P<rest>.+)$")
_LAYER = re.compile(r"(?:^|\.)layer(\d+)_convnet\.")


# --------------------------------------------------------------------------- the source


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
    import torch

    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"{field}: {path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a pickle that does not load: say what, in one line
        raise ConfigError(f"{field}: {path}: not a checkpoint ({type(exc).__name__})") from None
    provenance = ckpt.get("mfkit") if isinstance(ckpt, dict) else None
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if not isinstance(provenance, dict) or "levels" not in hparams.get("model", {}):
        raise ConfigError(f"{field}: {path}: not an mftrain checkpoint (no mfkit provenance)")
    strategy = provenance.get("strategy")
    if strategy not in _SOURCE_STRATEGIES:
        raise ConfigError(
            f"{field}: {path}: a {strategy} model; fine-tuning starts from a model of strategy "
            f"{', '.join(_SOURCE_STRATEGIES)}"
        )
    model = ModelConfig.model_validate(
        {**provenance["config"]["model"], "avg_num_neighbors": provenance["avg_num_neighbors"]}
    )
    return Source(
        path=path,
        sha256=file_sha256(path),
        strategy=strategy,
        levels=list(hparams["model"]["levels"]),
        type_names=list(hparams["model"]["type_names"]),
        model=model,
        global_step=int(ckpt.get("global_step", 0)),
    )


# --------------------------------------------------------------------------- what each stage trains


def _level(field: str, name: str) -> str:
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
    level = _level("finetune.level", f.level)
    named = [_level(f"finetune.pretrain[{i}]", name) for i, name in enumerate(f.pretrain or [])]
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
        level = _level(f"loss.levels.{name}", name)
        if level not in known:
            raise ConfigError(f"loss.levels.{name}: {level} is a head of neither stage")
        if level in levels:
            out[level] = {k: v for k, v in weights.model_dump().items() if v is not None}
    return out


def finetuning_settings(config: TrainConfig, available: list[str], source: Source | None) -> Stage2:
    """Stage 2 as ``config`` asks, checked against the stores and the model it starts from
    (``source``; None: the model stage 1 will train)."""
    f = config.finetune
    level = _level("finetune.level", f.level)
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
        if level not in start:
            raise ConfigError(
                f"finetune.level: {level} is not one of {where} ({', '.join(start)}); to add a "
                "head, fine-tune with strategy pretrain_finetune from the head it should start from"
            )
        missing = [head for head in start if head not in available]
        if missing:
            raise _not_in_stores(f"{where} (multihead_finetune replays them)", missing, available)
        levels = list(start)
        init_heads = {head: head for head in levels}
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
        model_target=f"{__name__}.FineTunedNequIPModel",
        model_args={
            "source_checkpoint": str(source.path),
            "source_sha256": source.sha256,
            "init_heads": stage.init_heads,
            "backbone": backbone,
        },
        type_names=source.type_names,
        param_groups={
            "_target_": f"{__name__}.parameter_groups",
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
                "level": _level("finetune.level", f.level),
                "init_heads": stage.init_heads,
                "backbone": f.backbone if isinstance(f.backbone, str) else f.backbone.model_dump(),
                "layer_lr_decay": f.layer_lr_decay,
                "head": f.head,
                "energy_only": f.energy_only,
                "replay": stage.replay,
            }
        },
    )


# --------------------------------------------------------------------------- the model


def _group(name: str, num_layers: int) -> tuple[str, int]:
    """A parameter's layer and its distance from the output: heads 0, interaction layer ``i``
    ``num_layers - i``, anything before the layers (type embedding) ``num_layers + 1``."""
    if ".energy_heads." in name:
        return "heads", 0
    found = _LAYER.search(name)
    if found:
        layer = int(found.group(1))
        return f"layer{layer}", num_layers - layer
    return "embedding", num_layers + 1


def _trainable_depth(backbone: str | int, num_layers: int) -> int:
    """The largest distance from the output that trains."""
    if backbone == "full":
        return num_layers + 1
    if backbone == "frozen":
        return 0
    if isinstance(backbone, bool) or not isinstance(backbone, int):
        raise ValueError(f"backbone {backbone!r}: expected full, frozen or a number of layers")
    if not 1 <= backbone <= num_layers:
        raise ValueError(
            f"backbone: unfreezing the last {backbone} of {num_layers} interaction layers"
        )
    return backbone


def _source_model(path: str, sha256: str):
    """The source checkpoint's model (EMA weights where it trained with EMA), checked."""
    from nequip.model import ModelFromCheckpoint

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{file}: the checkpoint this model is fine-tuned from is missing")
    if file_sha256(file) != sha256:
        raise ValueError(f"{file}: changed since the fine-tuning run started (sha256 differs)")
    model = ModelFromCheckpoint(str(file))
    return model["sole_model"] if hasattr(model, "keys") else model


def _copy_weights(model, source, init_heads: Mapping[str, str | None], where: str) -> None:
    """Backbone weights from ``source``; each head's readout from its start head, and its
    per-type scale/shift too when that head is of the same level."""
    weights = source.state_dict()
    state = model.state_dict()
    for key in state:
        head = _HEAD_KEY.match(key)
        start = key
        if head is not None:
            origin = init_heads[head["head"]]
            if origin is None:
                continue
            if origin != head["head"] and head["rest"].startswith("per_type_energy_scale_shift"):
                continue
            start = f"{head['prefix']}{origin}.{head['rest']}"
        if start not in weights:
            raise ValueError(f"{where}: its model has no {start}")
        if weights[start].shape != state[key].shape:
            raise ValueError(
                f"{where}: {start} has shape {tuple(weights[start].shape)}, not "
                f"{tuple(state[key].shape)}: another architecture"
            )
        state[key] = weights[start]
    model.load_state_dict(state)


def FineTunedNequIPModel(
    source_checkpoint: str,
    source_sha256: str,
    init_heads: Mapping[str, str | None],
    backbone: str | int = "full",
    **kwargs,
):
    """A :func:`~mftrain.model.MultiHeadNequIPModel` started from a trained mftrain checkpoint.

    Args:
        source_checkpoint: the checkpoint to start from (its sha256 must be ``source_sha256``)
        init_heads: every head -> the source head whose readout it starts from (None: a fresh
            readout); its per-type scale and shift carry over only from a head of its own level
        backbone: ``full`` (all trainable), ``frozen`` (heads only) or k (the last k interaction
            layers and the heads); the other parameters get ``requires_grad=False``
        **kwargs: the ``MultiHeadNequIPModel`` arguments (the source's architecture, this run's
            heads and their per-level shifts and scales)

    When nequip loads a checkpoint of this model (``ModelFromCheckpoint``: eval, export,
    packaging) the checkpoint's weights replace every weight, so the source is not read then.
    """
    from nequip.model.utils import get_current_compile_mode

    from mftrain.model import MultiHeadNequIPModel

    levels = [str(level) for level in kwargs["levels"]]
    init_heads = {str(k): None if v is None else str(v) for k, v in dict(init_heads).items()}
    if set(init_heads) != set(levels):
        raise ValueError(f"init_heads: keys must be the heads {levels}, not {list(init_heads)}")
    num_layers = int(kwargs["num_layers"])
    depth = _trainable_depth(backbone, num_layers)
    model = MultiHeadNequIPModel(**kwargs)
    _, loading_a_checkpoint = get_current_compile_mode(return_override=True)
    if not loading_a_checkpoint:
        source = _source_model(source_checkpoint, source_sha256)
        _copy_weights(model, source, init_heads, source_checkpoint)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(_group(name, num_layers)[1] <= depth)
    return model


def parameter_groups(
    model, lr: float, num_layers: int, layer_lr_decay: float | None = None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the trainable parameters (nequip's ``param_groups`` hook).

    With ``layer_lr_decay``, one group per layer (``heads``, ``layer{i}``, ``embedding``) with
    learning rate ``lr x layer_lr_decay^d``, ``d`` the layer's distance from the output; without,
    one group ``trainable``. Group names show in the learning-rate log (``lr-Adam/heads``).
    """
    groups: dict[str, dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        group, depth = _group(name, num_layers)
        if layer_lr_decay is None:
            group, depth = "trainable", 0
        entry = groups.setdefault(
            group, {"name": group, "params": [], "lr": lr * (layer_lr_decay or 1.0) ** depth}
        )
        entry["params"].append(parameter)
    return list(groups.values())


# --------------------------------------------------------------------------- the two stages


def pretraining_config(config: TrainConfig, levels: list[str], out: Path) -> TrainConfig:
    """Stage 1: an ordinary ``single`` or ``multihead`` run on ``levels``."""
    data = config.model_dump(mode="json")
    data.update(strategy=STAGE_STRATEGY[config.strategy], finetune=None, out=str(out))
    data["data"]["levels"] = levels
    data["loss"]["levels"] = {
        name: weights
        for name, weights in data["loss"]["levels"].items()
        if _level(f"loss.levels.{name}", name) in levels
    }
    return validate_config(data, "pre-training stage")


def finetuning_config(
    config: TrainConfig, source: Source, start: list[str], out: Path
) -> TrainConfig:
    """Stage 2: the fine-tuning run from ``source``, with its architecture, and the finetune
    section's steps, learning rate and schedule in the trainer, optimizer and lr_scheduler."""
    f = config.finetune
    data = config.model_dump(mode="json")
    data["model"] = source.model.model_dump(mode="json")
    data["optimizer"]["lr"] = f.lr or config.optimizer.lr
    data["trainer"]["max_steps"] = f.max_steps or config.trainer.max_steps
    schedule = f.lr_scheduler or config.lr_scheduler
    data["lr_scheduler"] = schedule.model_dump(mode="json") if schedule else None
    data["finetune"].update(
        from_checkpoint=str(source.path), pretrain=start, lr=None, max_steps=None, lr_scheduler=None
    )
    data["out"] = str(out)
    return validate_config(data, "fine-tuning stage")


def _check_training_samples(config: TrainConfig, stage: Stage2) -> None:
    """Stage 2 has training samples at every level it draws from."""
    from mfdata.loader import FidelityDataset

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


def _validation_rows(run: Path) -> list[dict[str, str]]:
    rows = []
    logs = sorted(
        (run / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])
    )
    for path in logs:
        with open(path, newline="") as f:
            rows += [row for row in csv.DictReader(f) if row.get(MONITOR)]
    return rows


def _validation(row: dict[str, str], levels: list[str]) -> dict[str, Any]:
    per_level = {}
    for level in levels:
        prefix = f"val0_epoch/{level}/"
        values = {k[len(prefix) :]: float(v) for k, v in row.items() if k.startswith(prefix) and v}
        if values:
            per_level[level] = values
    return {"step": int(row["step"]), "loss": float(row[MONITOR]), "levels": per_level}


def stage_summary(run: Path) -> dict[str, Any]:
    """A finished run: its checkpoints and its validation metrics per level, last and best."""
    import torch

    best = run / "best.ckpt"
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    levels = list(ckpt["mfkit"]["levels"])
    rows = _validation_rows(run)
    last = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    return {
        "dir": str(run),
        "strategy": ckpt["mfkit"]["strategy"],
        "levels": levels,
        "steps": int(last["global_step"]),
        "best_checkpoint": str(best),
        "best_checkpoint_sha256": file_sha256(best),
        "last_checkpoint": str(run / "last.ckpt"),
        "validation": {
            "final": _validation(rows[-1], levels) if rows else None,
            "best": _validation(min(rows, key=lambda r: float(r[MONITOR])), levels)
            if rows
            else None,
        },
    }


def _read_summary(out: Path) -> dict[str, Any]:
    path = out / SUMMARY
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _finished_pretraining(summary: dict[str, Any], best: Path) -> bool:
    done = summary.get("pretrain") or {}
    return best.is_file() and done.get("best_checkpoint_sha256") == file_sha256(best)


def fit_stages(config: TrainConfig, echo: Echo = print) -> Path:
    """Run a fine-tuning strategy: pre-training (unless ``finetune.from_checkpoint``), then
    fine-tuning; returns the output directory. Every check of both stages runs before stage 1
    trains. A finished stage 1 (recorded in ``stages.json``) is not run again."""
    from mftrain import train

    launch = train.launch_of(config.trainer)
    writer = launch.rank == 0
    if not writer:
        echo = _quiet
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
            train.resume_point(train.prepare(pretrain, _quiet, modify_stores=modify))
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
    level = _level("finetune.level", f.level)
    echo(f"{step}fine-tuning {level} from {best} in {out / 'finetune'}")
    train.fit_run(finetuning, echo)
    if writer:
        summary["finetune"] = stage_summary(out / "finetune")
        summary["final_checkpoint"] = summary["finetune"]["best_checkpoint"]
        _write_summary(out, summary)
        final = summary["final_checkpoint"]
        echo(f"both stages' metrics in {out / SUMMARY}; the final checkpoint is {final}")
    return out


def _quiet(message: str) -> None:
    """What is not printed (ranks above 0; checks that repeat a stage's)."""
