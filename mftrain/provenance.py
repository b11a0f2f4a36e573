"""A training run's provenance: what a checkpoint records about the data and decisions behind it.

Written into ``provenance.json`` and under the checkpoint's ``mfkit`` key: versions, the stores
(path, name, checksum), the split of each store, the selection (path and sha256), the head order
and type names, how every head was initialised, the level mixing, the loss weights and the
resolved config, and the full definition of every head's level. Plain JSON types only, so that
YAML and checkpoints hold it unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mfdata.files import file_sha256
from mfdata.levels import resolve_level
from mfdata.split import read_split
from mfdata.store.store import Store, mfkit_version
from mftrain.config import TrainConfig
from mftrain.heads import HeadInit
from mftrain.plan import Plan


def _store(store: Store) -> dict[str, Any]:
    m = store.manifest
    return {
        "path": str(store.path.resolve()),
        "name": m.name,
        "checksum": m.checksum,
        "n_structures": m.n_structures,
        "levels": store.levels,
    }


def _split(config: TrainConfig, stores: Sequence[Store]) -> dict[str, Any]:
    d = config.data
    return {
        "name": d.split,
        "parts": {"train": d.train_part, "val": d.val_part, "test": d.test_part},
        "subset": d.subset,
        "per_store": [read_split(s, d.split)[0].model_dump(mode="json") for s in stores],
    }


def _delta(plan: Plan, init: HeadInit) -> dict[str, Any] | None:
    if not plan.bases:
        return None
    return {
        "bases": plan.bases,
        "detach_base": plan.model_args["detach_base"],
        "shifts": {level: init.shifts[level] for level in plan.bases},
        "scales": {level: init.scales[level] for level in plan.bases},
        "methods": {level: init.methods[level] for level in plan.bases},
    }


def run_provenance(
    config: TrainConfig,
    stores: Sequence[Store],
    plan: Plan,
    type_names: list[str],
    references: HeadInit,
    init: HeadInit,
    mixing: dict[str, Any],
    loss_weights: dict[str, dict[str, float]],
    avg_num_neighbors: float,
) -> dict[str, Any]:
    """The provenance of a run of ``config`` (resolved: absolute store and selection paths).

    ``references`` are the heads' own levels' statistics, ``init`` what the heads start from (a
    delta head from its difference to its base); ``mixing`` the sampler's config, epoch-0 ratios
    and sample counts per level.
    """
    import nequip
    import torch

    selection = config.data.selection
    provenance = {
        "mfkit_version": mfkit_version(),
        "nequip_version": nequip.__version__,
        "torch_version": str(torch.__version__),
        "strategy": plan.strategy,
        "stores": [_store(s) for s in stores],
        "split": _split(config, stores),
        "selection": {"path": selection, "sha256": file_sha256(selection)} if selection else None,
        "levels": plan.levels,
        # full definitions, so the checkpoint and exported heads describe their levels anywhere
        "level_definitions": {
            level: resolve_level(level).model_dump(mode="json") for level in plan.levels
        },
        "type_names": type_names,
        "reference_energies": references.shifts,
        "reference_methods": references.methods,
        "energy_scales": references.scales,
        "head_notes": init.notes,
        "delta": _delta(plan, init),
        "mixing": mixing,
        "loss": {"weights": loss_weights, "per_atom_energy": config.loss.per_atom_energy},
        "avg_num_neighbors": avg_num_neighbors,
        "config": config.model_dump(mode="json"),
        **plan.provenance,
    }
    return json.loads(json.dumps(provenance))
