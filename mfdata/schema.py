"""The schema layer: pydantic models, the single source of truth for every file mfkit writes.

JSON Schema files in ``schemas/`` are generated from these models (``python -m mfdata.schema``);
a test fails when they drift.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mfdata.errors import MfkitError, UsageError
from mfdata.units import CANONICAL_UNITS

FORMAT_VERSION = "1.1"  # 1.1: manifest_checksum, split_checksums
LEVEL_ID_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
# Store and split names: they become directory names and one line of `mfdata list`.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
# Paths of arrays in a store's Zarr group: lowercase segments, never "." or "..".
ARRAY_PATH_PATTERN = r"^[a-z0-9_][a-z0-9_-]*(/[a-z0-9_][a-z0-9_-]*)*$"
# LMDB shards: inside the store's lmdb/ (in one packing's directory since mfkit 1.1), by name
SHARD_PATTERN = r"^lmdb/([0-9a-f]{8}/)?shard-[0-9]{5}\.lmdb$"
MAX_ROWS = 1 << 40  # bound on n_structures and n_atoms, before they are checked against arrays
ElementSymbol = Annotated[str, Field(pattern=r"^[A-Z][a-z]?$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


PYSCF_METHODS = ("hf", "dft", "mp2", "ccsd(t)")
TBLITE_METHODS = ("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB")


class ComputeRecipe(_Model):
    """How ``mfdata label`` computes a level itself: the program and every setting it is given.

    Settings not named here are the program's defaults, fixed by the program version that the
    labelled store's provenance records. A restricted reference is used for singlets and an
    unrestricted one otherwise (PySCF's ``scf.HF``/``dft.KS`` choose by the spin).
    """

    program: Literal["tblite", "pyscf"]
    method: str = Field(
        description=f"tblite: {', '.join(TBLITE_METHODS)}; pyscf: {', '.join(PYSCF_METHODS)}."
    )
    xc: str | None = Field(None, description="pyscf dft: the libxc functional, e.g. 'wb97x'.")
    basis: str | None = Field(None, description="pyscf: the basis set name PySCF knows.")
    cartesian: bool = Field(
        False, description="pyscf: Cartesian d/f functions (6D), as Gaussian uses for 6-31G(d)."
    )
    frozen_core: bool = Field(
        False, description="pyscf mp2/ccsd(t): freeze the core orbitals (pyscf chemcore)."
    )
    grid_level: int | None = Field(None, ge=0, le=9, description="pyscf dft: grids.level.")
    conv_tol: float | None = Field(
        None, gt=0, description="pyscf: SCF energy convergence, Hartree (default 1e-9)."
    )
    accuracy: float | None = Field(None, gt=0, description="tblite: accuracy (default 1.0).")
    labels: list[Literal["energy", "forces"]] = Field(
        min_length=1, description="Labels this recipe computes (forces: analytic gradients)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ComputeRecipe:
        pyscf_only = ("xc", "basis", "grid_level", "conv_tol")
        if self.program == "tblite":
            if self.method not in TBLITE_METHODS:
                raise ValueError(f"tblite method {self.method!r}; known: {TBLITE_METHODS}")
            if any(getattr(self, f) is not None for f in pyscf_only) or self.frozen_core:
                raise ValueError(f"tblite takes none of {pyscf_only}, frozen_core")
            return self
        if self.method not in PYSCF_METHODS:
            raise ValueError(f"pyscf method {self.method!r}; known: {PYSCF_METHODS}")
        if self.basis is None:
            raise ValueError("pyscf needs a basis")
        if (self.xc is None) != (self.method != "dft"):
            raise ValueError("pyscf: xc is required for dft and only for dft")
        if self.accuracy is not None:
            raise ValueError("accuracy is a tblite setting")
        if self.method == "ccsd(t)" and "forces" in self.labels:
            raise ValueError("pyscf has no analytic CCSD(T) gradient: energy only")
        return self


class PublishedAtomEnergies(_Model):
    """Ground-state energies of isolated atoms at one level, as a source published them: what
    statistics subtract before fitting anything, when a store has no isolated-atom frames."""

    unit: str = Field(description="Energy unit of the values as published, e.g. Hartree.")
    values: dict[ElementSymbol, float] = Field(min_length=1)
    source: str = Field(description="Where they were published: a reference or a URL.")


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
    compute: ComputeRecipe | None = Field(
        None, description="How mfdata label computes this level; absent: mfkit cannot."
    )
    atom_energies: PublishedAtomEnergies | None = Field(
        None,
        exclude_if=lambda value: value is None,  # absent when unknown: older manifests keep theirs
        description="Published isolated-atom energies at this level, with their source.",
    )


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
        # a release with several charge models keeps each under its own name; ``charges`` is
        # the one model a release has (or its MBIS charges), which the loader's frames carry
        LabelKind(name="cm5_charges", per="atom", shape=(), dimension="charge"),
        LabelKind(name="hirshfeld_charges", per="atom", shape=(), dimension="charge"),
    )
}

# Source quantities stored as a label kind after a sign change: a gradient is minus the forces;
# a virial is minus the stress times the cell volume (ASE: virial = -volume * stress).
LABEL_SIGN: dict[str, tuple[str, float]] = {
    "gradient": ("forces", -1.0),
    "virial": ("stress", -1.0),
}
# Source quantities that are an energy per cell and become their label kind divided by the cell
# volume (so they exist only for periodic cells).
PER_VOLUME: frozenset[str] = frozenset({"virial"})


# the names ``--map KEY=LEVEL:LABEL`` takes
SOURCE_LABELS = ", ".join([*LABEL_KINDS, *LABEL_SIGN])


def label_kind(name: str) -> tuple[LabelKind, float]:
    """The label kind a source quantity is stored as, and the sign applied on the way in."""
    kind_name, sign = LABEL_SIGN.get(name, (name, 1.0))
    if kind_name not in LABEL_KINDS:
        raise UsageError(f"unknown label {name!r}; known labels: {SOURCE_LABELS}")
    return LABEL_KINDS[kind_name], sign


class LabelSummary(_Model):
    count: int = Field(ge=0, description="Number of structures that have this label.")
    unit: str = Field(description="Canonical unit of the stored values.")
    source_units: list[str] = Field(description="Units the sources gave, before conversion.")


class LevelSummary(_Model):
    name: str
    labels: dict[str, LabelSummary]
    definition: LevelOfTheory | None = Field(
        None,
        description="The level's full definition, so the store is read on a machine whose level "
        "registry lacks it (absent in stores written before mfkit recorded it).",
    )
    atom_energies: dict[str, float] = Field(
        default_factory=dict,
        description="Isolated-atom energies (eV) by chemical symbol, where a source gives them.",
    )


class InputFile(_Model):
    path: str
    sha256: str
    size: int
    reader: str
    unread_keys: list[str] = Field(
        default_factory=list,
        exclude_if=lambda keys: not keys,  # absent when empty: older manifests keep their digest
        description="Numeric properties the file holds that were not stored (map them to store).",
    )


class LabellingRun(_Model):
    """One ``mfdata label`` run: which labels at which level, computed how and by what program."""

    level: str = Field(pattern=LEVEL_ID_PATTERN)
    labels: list[str]
    recipe: ComputeRecipe
    program_version: str = Field(description="Version of the program (tblite or pyscf).")
    n_structures: int = Field(ge=0)
    subset: tuple[int, int] | None = Field(
        None, description="(n, seed): a prefix of one seeded permutation of the source."
    )
    charge: int | None = Field(None, description="--charge given by the user, if any.")
    multiplicity: int | None = Field(None, description="--multiplicity given, if any.")
    seconds_per_structure: float = Field(ge=0, description="Mean wall time of one calculation.")
    scheduler: str | None = Field(
        None,
        description="Where the calculations ran: 'local:N' (a Dask LocalCluster of N worker "
        "processes) or the address of an existing Dask scheduler; several, comma-separated, when "
        "a resumed run used another. The journal in the store names each structure's worker.",
    )


class Provenance(_Model):
    mfkit_version: str
    created: str = Field(description="UTC time of writing, ISO 8601.")
    inputs: list[InputFile]
    link_by: str | None = Field(None, description="'id:KEY' or 'geometry', when sources merged.")
    geometry_tolerance: float = Field(description="Å; the structure hash rounds to this.")
    labelling: list[LabellingRun] = Field(
        default_factory=list, description="mfdata label runs that computed the labels, if any."
    )
    implausible_allowed: list[str] = Field(
        default_factory=list,
        description="Plausibility findings (values implausible for their stated unit) that the "
        "user overrode with --allow-implausible; empty when every check passed.",
    )


class LmdbInfo(_Model):
    layout_version: int
    shards: list[Annotated[str, Field(pattern=SHARD_PATTERN)]]
    checksum: str = Field(description="Store checksum the shards were packed from.")


ReferenceMethod = Literal["isolated_atoms", "least_squares", "minimum_norm"]


class LevelStatistics(_Model):
    """What one head is initialised from: per-type shift (reference energies) and scale."""

    n_energies: int = Field(0, ge=0, description="Structures with an energy at this level.")
    reference_method: ReferenceMethod | None = Field(
        None,
        description="isolated_atoms: the store's isolated-atom energies; least_squares: fitted on "
        "composition; minimum_norm: compositions do not determine them (rank < n_elements), so "
        "one common per-atom offset plus the minimum-norm correction the compositions determine.",
    )
    reference_energies: dict[str, float] = Field(
        default_factory=dict, description="eV per atom by chemical symbol."
    )
    reference_source: str | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="With isolated_atoms: where the energies come from (the store's isolated-atom "
        "frames, or the publication the level registry names).",
    )
    rank: int | None = Field(None, description="Rank of the composition matrix (energies).")
    n_elements: int | None = Field(None, description="Elements in the structures with energies.")
    energy_per_atom_mean: float | None = Field(
        None, description="eV/atom: mean of (E - Σ counts·reference) / n_atoms."
    )
    energy_per_atom_std: float | None = Field(None, description="eV/atom: its standard deviation.")
    n_forces: int = Field(0, ge=0, description="Structures with forces at this level.")
    force_rms: float | None = Field(None, description="eV/Å: RMS over all force components.")
    warnings: list[str] = Field(default_factory=list)


class LevelAlignment(_Model):
    """How two levels differ on the structures labelled at both: E_to ≈ E_from + Σ counts·offset."""

    from_level: str
    to_level: str
    n_shared: int = Field(ge=0, description="Structures with an energy at both levels.")
    method: Literal["least_squares", "minimum_norm"]
    rank: int = Field(ge=0, description="Rank of the shared structures' composition matrix.")
    n_elements: int = Field(ge=0)
    offsets: dict[str, float] = Field(description="eV per atom by chemical symbol.")
    residual_rms_per_structure: float = Field(description="eV, after removing the offsets.")
    residual_mae_per_structure: float = Field(description="eV.")
    residual_rms_per_atom: float = Field(description="eV/atom.")
    residual_mae_per_atom: float = Field(description="eV/atom.")
    warnings: list[str] = Field(default_factory=list)


class StoreStatistics(_Model):
    """``mfdata stats``: per-level statistics and cross-level alignments (not checksummed)."""

    levels: dict[str, LevelStatistics] = Field(default_factory=dict)
    alignments: list[LevelAlignment] = Field(default_factory=list)


class DatasetManifest(_Model):
    """``manifest.json``: what a store holds, in which units, from where, with its checksums."""

    format_version: str = FORMAT_VERSION
    name: str
    source: str | None = None
    licence: str | None = None
    citation: str | None = None
    n_structures: int = Field(ge=0, le=MAX_ROWS)
    n_atoms: int = Field(ge=0, le=MAX_ROWS)
    elements: list[ElementSymbol]
    levels: dict[str, LevelSummary]
    statistics: StoreStatistics = Field(
        default_factory=StoreStatistics, description="Written by mfdata stats; empty until then."
    )
    checksums: dict[Annotated[str, Field(pattern=ARRAY_PATH_PATTERN)], str] = Field(
        description="sha256 of each immutable array, by path."
    )
    checksum: str = Field(description="sha256 over all immutable arrays: the store's identity.")
    provenance: Provenance
    lmdb: LmdbInfo | None = None
    splits: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(default_factory=list)
    split_checksums: dict[str, str] = Field(
        default_factory=dict,
        description="sha256 of each saved split (its arrays and info), by name; not part of the "
        "store's identity. Splits saved by mfkit before 1.1 have none.",
    )
    manifest_checksum: str | None = Field(
        None,
        description="sha256 of the canonical JSON of every other field: a changed byte anywhere "
        "in the manifest is caught when it is read. Absent in manifests before 1.1.",
    )

    @field_validator("levels")
    @classmethod
    def _level_ids(cls, levels: dict[str, LevelSummary]) -> dict[str, LevelSummary]:
        for level_id in levels:
            if not re.match(LEVEL_ID_PATTERN, level_id):
                raise ValueError(f"level id {level_id!r} does not match {LEVEL_ID_PATTERN}")
        return levels

    @model_validator(mode="after")
    def _split_checksums_listed(self) -> DatasetManifest:
        unlisted = sorted(set(self.split_checksums) - set(self.splits))
        if unlisted or len(set(self.splits)) != len(self.splits):
            raise ValueError(f"split checksums {unlisted} or duplicate names in splits")
        return self


def check_name(name: str, what: str) -> str:
    """``name`` when it is a safe store or split name (:data:`NAME_PATTERN`), else a UsageError."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise UsageError(
            f"{what} {name!r}: use up to 128 letters, digits and '.', '_', '+', '-', starting "
            "with a letter or digit"
        )
    return name


class FormatVersionError(MfkitError, ValueError):
    """A store written by a newer major format version than this mfkit understands."""


def check_format_version(version: str, path: str | Path) -> None:
    """Refuse a store whose major format version is newer than the one this mfkit writes."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise FormatVersionError(
            f"{path}: format_version {version!r} is not a version (expected MAJOR.MINOR)"
        ) from None
    if major > int(FORMAT_VERSION.split(".")[0]):
        raise FormatVersionError(
            f"{path}: store format version {version} is newer than this mfkit understands "
            f"({FORMAT_VERSION}); upgrade mfkit to read it"
        )


class QuerySpec(_Model):
    """What ``mfdata query`` asked for; levels as ids."""

    has: list[tuple[str, str]] = Field(default_factory=list, description="(level id, label) pairs.")
    elements: list[str] | None = Field(None, description="Structures with only these elements.")
    min_atoms: int | None = None
    max_atoms: int | None = None
    charge: int | None = None
    source: str | None = Field(None, description="Input file (path or name) or store name.")


class SelectedStore(_Model):
    name: str
    path: str
    checksum: str = Field(description="The store checksum the selection was made on.")
    n_structures: int
    n_selected: int
    indices: str = Field(description="Sorted structure indices: little-endian int64, zlib, base64.")


class Selection(_Model):
    """A saved query result: structure indices per store, the query, and the stores' checksums."""

    format_version: str = FORMAT_VERSION
    created: str
    query: QuerySpec
    stores: list[SelectedStore]


class SplitInfo(_Model):
    """A named split saved in a store (``splits/NAME``): how it was made and its part sizes."""

    name: str = Field(pattern=NAME_PATTERN)
    by: Literal["structure", "group", "formula"]
    fractions: list[float]
    parts: list[str]
    sizes: dict[str, int]
    seed: int
    subsets: list[int] = Field(default_factory=list, description="Nested training-subset sizes.")


class LevelRegistry(_Model):
    """``catalogs/levels.yaml``: the levels of theory mfkit knows."""

    levels: list[LevelOfTheory]


UNKNOWN = "unknown"
Unknown = Literal["unknown"]
LabelName = Literal[tuple(LABEL_KINDS)]  # type: ignore[valid-type]
Count = Annotated[int, Field(ge=0)] | Unknown
LevelId = Annotated[str, Field(pattern=LEVEL_ID_PATTERN)]


class CatalogCitation(_Model):
    """A paper to cite when using a dataset."""

    text: str = Field(description="Authors, title, journal or preprint, year.")
    doi: str = Field(
        pattern=r"^(10\.\d{4,9}/\S+|unknown)$",
        description="The paper's DOI, or 'unknown' where it could not be checked.",
    )


class CatalogLevel(_Model):
    """The labels a public dataset has at one level of theory."""

    labels: dict[LabelName, Count] = Field(
        description="Label -> number of structures that have it, or 'unknown'."
    )
    notes: str | None = None


class CatalogReader(_Model):
    """How ``read_source`` converts the dataset's files: its format name and options."""

    format: str = Field(description="read_source format name (mfdata.readers.FORMATS).")
    level: str | None = Field(
        None, description="Level of ASE's energy/forces/stress keys, or of a single-level file."
    )
    map: list[str] = Field(
        default_factory=list, description="KEY=LEVEL:LABEL for keys other than ASE's standard ones."
    )
    units: dict[str, str] = Field(
        default_factory=dict, description="Unit by source key, for keys without a standard unit."
    )
    pbc: bool | None = Field(None, description="Override periodicity (false: molecules).")
    isolated_atoms: str | None = Field(
        None, pattern=r"^[^=]+=.+$", description="KEY=VALUE that marks isolated-atom frames."
    )
    isolated_atoms_file: str | None = Field(
        None, description="Isolated-atom file the release ships beside the data; used if present."
    )
    group_key: str | None = Field(None, description="Info key naming a structure's molecule.")


# A downloaded file's local name: no path separators, no leading dot, nothing a shell expands.
FILE_NAME_PATTERN = r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}$"
# Names a download directory keeps for itself: the record of downloads, and partial transfers.
DOWNLOAD_LOG = "downloads.json"
PART_SUFFIX = ".part"
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class CatalogFile(_Model):
    """One file of a public dataset that ``mfdata download`` fetches, and what it must be."""

    name: str = Field(
        pattern=FILE_NAME_PATTERN,
        description="Local file name (no path separators, no leading dot): what the reader and "
        "the isolated_atoms_file name refer to.",
    )
    url: str = Field(pattern=r"^https?://\S+$", description="Where the file is served.")
    sha256: Sha256 | Unknown = Field(
        description="Hex sha256 of the file's bytes, or 'unknown' where it could not be checked."
    )
    size: Count = Field(description="Size in bytes, or 'unknown'.")
    notes: str | None = Field(None, description="Where the URL, size and checksum come from.")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == DOWNLOAD_LOG or name.endswith(PART_SUFFIX):
            raise ValueError(f"{DOWNLOAD_LOG} and names ending {PART_SUFFIX} are mfkit's own")
        return name


class DownloadedFile(_Model):
    """A file ``mfdata download`` fetched and checked: what it was when it was renamed into place,
    so that a file whose catalog checksum is unknown can be checked later and pinned."""

    name: str = Field(pattern=FILE_NAME_PATTERN)
    url: str = Field(pattern=r"^https?://\S+$")
    size: int = Field(ge=0, description="Bytes.")
    sha256: Sha256
    downloaded: datetime = Field(description="When it was checked and renamed into place.")


class DownloadLog(_Model):
    """``DIR/downloads.json``: the files of one catalog entry downloaded into DIR."""

    entry: str = Field(pattern=LEVEL_ID_PATTERN, description="The catalog entry's name.")
    files: list[DownloadedFile] = Field(default_factory=list)


class CatalogEntry(_Model):
    """``catalogs/<name>.yaml``: one public dataset, what it holds, and how mfkit converts it.

    Facts that could not be checked are ``unknown``, never guessed.
    """

    name: str = Field(pattern=LEVEL_ID_PATTERN, description="Catalog id; the file is NAME.yaml.")
    title: str = Field(description="The dataset's usual name, e.g. 'ANI-1x'.")
    aliases: list[str] = Field(default_factory=list, description="Other names that find it.")
    description: str
    url: str = Field(pattern=r"^(https?://\S+|unknown)$", description="Where to get it.")
    licence: str = Field(description="Licence of the data, or 'unknown'.")
    citation: list[CatalogCitation] = Field(min_length=1)
    size: Count = Field(description="Number of structures, or 'unknown'.")
    elements: list[ElementSymbol] | Unknown
    units: dict[str, str] = Field(
        description="Unit of each quantity as the source files give it (before conversion)."
    )
    levels: dict[LevelId, CatalogLevel] = Field(
        min_length=1, description="Level id (from catalogs/levels.yaml) -> labels at that level."
    )
    reader: CatalogReader | None = Field(
        description="How mfkit converts the files; null where no reader exists yet."
    )
    format: str | None = Field(None, description="The files' format; required when reader is null.")
    files: list[CatalogFile] = Field(
        default_factory=list,
        description="The files 'mfdata download' fetches; empty where no download URL could be "
        "stated.",
    )
    notes: str | None = None

    @model_validator(mode="after")
    def _format_without_reader(self) -> CatalogEntry:
        if self.reader is None and not self.format:
            raise ValueError("reader is null: describe the files in 'format'")
        return self

    @model_validator(mode="after")
    def _distinct_file_names(self) -> CatalogEntry:
        names = [f.name for f in self.files]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"files: {', '.join(twice)} listed more than once")
        return self


SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "manifest": DatasetManifest,
    "levels": LevelRegistry,
    "catalog": CatalogEntry,
    "downloads": DownloadLog,
    "selection": Selection,
    "split": SplitInfo,
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
