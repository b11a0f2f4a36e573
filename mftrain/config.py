"""mftrain's training configuration: a pydantic model, the single source of its JSON Schema.

``mftrain fit CONFIG.yaml`` reads this file; ``mftrain.train`` turns it into the nequip/Hydra
config that ``nequip-train`` runs. Every section has defaults (a small NequIP model, every level
in the data, multi-head training), unknown keys are errors, and a bad value fails before training
with the field named. ``python -m mftrain.config`` writes ``schemas/mftrain-config.schema.json``;
a test fails when it drifts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from mfdata.errors import MfkitError
from mfdata.sampler import LevelMixing

SCHEMA_FILE = "mftrain-config.schema.json"
LabelName = Literal["energy", "forces", "stress"]


class ConfigError(MfkitError, ValueError):
    """A training configuration that cannot be used (a user error, reported in one line)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Model):
    """Which stores, levels and structures to train on, and how batches are made."""

    stores: list[str] = Field(
        default_factory=list, description="Stores: paths or registered names (--data)."
    )
    levels: list[str] | None = Field(
        None,
        description="Heads in order (ids or aliases; --levels). Default: every level of the "
        "stores, in store order.",
    )
    split: str = Field(
        "default",
        description="Split saved in every store; fit makes a group-aware 90/5/5 one if missing.",
    )
    train_part: str = "train"
    val_part: str = "val"
    test_part: str = "test"
    subset: int | None = Field(None, ge=1, description="A nested training subset of this size.")
    selection: str | None = Field(None, description="A selection JSON (mfdata query --out).")
    labels: list[LabelName] = Field(
        default_factory=lambda: ["energy", "forces"],
        description="Label kinds that make a structure a sample at a level.",
    )
    batch_size: int | None = Field(8, ge=1, description="Structures per training batch.")
    max_atoms: int | None = Field(
        None, ge=1, description="Atom budget per training batch (replaces batch_size)."
    )
    val_batch_size: int = Field(32, ge=1)
    epoch_size: int | None = Field(
        None, ge=1, description="Samples per epoch (default: every training sample once)."
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    mixing: LevelMixing = Field(
        default_factory=LevelMixing, description="How levels are mixed in an epoch."
    )

    @model_validator(mode="after")
    def _batching(self) -> DataConfig:
        if self.batch_size is None and self.max_atoms is None:
            raise ValueError("give batch_size (structures) or max_atoms (an atom budget)")
        return self


class ModelConfig(_Model):
    """The NequIP backbone (nequip's NequIPGNNModel arguments) and the heads' initialisation."""

    r_max: float = Field(5.0, gt=0, description="Cutoff radius, Å.")
    num_layers: int = Field(2, ge=1)
    l_max: int = Field(1, ge=0)
    parity: bool = True
    num_features: int = Field(16, ge=1)
    radial_mlp_depth: int = Field(1, ge=1)
    radial_mlp_width: int = Field(32, ge=1)
    num_bessels: int = Field(8, ge=1)
    polynomial_cutoff_p: int = Field(6, ge=1)
    readout_mlp_hidden_layers_depth: int = Field(0, ge=0)
    readout_mlp_hidden_layers_width: int | None = Field(None, ge=1)
    avg_num_neighbors: float | None = Field(
        None, gt=0, description="Default: measured on the training structures."
    )
    shifts_trainable: bool = Field(False, description="Per-type energy shifts trainable.")
    scales_trainable: bool = Field(False, description="Per-type energy scales trainable.")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Further NequIPGNNModel arguments, passed as given."
    )


class LabelWeights(_Model):
    energy: float = Field(1.0, ge=0)
    forces: float = Field(1.0, ge=0)
    stress: float = Field(1.0, ge=0)


class LevelWeights(_Model):
    energy: float | None = Field(None, ge=0)
    forces: float | None = Field(None, ge=0)
    stress: float | None = Field(None, ge=0)


class LossConfig(_Model):
    """Masked multi-fidelity loss: weights per label, overridden per level; 0 leaves a term out."""

    per_atom_energy: bool = Field(True, description="Energy errors divided by atom count.")
    coeffs: LabelWeights = Field(default_factory=LabelWeights)
    levels: dict[str, LevelWeights] = Field(
        default_factory=dict, description="Per-level weights by label (ids or aliases)."
    )


class OptimizerConfig(_Model):
    name: Literal["Adam", "AdamW", "SGD"] = "Adam"
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class PlateauSchedule(_Model):
    """Reduce the learning rate when the validation loss stops improving."""

    kind: Literal["plateau"]
    factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(10, ge=0, description="Validations without improvement.")
    min_lr: float = Field(0.0, ge=0)


class CosineSchedule(_Model):
    """Cosine decay over max_steps, by step."""

    kind: Literal["cosine"]
    min_lr: float = Field(0.0, ge=0)


class ExponentialSchedule(_Model):
    """Multiply the learning rate by gamma every epoch."""

    kind: Literal["exponential"]
    gamma: float = Field(0.99, gt=0, le=1)


Schedule = Annotated[
    PlateauSchedule | CosineSchedule | ExponentialSchedule, Field(discriminator="kind")
]


class EarlyStoppingConfig(_Model):
    patience: int = Field(20, ge=1, description="Validations without improvement.")
    min_delta: float = Field(0.0, ge=0)


class EMAConfig(_Model):
    decay: float = Field(0.999, gt=0, lt=1)


class TrainerConfig(_Model):
    """Lightning trainer options."""

    max_steps: int = Field(1000, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    max_time_minutes: float | None = Field(
        None,
        gt=0,
        description="Wall-clock training budget (Lightning's max_time, checked after every "
        "step); training ends at whichever of max_steps, max_epochs and this comes first.",
    )
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    devices: int = Field(
        1,
        ge=1,
        description="Training processes per node: one per GPU (on the CPU, processes). More "
        "than one process in all trains with DDP (docs/distributed.md); batch_size and "
        "max_atoms are per process.",
    )
    num_nodes: int = Field(
        1,
        ge=1,
        description="Nodes (machines); more than one needs a launcher that starts devices "
        "processes on every node (srun or torchrun).",
    )
    precision: Literal["float32", "float64"] = Field(
        "float32",
        description="Model and data floating-point dtype. float32 is the default: its steps are "
        "1.1-1.7x faster than float64 on the CPU (benchmarks/train.py) and the study's models "
        "were as accurate after equal steps (benchmarks/README.md); float64 where an "
        "application needs it (e.g. energy conservation far below the model's error).",
    )
    val_every_n_steps: int | None = Field(
        None, ge=1, description="Validate every N steps (default: after every epoch)."
    )
    checkpoint_every_n_steps: int = Field(
        50, ge=1, description="How often last.ckpt is written (and at the end)."
    )
    log_every_n_steps: int = Field(10, ge=1)
    gradient_clip_val: float | None = Field(None, gt=0)
    early_stopping: EarlyStoppingConfig | None = None
    ema: EMAConfig | None = None
    progress_bar: bool = True

    @model_validator(mode="after")
    def _ema_needs_epoch_validation(self) -> TrainerConfig:
        if self.ema is not None and self.val_every_n_steps is not None:
            # nequip's EMA swaps weights around validation; a checkpoint written by a validation
            # in mid-epoch would catch them swapped
            raise ValueError("ema needs validation after each epoch: leave val_every_n_steps unset")
        return self


class DeltaConfig(_Model):
    """Strategy ``delta``: heads that predict their level's difference from a base level."""

    bases: dict[str, str] = Field(
        min_length=1,
        description="Delta level -> base level (ids or aliases; both heads): the delta head "
        "predicts E_level - E_base, and its level's energy is base + delta.",
    )
    detach_base: bool = Field(
        True,
        description="The delta levels' frames send no gradient into the base heads' own "
        "readout and scale/shift (the backbone learns from every frame either way).",
    )


class FidelityEmbeddingConfig(_Model):
    """Strategy ``fidelity_embedding``: one shared readout; the level is a backbone input."""

    num_features: int = Field(
        8, ge=1, description="Size of the level embedding beside the type embedding."
    )


class UnfreezeLast(_Model):
    unfreeze_last: int = Field(
        ge=1,
        description="Train the last k interaction layers and the heads; the type embedding and "
        "the earlier layers stay as pre-trained.",
    )


def _backbone_kind(value: Any) -> str:
    return "partial" if isinstance(value, (dict, UnfreezeLast)) else "mode"


# `full`, `frozen` or {unfreeze_last: k}; the tags name the two forms in error messages
Backbone = Annotated[
    Annotated[Literal["full", "frozen"], Tag("mode")] | Annotated[UnfreezeLast, Tag("partial")],
    Discriminator(_backbone_kind),
]
FINETUNE_STRATEGIES = ("pretrain_finetune", "multihead_finetune")


class FinetuneConfig(_Model):
    """Strategies ``pretrain_finetune`` and ``multihead_finetune``: stage 1 pre-trains (an ordinary
    ``single`` or ``multihead`` run), stage 2 fine-tunes a model started from stage 1's
    ``best.ckpt`` (or from ``from_checkpoint``, skipping stage 1). Unset stage-2 options take the
    values of the ``optimizer``, ``trainer`` and ``lr_scheduler`` sections."""

    level: str = Field(description="The fine-tuning level (id or alias).")
    pretrain: list[str] | None = Field(
        None,
        min_length=1,
        description="Pre-training level(s), i.e. stage 1's heads. pretrain_finetune: one level "
        "(default: the stores' one level besides `level`); multihead_finetune: the heads "
        "(default: every level of the stores). With from_checkpoint: the checkpoint's head(s) to "
        "start from (default: all of them).",
    )
    from_checkpoint: str | None = Field(
        None, description="An mftrain checkpoint to fine-tune (no stage 1)."
    )
    backbone: Backbone = Field(
        "full",
        description="full: train everything; frozen: only the heads; {unfreeze_last: k}: the "
        "last k interaction layers and the heads.",
    )
    layer_lr_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Discriminative learning rates: lr x decay^d, d the distance from the output "
        "(heads 0, last interaction layer 1, ..., type embedding num_layers + 1).",
    )
    head: Literal["keep", "reinit"] = Field(
        "keep",
        description="keep: the fine-tuned head starts from the pre-trained readout (pretrain_"
        "finetune: of the pre-training level); reinit: a fresh readout. A head's per-type energy "
        "shift and scale come from its level's statistics when its level changes.",
    )
    energy_only: bool = Field(
        False, description="Fine-tune on energies only (force and stress weights 0 at `level`)."
    )
    replay: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="multihead_finetune: share of stage-2 samples from the other heads' levels "
        "(split equally between them; default 0.2); `level` gets the rest.",
    )
    init_from: str | None = Field(
        None,
        description="multihead_finetune with a `level` the pre-trained model has no head for: "
        "the head whose readout the new head starts from (default: the pre-training level with "
        "the most force labels in the stores), as MACE's multi-head fine-tuning does.",
    )
    max_steps: int | None = Field(None, ge=1, description="Stage-2 steps (trainer.max_steps).")
    max_time_minutes: float | None = Field(
        None, gt=0, description="Stage-2 wall-clock budget (trainer.max_time_minutes)."
    )
    lr: float | None = Field(None, gt=0, description="Stage-2 learning rate (optimizer.lr).")
    lr_scheduler: Schedule | None = Field(
        None, description="Stage-2 schedule (default: the lr_scheduler section)."
    )

    @model_validator(mode="after")
    def _compatible(self) -> FinetuneConfig:
        if self.backbone == "frozen" and self.layer_lr_decay is not None:
            raise ValueError(
                "layer_lr_decay needs trainable layers: a frozen backbone trains only the heads"
            )
        return self


class TrainConfig(_Model):
    """``mftrain fit`` configuration (YAML)."""

    seed: int = 0
    strategy: Literal[
        "single",
        "multihead",
        "pretrain_finetune",
        "multihead_finetune",
        "fidelity_embedding",
        "delta",
    ] = Field(
        "multihead",
        description="single: one level, one head; multihead: one head per level, all jointly; "
        "pretrain_finetune: a single run on a pre-training level, then fine-tuning on "
        "`finetune.level`; multihead_finetune: a multihead run, then fine-tuning of the head of "
        "`finetune.level` with replay of the other levels; "
        "fidelity_embedding: one shared readout, the level as a backbone input; "
        "delta: multihead where the heads in `delta.bases` predict a difference from a base.",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    lr_scheduler: Schedule | None = None
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    delta: DeltaConfig | None = Field(None, description="Strategy delta's base levels.")
    fidelity_embedding: FidelityEmbeddingConfig | None = Field(
        None, description="Strategy fidelity_embedding's options (defaults without it)."
    )
    finetune: FinetuneConfig | None = Field(
        None, description="Strategies pretrain_finetune and multihead_finetune: stage 2."
    )
    out: str | None = Field(None, description="Output directory (--out).")

    @model_validator(mode="after")
    def _strategy_sections(self) -> TrainConfig:
        if self.strategy == "delta" and self.delta is None:
            raise ValueError("strategy delta needs a `delta` section with `bases` (level: base)")
        for name in ("delta", "fidelity_embedding"):
            if getattr(self, name) is not None and self.strategy != name:
                raise ValueError(f"a `{name}` section is for strategy {name}, not {self.strategy}")
        if self.strategy in FINETUNE_STRATEGIES:
            if self.finetune is None:
                raise ValueError(
                    f"strategy {self.strategy} needs a `finetune` section with `level` (the "
                    "fine-tuning level)"
                )
            if self.data.levels is not None:
                raise ValueError(
                    f"data.levels: strategy {self.strategy} takes its levels from "
                    "finetune.pretrain and finetune.level"
                )
            if self.strategy == "pretrain_finetune" and self.finetune.replay is not None:
                raise ValueError("finetune.replay is for strategy multihead_finetune")
        elif self.finetune is not None:
            raise ValueError(
                f"a `finetune` section is for strategies {', '.join(FINETUNE_STRATEGIES)}, "
                f"not {self.strategy}"
            )
        return self


def _location(loc: tuple) -> str:
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def describe_errors(error: ValidationError) -> str:
    """One line naming every bad field."""
    messages = []
    for e in error.errors():
        loc = tuple(x for x in e["loc"] if x not in ("plateau", "cosine", "exponential"))
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown field"
        messages.append(f"{_location(loc)}: {message}")
    return "; ".join(messages)


def validate_config(data: dict, source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_errors(exc)}") from None


def load_config(path: str | Path | None) -> TrainConfig:
    """A training config from YAML (or the defaults with no path)."""
    if path is None:
        return TrainConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return validate_config(data, str(path))


def with_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """``config`` with dotted-path values replaced (``{"trainer.max_steps": 10}``), validated."""
    data = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return validate_config(data, "command line")


def schema_text() -> str:
    return json.dumps(TrainConfig.model_json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(directory: Path) -> Path:
    path = directory / SCHEMA_FILE
    path.write_text(schema_text(), encoding="utf-8")
    return path


if __name__ == "__main__":
    write_schema(Path(__file__).resolve().parent.parent / "schemas")
