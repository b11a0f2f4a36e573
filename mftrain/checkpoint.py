"""Reading an mftrain checkpoint: one place that knows its layout.

A checkpoint is Lightning's file as nequip writes it, plus mfkit's provenance under the ``mfkit``
key. Checkpoints (like nequip's models and packages) are pickles: reading one runs code stored in
it, so read only checkpoints you trust. mfkit's own data files never execute code.

:func:`read_checkpoint` reads one and returns the fields the rest of mftrain uses, typed; the
model itself is built by nequip (``nequip.model.ModelFromCheckpoint``, see
:func:`mftrain.evaluate.load_model`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdata.errors import MfkitError
from mfdata.levels import UnknownLevelError, resolve_level

# the validation metric that chooses best.ckpt (and drives plateau schedules and early stopping)
MONITOR = "val0_epoch/weighted_sum"


class CheckpointError(MfkitError, ValueError):
    """A file that is not a checkpoint of an mftrain model."""


@dataclass(frozen=True)
class Checkpoint:
    """What an mftrain checkpoint says about its model and its run."""

    path: Path
    levels: list[str]  # heads, in order
    type_names: list[str]
    r_max: float
    model_dtype: str
    bases: dict[str, str]  # delta level -> base level
    strategy: str | None
    global_step: int
    best_val_loss: float | None  # the best MONITOR value Lightning recorded, if any
    last_validation: dict[str, Any] | None  # step and val0_epoch/* metrics (ValidationReport)
    model: dict[str, Any] = field(repr=False)  # the model builder's arguments (hyperparameters)
    provenance: dict[str, Any] = field(repr=False)  # mfkit's provenance (the ``mfkit`` key)
    nequip_config: dict[str, Any] = field(repr=False)  # nequip's run config (``info_dict``)

    def describe_heads(self) -> str:
        """The heads in order, a delta head with its base: ``a, b (a + Δ)``."""
        return ", ".join(
            f"{level} ({self.bases[level]} + Δ)" if level in self.bases else level
            for level in self.levels
        )

    def level_definition(self, level: str) -> dict[str, Any] | None:
        """Head ``level``'s level definition as the run stored it; for a checkpoint written
        before runs stored them, this machine's registry's (said in its notes); else None."""
        stored = self.provenance.get("level_definitions") or {}
        if level in stored:
            return stored[level]
        try:
            found = resolve_level(level).model_dump(mode="json")
        except UnknownLevelError:
            return None
        return {**found, "notes": "(from this machine's level registry, not from the run)"}

    def head(self, name: str) -> str:
        """The level id of head ``name`` (an id or an alias); an error naming the heads if none."""
        if name in self.levels:
            return name
        try:
            level = resolve_level(name).id
        except UnknownLevelError:
            level = None
        if level not in self.levels:
            raise CheckpointError(
                f"{self.path}: no head {name!r}; the checkpoint's heads are {self.describe_heads()}"
            )
        return level


def _best_score(callbacks: dict) -> float | None:
    for key, state in callbacks.items():
        if key.startswith("ModelCheckpoint") and MONITOR in key and state.get("best_model_score"):
            return float(state["best_model_score"])
    return None


def _last_validation(callbacks: dict) -> dict[str, Any] | None:
    for key, state in callbacks.items():
        if key.startswith("ValidationReport") and state.get("latest"):
            return dict(state["latest"])
    return None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read an mftrain checkpoint (a trusted file: it is a pickle).

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` for a file that
    does not load or is not an mftrain model's checkpoint.
    """
    import torch

    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # any pickle or zip failure: one line naming the file
        raise CheckpointError(f"{path}: not a checkpoint ({type(exc).__name__})") from None
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    model = hparams.get("model", {}) if isinstance(hparams, dict) else {}
    if not isinstance(model, dict) or "levels" not in model:
        raise CheckpointError(f"{path}: not a checkpoint of an mftrain model (no head levels)")
    provenance = ckpt.get("mfkit", hparams.get("provenance")) or {}
    return Checkpoint(
        path=path,
        levels=[str(level) for level in model["levels"]],
        type_names=[str(name) for name in model["type_names"]],
        r_max=float(model["r_max"]),
        model_dtype=str(model.get("model_dtype", "float64")),
        bases={str(k): str(v) for k, v in (model.get("bases") or {}).items()},
        strategy=provenance.get("strategy"),
        global_step=int(ckpt.get("global_step", 0)),
        best_val_loss=_best_score(ckpt.get("callbacks", {})),
        last_validation=_last_validation(ckpt.get("callbacks", {})),
        model=dict(model),
        provenance=dict(provenance),
        nequip_config=dict(hparams.get("info_dict") or {}),
    )
