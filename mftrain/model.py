"""Model builders: a NequIP backbone shared by one energy head per level of theory.

Use from a nequip config with ``_target_: mftrain.model.MultiHeadNequIPModel``. The builder is
decorated with nequip's ``model_builder``, so ``seed``, ``model_dtype`` and ``type_names`` work as
for nequip's own models, and the result is a ``GraphModel``. A one-level model is the same builder
with one head; delta heads (``bases``) and a fidelity embedding (``level_embedding_features``)
are options of it (see :mod:`mftrain.nn`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from nequip.data import AtomicDataDict
from nequip.model import NequIPGNNModel, model_builder
from nequip.nn import AtomwiseReduce, ForceStressOutput, GraphModel, SequentialGraphNetwork

from mftrain.nn import HeadIndex, MultiHeadEnergy

LEVEL_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_REPLACED = ("per_atom_energy_readout", "per_type_energy_scale_shift", "total_energy_sum")


def _per_level(name: str, values: Mapping | None, levels: list[str], default) -> dict:
    if values is None:
        return dict.fromkeys(levels, default)
    values = dict(values)
    if set(values) != set(levels):
        missing = sorted(set(levels) - set(values))
        extra = sorted(set(values) - set(levels))
        raise ValueError(
            f"{name}: keys must be the levels {levels} (missing {missing}, extra {extra})"
        )
    return values


@model_builder
def MultiHeadNequIPModel(
    levels: Sequence[str],
    per_level_energy_shifts: Mapping[str, float | Mapping[str, float]] | None = None,
    per_level_energy_scales: Mapping[str, float | Mapping[str, float]] | None = None,
    per_type_energy_shifts_trainable: bool = False,
    per_type_energy_scales_trainable: bool = False,
    readout_mlp_hidden_layers_depth: int = 0,
    readout_mlp_hidden_layers_width: int | None = None,
    readout_mlp_nonlinearity: str | None = "silu",
    do_derivatives: bool = True,
    bases: Mapping[str, str] | None = None,
    detach_base: bool = True,
    level_embedding_features: int | None = None,
    **kwargs,
) -> GraphModel:
    """NequIP GNN backbone (as ``nequip.model.NequIPGNNModel``) with one energy head per level.

    Args:
        levels: level ids in head order: frame ``dataset`` index ``i`` uses head ``levels[i]``
        per_level_energy_shifts: level id -> per-type energy shifts (eV; a number or a dict by
            type name), normally the level's per-element reference energies
        per_level_energy_scales: level id -> per-type energy scales (a number or a dict), normally
            the level's force RMS
        per_type_energy_shifts_trainable, per_type_energy_scales_trainable: as in nequip
        readout_mlp_*: each head's readout MLP, as nequip's ``per_atom_energy_readout``
        do_derivatives: forces and stress by autograd (nequip's ``ForceStressOutput``)
        bases: delta level -> base level: that head predicts its level's energy minus the base
            level's, and its output is base + Δ (its shifts and scales are the difference's)
        detach_base: the delta levels' frames train the base heads' own parameters or not
            (default not; the backbone learns from every frame either way)
        level_embedding_features: a fidelity-embedding model: the frame's level (``dataset``)
            embedded with this many features beside the type embedding (nequip's
            ``categorical_graph_field_embed``), one readout shared by every level, and only the
            per-type shifts and scales per level
        **kwargs: every other ``NequIPGNNModel`` argument (``seed``, ``model_dtype``,
            ``type_names``, ``r_max``, ``num_layers``, ``l_max``, ``num_features``,
            ``avg_num_neighbors``, ...)
    """
    levels = [str(level) for level in levels]
    if not levels:
        raise ValueError("levels: a model needs at least one head")
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels {levels} name one level twice")
    bad = [level for level in levels if not LEVEL_ID.match(level)]
    if bad:
        raise ValueError(f"levels {bad}: heads are keyed by level id ({LEVEL_ID.pattern})")
    for key in ("per_type_energy_shifts", "per_type_energy_scales", "pair_potential"):
        if kwargs.get(key) is not None:
            raise ValueError(f"{key}: a multi-head model sets these per level (per_level_*)")
        kwargs.pop(key, None)
    if kwargs.get("categorical_graph_field_embed") is not None:
        raise ValueError(
            "categorical_graph_field_embed: set level_embedding_features for a level embedding"
        )
    if level_embedding_features is not None:
        if level_embedding_features < 1:
            raise ValueError(f"level_embedding_features {level_embedding_features}: must be >= 1")
        if bases:
            raise ValueError("bases: delta heads need their own readouts, not a fidelity embedding")
        kwargs["categorical_graph_field_embed"] = [
            {
                "field": AtomicDataDict.DATASET_KEY,
                "num_features": int(level_embedding_features),
                "min": 0,
                "max": len(levels) - 1,
            }
        ]
    shifts = _per_level("per_level_energy_shifts", per_level_energy_shifts, levels, 0.0)
    scales = _per_level("per_level_energy_scales", per_level_energy_scales, levels, 1.0)
    type_names = list(kwargs["type_names"])

    # nequip builds the backbone (nested in this builder it returns the bare module tree)
    backbone = NequIPGNNModel(
        per_type_energy_shifts=0.0,
        per_type_energy_scales=1.0,
        readout_mlp_hidden_layers_depth=readout_mlp_hidden_layers_depth,
        readout_mlp_hidden_layers_width=readout_mlp_hidden_layers_width,
        readout_mlp_nonlinearity=readout_mlp_nonlinearity,
        do_derivatives=do_derivatives,
        **kwargs,
    )
    parts = {name: module for name, module in backbone.func.named_children()}
    for name in _REPLACED:
        parts.pop(name)
    first = next(iter(parts.values()))
    last = list(parts.values())[-1]
    head_index = HeadIndex(len(levels), irreps_in=first.irreps_in)
    features = last.irreps_out[AtomicDataDict.NODE_FEATURES_KEY]
    heads = MultiHeadEnergy(
        levels=levels,
        type_names=type_names,
        scales=scales,
        shifts=shifts,
        scales_trainable=per_type_energy_scales_trainable,
        shifts_trainable=per_type_energy_shifts_trainable,
        readout_hidden_layers_depth=readout_mlp_hidden_layers_depth,
        readout_hidden_layers_width=readout_mlp_hidden_layers_width or features.dim,
        readout_nonlinearity=readout_mlp_nonlinearity,
        bases=dict(bases or {}),
        detach_base=detach_base,
        shared_readout=level_embedding_features is not None,
        irreps_in=last.irreps_out,
    )
    total = AtomwiseReduce(
        irreps_in=heads.irreps_out,
        reduce="sum",
        field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        out_field=AtomicDataDict.TOTAL_ENERGY_KEY,
    )
    energy = SequentialGraphNetwork(
        {"head_index": head_index, **parts, "energy_heads": heads, "total_energy_sum": total}
    )
    return ForceStressOutput(energy, do_derivatives)
