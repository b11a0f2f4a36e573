"""The schema layer: pydantic models, the single source of truth for every file mfkit writes.

JSON Schema files in ``schemas/`` are generated from these models (``python -m mfdata.schema``);
a test fails when they drift.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mfdata.units import CANONICAL_UNITS

FORMAT_VERSION = "1.0"
LEVEL_ID_PATTERN = r"^[a-z0-9][a-z0-9-]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LevelOfTheory(_Model):
    """Method + basis + corrections (+ program): the level of theory that produced a label."""

    id: str = Field(pattern=LEVEL_ID_PATTERN, description="Stable short id used in every file.")
    name: str = Field(description="Human-readable canonical name, e.g. 'ωB97X/6-31G(d)'.")
    method: str
    basis: str | None = None
    corrections: list[str] = Field(default_factory=list)
    program: str | None = None
    family: Literal["wavefunction", "dft", "semiempirical", "empirical", "composite"]
    aliases: list[str] = Field(default_factory=list, description="Names source files use.")
    notes: str | None = None


class LabelKind(_Model):
    """A physical quantity: its shape rule and canonical unit."""

    name: str
    per: Literal["structure", "atom"]
    shape: tuple[int, ...] = Field(description="Shape of one structure's or one atom's value.")
    dimension: Literal["energy", "force", "stress", "charge", "dipole"]

    @property
    def unit(self) -> str:
        return CANONICAL_UNITS[self.dimension]


LABEL_KINDS: dict[str, LabelKind] = {
    kind.name: kind
    for kind in (
        LabelKind(name="energy", per="structure", shape=(), dimension="energy"),
        LabelKind(name="forces", per="atom", shape=(3,), dimension="force"),
        LabelKind(name="stress", per="structure", shape=(3, 3), dimension="stress"),
        LabelKind(name="dipole", per="structure", shape=(3,), dimension="dipole"),
        LabelKind(name="charges", per="atom", shape=(), dimension="charge"),
    )
}

# Source quantities stored as a label kind after a sign change: a gradient is minus the forces.
LABEL_SIGN: dict[str, tuple[str, float]] = {"gradient": ("forces", -1.0)}


def label_kind(name: str) -> tuple[LabelKind, float]:
    """The label kind a source quantity is stored as, and the sign applied on the way in."""
    kind_name, sign = LABEL_SIGN.get(name, (name, 1.0))
    if kind_name not in LABEL_KINDS:
        known = ", ".join([*LABEL_KINDS, *LABEL_SIGN])
        raise ValueError(f"unknown label {name!r}; known labels: {known}")
    return LABEL_KINDS[kind_name], sign


class LabelSummary(_Model):
    count: int = Field(ge=0, description="Number of structures that have this label.")
    unit: str = Field(description="Canonical unit of the stored values.")
    source_units: list[str] = Field(description="Units the sources gave, before conversion.")


class LevelSummary(_Model):
    name: str
    labels: dict[str, LabelSummary]
    atom_energies: dict[str, float] = Field(
        default_factory=dict,
        description="Isolated-atom energies (eV) by chemical symbol, where a source gives them.",
    )


class InputFile(_Model):
    path: str
    sha256: str
    size: int
    reader: str


class Provenance(_Model):
    mfkit_version: str
    created: str = Field(description="UTC time of writing, ISO 8601.")
    inputs: list[InputFile]
    link_by: str | None = Field(None, description="'id:KEY' or 'geometry', when sources merged.")
    geometry_tolerance: float = Field(description="Å; the structure hash rounds to this.")


class LmdbInfo(_Model):
    layout_version: int
    shards: list[str]
    checksum: str = Field(description="Store checksum the shards were packed from.")


class DatasetManifest(_Model):
    """``manifest.json``: what a store holds, in which units, from where, with its checksums."""

    format_version: str = FORMAT_VERSION
    name: str
    source: str | None = None
    licence: str | None = None
    citation: str | None = None
    n_structures: int = Field(ge=0)
    n_atoms: int = Field(ge=0)
    elements: list[str]
    levels: dict[str, LevelSummary]
    statistics: dict[str, dict] = Field(default_factory=dict)
    checksums: dict[str, str] = Field(description="sha256 of each immutable array, by path.")
    checksum: str = Field(description="sha256 over all immutable arrays: the store's identity.")
    provenance: Provenance
    lmdb: LmdbInfo | None = None
    splits: list[str] = Field(default_factory=list)

    @field_validator("levels")
    @classmethod
    def _level_ids(cls, levels: dict[str, LevelSummary]) -> dict[str, LevelSummary]:
        for level_id in levels:
            if not re.match(LEVEL_ID_PATTERN, level_id):
                raise ValueError(f"level id {level_id!r} does not match {LEVEL_ID_PATTERN}")
        return levels


class FormatVersionError(ValueError):
    """A store written by a newer major format version than this mfkit understands."""


def check_format_version(version: str, path: str | Path) -> None:
    """Refuse a store whose major format version is newer than the one this mfkit writes."""
    major = int(version.split(".")[0])
    if major > int(FORMAT_VERSION.split(".")[0]):
        raise FormatVersionError(
            f"{path}: store format version {version} is newer than this mfkit understands "
            f"({FORMAT_VERSION}); upgrade mfkit to read it"
        )


class LevelRegistry(_Model):
    """``catalogs/levels.yaml``: the levels of theory mfkit knows."""

    levels: list[LevelOfTheory]


SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "manifest": DatasetManifest,
    "levels": LevelRegistry,
}


def schema_files() -> dict[str, str]:
    """File name -> JSON text of every generated schema."""
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2, ensure_ascii=False)
        + "\n"
        for name, model in SCHEMA_MODELS.items()
    }


def write_schemas(directory: Path) -> None:
    for filename, text in schema_files().items():
        (directory / filename).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write_schemas(Path(__file__).resolve().parent.parent / "schemas")
