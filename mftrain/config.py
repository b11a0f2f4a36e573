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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mfdata.sampler import LevelMixing

SCHEMA_FILE = "mftrain-config.schema.json"
LabelName = Literal["energy", "forces", "stress"]


class ConfigError(ValueError):
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
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    precision: Literal["float32", "float64"] = Field(
        "float64", description="Model and data floating-point dtype."
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


class TrainConfig(_Model):
    """``mftrain fit`` configuration (YAML)."""

    seed: int = 0
    strategy: Literal["single", "multihead"] = Field(
        "multihead",
        description="single: one level, one head; multihead: one head per level, all jointly.",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    lr_scheduler: Schedule | None = None
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    out: str | None = Field(None, description="Output directory (--out).")


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
