"""A store on disk: ``manifest.json`` + a Zarr v3 group + optional LMDB shards.

Writes are atomic: everything is written under a hidden temporary name beside the target and
renamed into place when complete, so an interrupted conversion never leaves a directory at the
target path, and a directory without a complete manifest is never accepted as a store.
:class:`Store` is an opened store; its parts have their own modules (``manifest``,
``zarr_store``, ``lmdb_store``), and ``verify`` checks them together.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import zarr
from ase.data import chemical_symbols

from mfdata.files import file_sha256, kill_point, writing
from mfdata.index import MAX_LABEL_COLUMNS, element_masks, write_label_bits
from mfdata.levels import resolve_level
from mfdata.linking import geometry_hash
from mfdata.records import (
    DEFAULT_GEOMETRY_TOLERANCE,
    InvalidDataError,
    LabelKey,
    Source,
    Structures,
)
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
    StoreError,
    read_manifest,
    write_manifest,
)
from mfdata.store.verify import verify_store
from mfdata.store.zarr_store import (
    ZARR_DIR,
    GroupWriter,
    Precision,
    check_shape,
    combined_checksum,
    read_group,
    reading_zarr,
    structure_arrays,
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


def _level_summaries(counts: dict[LabelKey, int], sources: list[Source]) -> dict[str, LevelSummary]:
    levels: dict[str, LevelSummary] = {}
    for level, kind in sorted(counts):
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
            count=counts[(level, kind)],
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


def input_file(source: Source) -> InputFile:
    """The manifest's record of one input (its sha256 read in one pass): taken right after the
    file is read when converting file by file, while it is still in the page cache."""
    return InputFile(
        path=source.path,
        sha256=file_sha256(source.path),
        size=os.path.getsize(source.path),
        reader=source.reader,
        unread_keys=sorted(source.unread_keys),
    )


class StoreWriter:
    """The arrays of a new store, added a part at a time (all structures, or one input file's),
    and the running totals its manifest is made of: counts, elements, label counts, groups.

    Memory holds one part, the Zarr chunks not yet written and the totals, whatever the
    number of parts. Made by :func:`new_store`, inside the temporary directory.
    """

    def __init__(
        self, tmp: Path, precision: Precision, tolerance: float, rows: tuple[int, int] | None
    ):
        self.tmp = tmp
        self.tolerance = tolerance
        self.group = GroupWriter(str(tmp / ZARR_DIR), precision, rows)
        self.group_names: dict[str, int] = {}
        self.elements: set[int] = set()
        self.label_counts: dict[LabelKey, int] = {}
        self.manifest: DatasetManifest | None = None

    def add(self, s: Structures) -> None:
        """Append ``s`` (its ``source`` already set to its inputs' positions)."""
        for key, label in s.labels.items():
            self.label_counts[key] = self.label_counts.get(key, 0) + int(label.present.sum())
        if len(self.label_counts) > MAX_LABEL_COLUMNS:
            raise InvalidDataError(
                f"{len(self.label_counts)} (level, label) pairs; a store's index holds at most "
                f"{MAX_LABEL_COLUMNS}"
            )
        self.elements.update(int(z) for z in np.unique(s.numbers))
        hashes = geometry_hash(s, self.tolerance)
        arrays = structure_arrays(self._with_store_groups(s), hashes)
        arrays["index/elements"] = element_masks(s.numbers, s.atom_start[:-1])
        self.group.append(arrays, s.n_structures, len(s.numbers))

    def _with_store_groups(self, s: Structures) -> Structures:
        """``s`` with its group indices into the store's group names (one group per name)."""
        for name in s.group_names:
            self.group_names.setdefault(name, len(self.group_names))
        store_index = np.array([self.group_names[n] for n in s.group_names], dtype=np.int32)
        return dataclasses.replace(s, group=store_index[s.group])

    def finish(
        self,
        sources: list[Source],
        *,
        inputs: list[InputFile] | None = None,
        name: str,
        link_by: str | None = None,
        licence: str | None = None,
        citation: str | None = None,
        description: str | None = None,
        labelling: list[LabellingRun] = (),
        implausible_allowed: list[str] = (),
    ) -> DatasetManifest:
        """Close the arrays, write the index's label bits and then the manifest, last.

        ``sources`` are every input in order (a structure's ``source`` indexes them; their
        structures are not used); ``inputs`` their records if taken already.
        """
        if self.group.n_structures == 0:
            raise InvalidDataError("no structures in any source (only isolated atoms)")
        levels = _level_summaries(self.label_counts, sources)
        columns = sorted(self.label_counts)
        checksums = self.group.close({"structures/group": {"names": list(self.group_names)}})
        checksums["index/labels"] = write_label_bits(str(self.tmp / ZARR_DIR), columns)
        self.manifest = DatasetManifest(
            name=name,
            source=description,
            licence=licence,
            citation=citation,
            n_structures=self.group.n_structures,
            n_atoms=self.group.n_atoms,
            elements=[chemical_symbols[z] for z in sorted(self.elements)],
            levels=levels,
            checksums=checksums,
            checksum=combined_checksum(checksums),
            provenance=Provenance(
                mfkit_version=mfkit_version(),
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                inputs=inputs if inputs is not None else [input_file(s) for s in sources],
                link_by=link_by,
                geometry_tolerance=self.tolerance,
                labelling=list(labelling),
                implausible_allowed=list(implausible_allowed),
            ),
        )
        write_manifest(self.tmp, self.manifest)
        return self.manifest


@contextmanager
def new_store(
    out: str | Path,
    *,
    precision: Precision = "lossless",
    tolerance: float = DEFAULT_GEOMETRY_TOLERANCE,
    rows: tuple[int, int] | None = None,
) -> Iterator[StoreWriter]:
    """A :class:`StoreWriter` for a new store at ``out`` (which must not exist), written in a
    temporary directory renamed into place when the block ends after
    :meth:`StoreWriter.finish`; any error in the block leaves nothing at ``out``.

    ``rows`` (structures, atoms), when known in advance, sizes the Zarr chunks.
    """
    out = Path(out)
    with atomic_directory(out) as tmp:
        writer = StoreWriter(tmp, precision, tolerance, rows)
        yield writer
        if writer.manifest is None:
            raise RuntimeError(f"{out}: store written without its manifest (finish not called)")


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
    """Write ``structures`` (all in memory: linked sources, a labelled or merged store) as a
    new store at ``out`` (which must not exist), atomically.

    ``labelling`` records the ``mfdata label`` runs that computed the labels (kept by merges);
    ``implausible_allowed`` the plausibility findings the user overrode.
    """
    rows = (structures.n_structures, len(structures.numbers))
    with new_store(out, precision=precision, tolerance=tolerance, rows=rows) as writer:
        writer.add(structures)
        return writer.finish(
            sources,
            name=name or Path(out).name,
            link_by=link_by,
            licence=licence,
            citation=citation,
            description=description,
            labelling=labelling,
            implausible_allowed=implausible_allowed,
        )


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
    def location(self) -> str:
        """Where the store is, absolute: what a selection records."""
        return str(self.path.resolve())

    @property
    def levels(self) -> list[str]:
        return list(self.manifest.levels)

    def open_group(self, sub: str) -> zarr.Group:
        """The Zarr group at ``sub`` in the store (``data.zarr``, ``splits/NAME``), read-only."""
        with reading_zarr(self.path):
            try:
                return zarr.open_group(str(self.path / sub), mode="r", zarr_format=3)
            except FileNotFoundError as exc:
                raise StoreError(f"{self.path}/{sub}: no Zarr group there") from exc

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
