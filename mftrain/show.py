"""``mftrain show``: what a checkpoint or an exported head says about its model and its run.

A checkpoint is read with :func:`mftrain.checkpoint.read_checkpoint` (a pickle: trusted files
only). An exported package (``.nequip.zip``) is read without loading its model: its
``package_metadata.txt`` is YAML inside the zip, and :mod:`mftrain.export` writes the head's
description there under ``mfkit``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import yaml

from mfdata.errors import MfkitError
from mftrain.checkpoint import read_checkpoint
from mftrain.export import PACKAGE_KEY, SUFFIX
from mftrain.run_log import validation_line

METADATA = "/model/package_metadata.txt"


class ShowError(MfkitError, ValueError):
    """A file that is neither an mftrain checkpoint nor a nequip package."""


def describe_checkpoint(path: Path) -> dict[str, Any]:
    """Heads (level definitions, reference energies, scales, delta bases), strategy, training
    data (stores with checksums, split, selection), steps and validation metrics."""
    ckpt = read_checkpoint(path)
    p = ckpt.provenance
    heads = [
        {
            "level": level,
            "definition": ckpt.level_definition(level),
            "base_level": ckpt.bases.get(level),
            "reference_energies_eV": (p.get("reference_energies") or {}).get(level),
            "energy_scale": (p.get("energy_scales") or {}).get(level),
        }
        for level in ckpt.levels
    ]
    split = p.get("split") or {}
    return {
        "file": str(ckpt.path),
        "kind": "checkpoint",
        "strategy": ckpt.strategy,
        "heads": heads,
        "type_names": ckpt.type_names,
        "r_max": ckpt.r_max,
        "model_dtype": ckpt.model_dtype,
        "steps": ckpt.global_step,
        "best_validation_loss": ckpt.best_val_loss,
        "last_validation": ckpt.last_validation,
        "stores": p.get("stores"),
        "split": {k: v for k, v in split.items() if k != "per_store"} or None,
        "selection": p.get("selection"),
        "versions": {k: p.get(f"{k}_version") for k in ("mfkit", "nequip", "torch")},
    }


def describe_package(path: Path) -> dict[str, Any]:
    """The package's metadata: atom types, versions and, for a head mftrain exported, its
    description (nothing in the package is unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(METADATA)]
            if not names:
                raise ShowError(
                    f"{path}: a zip without {METADATA.lstrip('/')}: not a nequip package"
                )
            metadata = yaml.safe_load(archive.read(names[0]).decode("utf-8"))
    except (zipfile.BadZipFile, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ShowError(f"{path}: not a nequip package ({type(exc).__name__})") from None
    if not isinstance(metadata, dict):
        raise ShowError(f"{path}: its package metadata is not a mapping")
    return {
        "file": str(path.resolve()),
        "kind": "package",
        "atom_types": metadata.get("atom_types"),
        "available_models": metadata.get("available_models"),
        "versions": metadata.get("versions"),
        "head": metadata.get(PACKAGE_KEY),  # None: not exported by mftrain (or an older one)
    }


def describe(path: str | Path) -> dict[str, Any]:
    """A checkpoint's or a package's description (by its name: ``*.nequip.zip`` is a package)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.name.endswith(SUFFIX):
        return describe_package(path)
    return describe_checkpoint(path)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _energies(values: dict[str, float] | None) -> str:
    if not values:
        return "n/a"
    return ", ".join(f"{symbol} {value:.6g}" for symbol, value in values.items())


def _level_line(level: str, definition: dict[str, Any] | None) -> str:
    if definition is None:
        return f"{level} (no definition known)"
    extra = [definition.get("family"), definition.get("program")]
    return f"{level}: {definition['name']} ({', '.join(x for x in extra if x)})"


def format_description(d: dict[str, Any]) -> str:
    """The description as lines a person reads."""
    if d["kind"] == "package":
        head = d["head"]
        lines = [f"{d['file']}: nequip package, atom types {d['atom_types']}"]
        if head is None:
            return "\n".join(lines + ["  no mfkit head description (not exported by mftrain)"])
        lines += [
            f"  head {_level_line(head['level'], head.get('level_definition'))}",
            f"  reference energies (eV/atom): {_energies(head.get('reference_energies_eV'))}",
            f"  strategy {head.get('strategy')}, {head.get('steps')} steps, from "
            f"{head.get('checkpoint')} (sha256 {str(head.get('checkpoint_sha256'))[:12]}...)",
        ]
        lines += [
            f"  store {s['name']} {s['path']} (checksum {s['checksum'][:12]}...)"
            for s in head.get("stores") or []
        ]
        return "\n".join(lines)
    lines = [
        f"{d['file']}: strategy {d['strategy']}, {d['steps']} steps, {d['model_dtype']}, "
        f"r_max {d['r_max']} Å, types {' '.join(d['type_names'])}",
        "heads (in order):",
    ]
    for head in d["heads"]:
        base = f" (delta on {head['base_level']})" if head["base_level"] else ""
        lines.append(f"  {_level_line(head['level'], head['definition'])}{base}")
        lines.append(
            f"    reference energies (eV/atom): {_energies(head['reference_energies_eV'])}; "
            f"energy scale {_number(head['energy_scale'])}"
        )
    for store in d["stores"] or []:
        lines.append(
            f"data: store {store['name']} {store['path']} ({store['n_structures']} structures, "
            f"checksum {store['checksum'][:12]}...)"
        )
    if d["split"]:
        lines.append(f"split {d['split']['name']}, parts {d['split']['parts']}")
    if d["selection"]:
        lines.append(
            f"selection {d['selection']['path']} (sha256 {d['selection']['sha256'][:12]}...)"
        )
    lines.append(f"best validation loss {_number(d['best_validation_loss'])}")
    if d["last_validation"]:
        lines.append(
            "last " + validation_line(d["last_validation"], [h["level"] for h in d["heads"]])
        )
    return "\n".join(lines)
