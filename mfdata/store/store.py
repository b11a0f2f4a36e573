"""A store on disk: ``manifest.json`` + a Zarr v3 group + optional LMDB shards.

Writes are atomic: everything is written under a hidden temporary name beside the target and
renamed into place when complete, so an interrupted conversion never leaves a directory at the
target path, and a directory without a complete manifest is never accepted as a store.
:class:`Store` is an opened store; its parts have their own modules (``manifest``,
``zarr_store``, ``lmdb_store``), and ``verify`` checks them together.
"""

from __future__ import annotations

import datetime
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from mfdata.files import file_sha256, kill_point, writing
from mfdata.index import StructureIndex
from mfdata.levels import resolve_level
from mfdata.linking import geometry_hash
from mfdata.records import DEFAULT_GEOMETRY_TOLERANCE, InvalidDataError, Source, Structures
from mfdata.schema import (
    LABEL_KINDS,
    DatasetManifest,
    InputFile,
    LabellingRun,
    LabelSummary,
    LevelSummary,
    Provenance,
)
from mfdata.store.lock import claimed_directory, remove_unclaimed
from mfdata.store.manifest import (
    MANIFEST,
    PARTIAL_MARK,
    PARTIAL_NAME,
    read_manifest,
    write_manifest,
)
from mfdata.store.verify import verify_store
from mfdata.store.zarr_store import (
    ZARR_DIR,
    Precision,
    array_checksum,
    check_shape,
    combined_checksum,
    read_group,
    write_group,
)


def mfkit_version() -> str:
    try:
        return version("mfkit")
    except PackageNotFoundError:
        return "unknown"


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """A temporary directory beside ``target`` that becomes ``target`` when the block succeeds.

    The temporary name is hidden and marked ``.partial-``: a conversion killed before the rename
    (SIGKILL, power loss) leaves only that, and :class:`Store` refuses it. The writer holds a lock
    on it (:func:`~mfdata.store.lock.claimed_directory`), so the next write to any name in the
    same directory removes what killed writers left there (:func:`remove_abandoned`), and never
    what a live one is writing.
    """
    if os.path.lexists(target):
        raise FileExistsError(f"{target}: already exists; choose another output path")
    with writing(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(target.parent)
    with claimed_directory(target.parent, f".{target.name}{PARTIAL_MARK}") as tmp:
        try:
            yield tmp
            kill_point("directory:written")
            try:
                os.rename(tmp, target)
            except OSError as exc:
                if os.path.lexists(target):  # appeared while we wrote: never merge into it
                    raise FileExistsError(
                        f"{target}: was created by someone else during the conversion; nothing "
                        "written"
                    ) from exc
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def remove_abandoned(directory: Path) -> list[Path]:
    """Remove the temporary directories of :func:`atomic_directory` in ``directory`` whose
    writer died (nobody holds them); return them."""
    found = [p for p in directory.iterdir() if PARTIAL_NAME.match(p.name)]
    return remove_unclaimed(p for p in found if p.is_dir() and not p.is_symlink())


def _level_summaries(s: Structures, sources: list[Source]) -> dict[str, LevelSummary]:
    levels: dict[str, LevelSummary] = {}
    for level, kind in sorted(s.labels):
        units = sorted(
            {
                src.source_units[key]
                for src in sources
                for key in [(level, kind)]
                if key in src.source_units
            }
        )
        summary = levels.setdefault(level, _level_summary(level))
        summary.labels[kind] = LabelSummary(
            count=int(s.labels[(level, kind)].present.sum()),
            unit=LABEL_KINDS[kind].unit,
            source_units=units,
        )
    for src in sources:
        for level, energies in src.atom_energies.items():
            summary = levels.setdefault(level, _level_summary(level))
            for symbol, energy in energies.items():
                old = summary.atom_energies.setdefault(symbol, energy)
                if not np.isclose(old, energy, rtol=0, atol=1e-6):
                    raise InvalidDataError(
                        f"{src.path}: isolated-atom energy of {symbol} at {level} is {energy} eV, "
                        f"but another source gives {old} eV"
                    )
    return levels


def _level_summary(level: str) -> LevelSummary:
    """An empty summary of ``level`` carrying its full definition: the store describes itself."""
    definition = resolve_level(level)
    return LevelSummary(name=definition.name, labels={}, definition=definition)


def write_store(
    out: str | Path,
    structures: Structures,
    sources: list[Source],
    *,
    name: str | None = None,
    link_by: str | None = None,
    tolerance: float = DEFAULT_GEOMETRY_TOLERANCE,
    precision: Precision = "lossless",
    licence: str | None = None,
    citation: str | None = None,
    description: str | None = None,
    labelling: list[LabellingRun] = (),
    implausible_allowed: list[str] = (),
) -> DatasetManifest:
    """Write ``structures`` as a new store at ``out`` (which must not exist), atomically.

    ``labelling`` records the ``mfdata label`` runs that computed the labels (kept by merges);
    ``implausible_allowed`` the plausibility findings the user overrode.
    """
    out = Path(out)
    inputs = [
        InputFile(
            path=src.path,
            sha256=file_sha256(src.path),
            size=os.path.getsize(src.path),
            reader=src.reader,
            unread_keys=sorted(src.unread_keys),
        )
        for src in sources  # in order: a structure's ``source`` indexes this list
    ]
    levels = _level_summaries(structures, sources)
    with atomic_directory(out) as tmp:
        hashes = geometry_hash(structures, tolerance)
        checksums = write_group(str(tmp / ZARR_DIR), structures, hashes, precision)
        index = StructureIndex.from_structures(structures, hashes).write(str(tmp / ZARR_DIR))
        checksums.update({name: array_checksum(array) for name, array in index.items()})
        elements = np.unique(structures.numbers)
        manifest = DatasetManifest(
            name=name or out.name,
            source=description,
            licence=licence,
            citation=citation,
            n_structures=structures.n_structures,
            n_atoms=len(structures.numbers),
            elements=[chemical_symbols[z] for z in elements],
            levels=levels,
            checksums=checksums,
            checksum=combined_checksum(checksums),
            provenance=Provenance(
                mfkit_version=mfkit_version(),
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                inputs=inputs,
                link_by=link_by,
                geometry_tolerance=tolerance,
                labelling=list(labelling),
                implausible_allowed=list(implausible_allowed),
            ),
        )
        write_manifest(tmp, manifest)
    return manifest


def store_as_source(store: Store) -> Source:
    """A store read back as a source, to merge it with others; its manifest is the input file."""
    structures, _ = store.read()
    return Source(
        path=str(store.path / MANIFEST),
        reader="mfkit-store",
        structures=structures,
        source_units={
            (level, kind): ", ".join(label.source_units)
            for level, summary in store.manifest.levels.items()
            for kind, label in summary.labels.items()
        },
        atom_energies={
            level: dict(summary.atom_energies)
            for level, summary in store.manifest.levels.items()
            if summary.atom_energies
        },
        describe=lambda i: f"{store.path}: structure {i}",
    )


class Store:
    """An opened store: its manifest, and its arrays on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        check_shape(self.zarr_path, self.manifest, self.path)

    @property
    def zarr_path(self) -> str:
        return str(self.path / ZARR_DIR)

    @property
    def levels(self) -> list[str]:
        return list(self.manifest.levels)

    def read(self) -> tuple[Structures, np.ndarray]:
        """All structures with their labels, and their geometry hashes, checked against the
        manifest's checksums (a corrupted store is refused, never read)."""
        return read_group(self.zarr_path, self.manifest, self.path)

    def verify(self) -> list[str]:
        """Problems found by recomputing every checksum; empty when the store is intact."""
        return verify_store(self.path, self.manifest)

    def info(self) -> dict:
        """The summary ``mfdata info --json`` prints."""
        m = self.manifest
        return {
            "name": m.name,
            "path": str(self.path),
            "format_version": m.format_version,
            "n_structures": m.n_structures,
            "n_atoms": m.n_atoms,
            "elements": m.elements,
            "levels": {
                level: {kind: summary.count for kind, summary in s.labels.items()}
                for level, s in m.levels.items()
            },
            "units": {
                level: {kind: summary.unit for kind, summary in s.labels.items()}
                for level, s in m.levels.items()
            },
            "source_units": {
                level: {kind: summary.source_units for kind, summary in s.labels.items()}
                for level, s in m.levels.items()
            },
            "atom_energies": {
                level: s.atom_energies for level, s in m.levels.items() if s.atom_energies
            },
            "checksum": m.checksum,
            "lmdb_shards": len(m.lmdb.shards) if m.lmdb else 0,
            "splits": m.splits,
        }
