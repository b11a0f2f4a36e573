"""``mftrain export``: one head of a multi-head checkpoint as a standard nequip package.

The file is a nequip ``.nequip.zip`` package, written as ``nequip-package build`` writes one (same
layout, metadata and bundled code), of the checkpoint's model with the persistent model modifier
``select_head`` applied: a model of that level only, which every frame goes through with or
without a ``dataset`` field (a delta head keeps its base heads and gives base + Δ; a
fidelity-embedding model is fixed to that level's embedding). nequip's ASE calculator loads it
(``NequIPCalculator._from_saved_model(path)``); nequip's LAMMPS pair style should too (untested).
Only the eager model is packaged (no AOTInductor compile); ``nequip-compile`` can take the package.

``nequip-package build`` itself cannot be used on an mftrain checkpoint: it draws its example
frame from the checkpoint's data module, which it builds with nequip's data-module arguments. The
example frame here is a small synthetic cluster of the model's atom types.

The package metadata (``model/package_metadata.txt``, YAML) carries, under ``mfkit``, the head's
level definition, reference energies, strategy and training data (``mftrain show`` reads it
without loading the model).

Checkpoints and packages are pickle-based: load only trusted files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfdata.errors import UsageError
from mfdata.files import file_sha256
from mftrain.checkpoint import Checkpoint, read_checkpoint

SUFFIX = ".nequip.zip"
PACKAGE_KEY = "mfkit"  # mfkit's part of the package metadata (plain YAML, read without unpickling)


def head_description(checkpoint: Checkpoint, level: str) -> dict[str, Any]:
    """What an exported head says about itself: its level's definition, reference energies and
    scale, the strategy, the training data and the checkpoint it came from."""
    p = checkpoint.provenance
    return {
        "level": level,
        "level_definition": checkpoint.level_definition(level),
        "base_level": checkpoint.bases.get(level),
        "reference_energies_eV": (p.get("reference_energies") or {}).get(level),
        "energy_scale": (p.get("energy_scales") or {}).get(level),
        "strategy": checkpoint.strategy,
        "stores": p.get("stores"),
        "split": {k: v for k, v in (p.get("split") or {}).items() if k != "per_store"},
        "steps": checkpoint.global_step,
        "checkpoint": str(checkpoint.path),
        "checkpoint_sha256": file_sha256(checkpoint.path),
        "mfkit_version": p.get("mfkit_version"),
    }


def example_frame(type_names: list[str], r_max: float):
    """A 5-atom non-periodic frame with every edge field nequip's packaged example data has."""
    import torch
    from nequip.data import AtomicDataDict, from_dict
    from nequip.data.transforms import NeighborListTransform, NonPeriodicCellTransform
    from nequip.utils.global_state import _GLOBAL_DTYPE

    pos = torch.tensor(
        [[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.0, 1.2, 0.1], [0.1, 0.2, 1.3], [1.0, 1.1, 0.9]],
        dtype=_GLOBAL_DTYPE,
    )
    types = torch.tensor([i % len(type_names) for i in range(len(pos))], dtype=torch.long)
    data = from_dict({"pos": pos, "atom_types": types})
    data = NonPeriodicCellTransform(padding=10.0, override_cell=True)(data)
    data = NeighborListTransform(r_max=r_max)(data)
    if AtomicDataDict.EDGE_CELL_SHIFT_KEY not in data:
        data[AtomicDataDict.EDGE_CELL_SHIFT_KEY] = torch.zeros(
            (AtomicDataDict.num_edges(data), 3), dtype=_GLOBAL_DTYPE
        )
    return data


def export_head(ckpt: str | Path, level: str, out: str | Path) -> Path:
    """Write head ``level`` of checkpoint ``ckpt`` as a nequip package at ``out``.

    ``level`` is a level id or alias. Raises FileNotFoundError (no checkpoint), FileExistsError
    (``out`` exists), ValueError (a level the checkpoint has no head for, or ``out`` not ending in
    ``.nequip.zip``).
    """
    ckpt, out = Path(ckpt), Path(out)
    checkpoint = read_checkpoint(ckpt)
    level = checkpoint.head(level)
    if not out.name.endswith(SUFFIX):
        raise UsageError(f"{out}: a nequip package file name must end in {SUFFIX}")
    if out.exists():
        raise FileExistsError(f"{out} exists; not overwriting it")
    out.parent.mkdir(parents=True, exist_ok=True)

    import torch
    import yaml
    from nequip.model.modify_utils import modify
    from nequip.model.saved_models import load_saved_model
    from nequip.model.saved_models.package import _suppress_package_importer_exporter_warnings
    from nequip.model.utils import _EAGER_MODEL_KEY
    from nequip.scripts._package_utils import _EXTERNAL_MODULES, _INTERNAL_MODULES, _MOCK_MODULES
    from nequip.scripts._workflow_utils import set_workflow_state
    from nequip.scripts.package import _CURRENT_NEQUIP_PACKAGE_VERSION
    from nequip.utils.global_state import set_global_state
    from nequip.utils.versions import get_current_code_versions
    from nequip.utils.versions.version_utils import get_version_safe
    from omegaconf import OmegaConf

    config = dict(checkpoint.nequip_config)
    config.pop("versions", None)
    config = OmegaConf.to_yaml(config)

    set_workflow_state("package")
    tmp = out.with_name(out.name + ".part")
    try:
        set_global_state()
        models = load_saved_model(str(ckpt), compile_mode=_EAGER_MODEL_KEY, model_key=None)
        modify(models, [{"modifier": "select_head", "level": level}])
        models = models.to(torch.device("cpu")).eval()
        type_names = list(next(iter(models.values())).type_names)
        metadata = {
            "versions": get_current_code_versions(),
            "external_modules": {k: get_version_safe(k) for k in _EXTERNAL_MODULES},
            "package_version_id": _CURRENT_NEQUIP_PACKAGE_VERSION,
            "available_models": [_EAGER_MODEL_KEY],
            "atom_types": dict(enumerate(type_names)),
            PACKAGE_KEY: head_description(checkpoint, level),
        }
        with (
            _suppress_package_importer_exporter_warnings(),
            torch.package.PackageExporter(
                str(tmp), importer=(torch.package.importer.sys_importer,), debug=True
            ) as exp,
        ):
            exp.mock([f"{pkg}.**" for pkg in _MOCK_MODULES])
            exp.extern([f"{pkg}.**" for pkg in _EXTERNAL_MODULES])
            exp.intern([f"{pkg}.**" for pkg in _INTERNAL_MODULES])
            exp.save_pickle(
                "model",
                "example_data.pkl",
                example_frame(type_names, checkpoint.r_max),
                dependencies=True,
            )
            exp.save_text("model", "config.yaml", config)
            exp.save_text(
                "model",
                "package_metadata.txt",
                yaml.dump(metadata, default_flow_style=False),
            )
            exp.save_pickle("model", f"{_EAGER_MODEL_KEY}_model.pkl", models, dependencies=True)
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
        set_workflow_state(None)
    return out
