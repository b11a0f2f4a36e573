"""The fine-tuned model: a multi-head NequIP model started from a trained mftrain checkpoint.

:func:`FineTunedNequIPModel` (``_target_: mftrain.finetune.FineTunedNequIPModel`` in a
fine-tuning run's nequip config, so that nequip's restarts rebuild it the same way) builds the
architecture of the checkpoint it starts from, copies the backbone's weights from it, starts each
head from a named head of it (``keep``) or afresh (``reinit``), and freezes the parameters outside
``finetune.backbone``. A head's per-type energy shift and scale carry over only to a head of the
same level; a head of another level takes its level's statistics (levels differ by hundreds of
eV). The optimizer sees the trainable parameters only, through nequip's ``param_groups`` hook
(:func:`parameter_groups`, ``_target_: mftrain.finetune.parameter_groups``), with layer-wise
learning rates ``lr x layer_lr_decay^d`` (``d``: heads 0, last interaction layer 1, ..., type
embedding ``num_layers + 1``).

The checkpoint a fine-tuned model starts from must stay where it was (with the same contents:
its sha256 is checked) while that run trains or resumes. Loading the fine-tuned checkpoint
itself (``mftrain eval``, ``mftrain export``, nequip's ``ModelFromCheckpoint``) does not need it:
the checkpoint's own weights replace every weight. Checkpoints are pickles: trusted files only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mfdata.files import file_sha256
from mftrain.checkpoint import CheckpointError

_HEAD_KEY = re.compile(r"^(?P<prefix>.*\.energy_heads\.heads\.)(?P<head>[^.]+)\.(?P<rest>.+)$")
_LAYER = re.compile(r"(?:^|\.)layer(\d+)_convnet\.")


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
        raise CheckpointError(f"{file}: the checkpoint this model is fine-tuned from is missing")
    if file_sha256(file) != sha256:
        raise CheckpointError(f"{file}: changed since the fine-tuning run started (sha256 differs)")
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
            raise CheckpointError(f"{where}: its model has no {start}")
        if weights[start].shape != state[key].shape:
            raise CheckpointError(
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
