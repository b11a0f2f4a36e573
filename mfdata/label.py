"""``mfdata label``: compute one level's labels for the structures of a file or store.

The level's registry entry carries the recipe (:class:`~mfdata.schema.ComputeRecipe`), so the
stored level is exactly what was computed. Everything that can be refused is refused before any
calculation: a level without a recipe, a label it cannot compute, an existing output, a structure
whose charge or multiplicity nobody stated.

The calculations run on a Dask cluster (:mod:`mfdata.dask_cluster`: ``local:N`` processes, or an
existing cluster); their code is :mod:`mfdata.label_worker`. Resumable: each result is appended,
as one JSON line, to the journal ``OUT.journal.jsonl`` beside the output, by this process (the
Dask client) only, as its batch arrives, flushed and fsynced before the next. A kill of this
process loses at most the batches being computed (a partly written last line is dropped on
resume); a killed worker's batches are computed again on another by Dask. Rerunning the same
command computes only what the journal lacks, and refuses a journal written for another source,
level, recipe, subset or program version. When every structure is done the store is written
atomically and the journal moves into it (``labelling-journal.jsonl``): one line per
computation, with its wall time, process id, Dask worker and scheduler, so anyone can check that
none ran twice.

Charge and multiplicity are never guessed: they come from the source (extxyz ``info`` keys
``charge``/``total_charge`` and ``multiplicity``, as ``mfdata sample`` writes them, or a store's
charges and non-zero multiplicities) or from ``--charge``/``--multiplicity``; a flag fills in what
the source leaves unstated and may not contradict what it states.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import ase.db
import ase.io
import numpy as np
from tqdm import tqdm

from mfdata.calculators import CalculationError, program_version
from mfdata.dask_cluster import TaskFailed, dask_client, in_batches, scheduler_spec
from mfdata.errors import UsageError
from mfdata.files import file_sha256
from mfdata.label_worker import compute_batch
from mfdata.levels import registry, resolve_level
from mfdata.readers import AseReader, detect_format, read_ase, reader_spec
from mfdata.records import InvalidDataError, Label, Source, validate
from mfdata.registry import check_name_free, open_store, register
from mfdata.schema import ComputeRecipe, DatasetManifest, LabellingRun, LevelOfTheory
from mfdata.store.store import store_as_source, write_store

JOURNAL_SUFFIX = ".journal.jsonl"
JOURNAL_IN_STORE = "labelling-journal.jsonl"
JOURNAL_FORMAT = 1
# Native units of both programs; ASE (tblite) and mfkit (PySCF) convert to eV and eV/Å.
PROGRAM_UNITS = {"energy": "Hartree", "forces": "Hartree/Bohr"}


@dataclass
class LabelPlan:
    """Everything a labelling run needs, checked: what to compute, for which structures."""

    source: Source
    level: LevelOfTheory
    recipe: ComputeRecipe
    labels: list[str]
    indices: np.ndarray  # sorted source indices to label
    charge: np.ndarray  # int, per source structure
    multiplicity: np.ndarray  # int, per source structure
    header: dict  # the journal's first line: what a resumed run must match
    out: Path
    name: str  # the store's name in the registry

    @property
    def journal(self) -> Path:
        return journal_path(self.out)


def journal_path(out: Path) -> Path:
    return out.parent / f"{out.name}{JOURNAL_SUFFIX}"


def subset_indices(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the first ``n`` of one seeded permutation: same seed, nested subsets."""
    if n is None:
        return np.arange(n_total)
    if not 1 <= n <= n_total:
        raise UsageError(f"--n {n}: the source has {n_total} structures")
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def read_geometries(path: str | Path) -> tuple[Source, str, np.ndarray, np.ndarray]:
    """The structures of an ASE-readable file or an mfkit store (path or registered name),
    without their labels.

    Returns the source, its identity (file sha256 or store checksum), and which structures
    state their charge and their multiplicity.
    """
    path = Path(path)
    if not path.is_file():
        store = open_store(path)
        source = store_as_source(store)
        s = source.structures
        s.labels = {}
        s.source[:] = 0
        source.source_units = {}
        source.atom_energies = {}
        return source, store.manifest.checksum, np.ones(s.n_structures, bool), s.multiplicity > 0
    spec = reader_spec(detect_format(str(path)))
    if not isinstance(spec.read, AseReader):
        raise InvalidDataError(
            f"{path}: a {spec.name} file; convert it first (mfdata convert) and label the store"
        )
    ase_format = spec.read.format
    source = read_ase(str(path), [], format=ase_format)
    validate(source)
    infos = (
        [row.key_value_pairs for row in ase.db.connect(str(path)).select()]
        if ase_format == "db"
        else [atoms.info for atoms in ase.io.iread(str(path), index=":", format=ase_format)]
    )
    charge_stated = np.array([_states_charge(info) for info in infos], dtype=bool)
    multiplicity_stated = source.structures.multiplicity > 0
    return source, file_sha256(path), charge_stated, multiplicity_stated


def _states_charge(info: dict) -> bool:
    """Whether ``info`` gives the total charge as the reader takes it (not partial charges)."""
    if info.get("total_charge") is not None:
        return True
    return info.get("charge") is not None and np.ndim(info["charge"]) == 0


def _resolve_spin(
    source: Source,
    stated: np.ndarray,
    values: np.ndarray,
    given: int | None,
    what: str,
    indices: np.ndarray,
) -> np.ndarray:
    """Per-structure charge or multiplicity: stated by the source, else the flag, else an error."""
    values = values.astype(np.int64)
    if given is not None:
        conflict = np.flatnonzero(stated & (values != given))
        if len(conflict):
            i = int(conflict[0])
            raise InvalidDataError(
                f"{source.path}: {source.describe(i)} states {what} {values[i]}, "
                f"but --{what} {given} was given"
            )
        values[~stated] = given
        stated = np.ones_like(stated)
    missing = indices[~stated[indices]]
    if len(missing):
        hint = "0 for neutral molecules" if what == "charge" else "1 for closed-shell singlets"
        raise InvalidDataError(
            f"{source.path}: {source.describe(int(missing[0]))} (and {len(missing) - 1} more) "
            f"does not state its {what}; pass --{what} ({hint}) if that holds for all of them"
        )
    return values


def plan_labelling(
    source_path: str | Path,
    level: str,
    out: str | Path,
    labels: list[str] | None = None,
    n: int | None = None,
    seed: int = 0,
    charge: int | None = None,
    multiplicity: int | None = None,
    name: str | None = None,
) -> LabelPlan:
    """Check everything and decide what to compute; no calculation runs here."""
    out = Path(out)
    lot = resolve_level(level)
    recipe = lot.compute
    if recipe is None:
        computable = [lvl.id for lvl in registry().values() if lvl.compute is not None]
        raise UsageError(
            f"level {lot.id} has no compute recipe in catalogs/levels.yaml, so mfkit cannot "
            f"compute it; levels it can compute: {', '.join(computable)}"
        )
    unknown = [label for label in labels or [] if label not in recipe.labels]
    if unknown:
        raise UsageError(
            f"--labels {','.join(unknown)}: the {lot.id} recipe computes only "
            f"{', '.join(recipe.labels)}"
        )
    labels = [label for label in recipe.labels if not labels or label in labels]  # recipe order
    if out.exists():
        raise FileExistsError(f"{out}: already exists (a finished output?); choose another --out")
    check_name_free(name or out.name, out)
    version = program_version(recipe.program)
    source, identity, charge_stated, multiplicity_stated = read_geometries(source_path)
    s = source.structures
    if s.pbc.any():
        i = int(np.flatnonzero(s.pbc.any(axis=1))[0])
        raise InvalidDataError(
            f"{source.path}: {source.describe(i)} is periodic; mfdata label computes molecules"
        )
    indices = subset_indices(s.n_structures, n, seed)
    charges = _resolve_spin(source, charge_stated, s.charge, charge, "charge", indices)
    mults = _resolve_spin(
        source, multiplicity_stated, s.multiplicity, multiplicity, "multiplicity", indices
    )
    electrons = np.add.reduceat(s.numbers.astype(np.int64), s.atom_start[:-1]) - charges
    bad = indices[((electrons[indices] + mults[indices] - 1) % 2 != 0) | (mults[indices] < 1)]
    if len(bad):
        i = int(bad[0])
        raise InvalidDataError(
            f"{source.path}: {source.describe(i)}: {electrons[i]} electrons cannot have "
            f"multiplicity {mults[i]}"
        )
    _check_elements(recipe, lot.id, s.numbers)
    header = {
        "journal": "mfdata label",
        "format": JOURNAL_FORMAT,
        "source": str(source_path),
        "source_identity": identity,
        "level": lot.id,
        "recipe": recipe.model_dump(mode="json"),
        "labels": labels,
        "subset": None if n is None else [n, seed],
        "charge": charge,
        "multiplicity": multiplicity,
        "program_version": version,
    }
    return LabelPlan(
        source, lot, recipe, labels, indices, charges, mults, header, out, name or out.name
    )


def _check_elements(recipe: ComputeRecipe, level_id: str, numbers: np.ndarray) -> None:
    """Refuse elements the method or basis set does not cover, before any calculation."""
    from ase.data import chemical_symbols

    present = np.unique(numbers)
    elements = [chemical_symbols[z] for z in present]
    if recipe.program == "tblite":
        too_heavy = [chemical_symbols[z] for z in present if z > 86]
        if too_heavy:
            raise InvalidDataError(f"{level_id}: GFN-xTB has no parameters for {too_heavy}")
        return
    from pyscf import gto

    for element in elements:
        try:
            gto.basis.load(recipe.basis, element)
        except Exception as exc:  # pyscf raises several types for a missing basis
            raise InvalidDataError(
                f"{level_id}: basis {recipe.basis} has no functions for {element}"
            ) from exc


def read_journal(path: Path) -> tuple[dict | None, dict[int, dict], int]:
    """The header, the results by structure index, and the length of the complete lines.

    Only newline-terminated lines count: a line cut off by a kill is dropped. A damaged line
    before the last is an error, never skipped.
    """
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")
    if not lines:
        return None, {}, 0
    try:
        header = json.loads(lines[0])
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError) as exc:  # hostile nesting too: one line, no traceback
        raise InvalidDataError(f"{path}: line 1 is not a journal header: {exc!r}") from exc
    results: dict[int, dict] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
            index = int(record["i"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise InvalidDataError(f"{path}: line {number} is damaged: {exc!r}") from exc
        if index in results:
            raise InvalidDataError(f"{path}: line {number}: structure {index} appears twice")
        results[index] = record
    return header, results, len(data) - len(tail)


def _open_journal(plan: LabelPlan) -> dict[int, dict]:
    """Results already journaled for this plan; a new journal (header only) if none."""
    path = plan.journal
    header, results, length = read_journal(path) if path.exists() else (None, {}, 0)
    if header is None:
        _append(path, [plan.header], truncate=0)
        return {}
    differ = [key for key in plan.header if key != "source" and header.get(key) != plan.header[key]]
    if differ:
        raise InvalidDataError(
            f"{path}: a journal from another labelling run (it differs in {', '.join(differ)}); "
            f"delete it to start again, or choose another --out"
        )
    stray = sorted(set(results) - set(plan.indices.tolist()))
    if stray:
        raise InvalidDataError(f"{path}: structure {stray[0]} is not in this run's subset")
    _append(path, [], truncate=length)
    return results


def _append(path: Path, records: list[dict], truncate: int | None = None) -> None:
    with open(path, "ab") as handle:
        if truncate is not None:
            handle.truncate(truncate)
        for record in records:
            handle.write((json.dumps(record) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def run_labelling(plan: LabelPlan, scheduler: str = "local:1") -> DatasetManifest:
    """Compute what the journal lacks on ``scheduler`` (:mod:`mfdata.dask_cluster`), journaling
    each result here, in the client, as it arrives; then write the store."""
    scheduler = scheduler_spec(scheduler=scheduler)
    done = _open_journal(plan)
    todo = [int(i) for i in plan.indices if int(i) not in done]
    if todo:
        s = plan.source.structures
        start = s.atom_start

        def payload(i: int) -> tuple:
            atoms = slice(start[i], start[i + 1])
            positions = np.asarray(s.positions[atoms], dtype=np.float64)
            return i, s.numbers[atoms], positions, int(plan.charge[i]), int(plan.multiplicity[i])

        constants = (plan.recipe.model_dump_json(), plan.header["program_version"], plan.labels)
        bar = tqdm(
            total=len(plan.indices),
            initial=len(done),
            desc=f"labelling {plan.level.id}",
            unit=" structures",
            mininterval=0.5,
            disable=None,
        )
        with dask_client(scheduler, at_most=len(todo)) as client, bar:
            batches = in_batches(
                client, compute_batch, constants, todo, payload, f"label-{plan.level.id}"
            )
            try:
                for records in batches:
                    _journal_batch(plan, scheduler, records, done)
                    bar.update(len(records))
            except TaskFailed as failed:
                _fail(plan, failed.items[0], failed.reason, done)
    return _write(plan, done)


def _journal_batch(plan: LabelPlan, scheduler: str, records: list[dict], done: dict) -> None:
    """Journal a batch's results up to its first error, which is then raised."""
    fresh = []
    for record in records:
        if "error" in record:
            _append(plan.journal, fresh)
            _fail(plan, record["i"], record["error"], done)
        if record["i"] in done:  # never twice into the journal, whatever the cluster resent
            continue
        record["scheduler"] = scheduler
        fresh.append(record)
        done[record["i"]] = record
    _append(plan.journal, fresh)


def _fail(plan: LabelPlan, index: int, reason: str, done: dict) -> NoReturn:
    raise CalculationError(
        f"{plan.source.path}: {plan.source.describe(index)}: {plan.level.id}: {reason}; "
        f"the {len(done)} structures done are kept in {plan.journal} for a rerun"
    )


def _write(plan: LabelPlan, done: dict[int, dict]) -> DatasetManifest:
    """The labelled structures as a new store at ``plan.out``, with the journal inside it."""
    s = plan.source.structures.select(plan.indices)
    s.charge = plan.charge[plan.indices].astype(np.int16)
    s.multiplicity = plan.multiplicity[plan.indices].astype(np.int16)
    records = [done[int(i)] for i in plan.indices]
    present = np.ones(s.n_structures, dtype=bool)
    if "energy" in plan.labels:
        energy = np.array([r["energy"] for r in records], dtype=np.float64)
        s.labels[(plan.level.id, "energy")] = Label(energy, present)
    if "forces" in plan.labels:
        forces = np.concatenate([np.asarray(r["forces"], dtype=np.float64) for r in records])
        s.labels[(plan.level.id, "forces")] = Label(forces.reshape(-1, 3), present)
    source = Source(
        path=plan.source.path,
        reader=plan.source.reader,
        structures=s,
        source_units={(plan.level.id, label): PROGRAM_UNITS[label] for label in plan.labels},
    )
    validate(source)
    subset = plan.header["subset"]
    run = LabellingRun(
        level=plan.level.id,
        labels=plan.labels,
        recipe=plan.recipe,
        program_version=plan.header["program_version"],
        n_structures=s.n_structures,
        subset=None if subset is None else tuple(subset),
        charge=plan.header["charge"],
        multiplicity=plan.header["multiplicity"],
        seconds_per_structure=float(np.mean([r["seconds"] for r in records])),
        scheduler=", ".join(dict.fromkeys(r["scheduler"] for r in records if "scheduler" in r))
        or None,
    )
    manifest = write_store(
        plan.out,
        s,
        [source],
        name=plan.name,
        description=f"mfdata label {plan.source.path} --level {plan.level.id} "
        f"({datetime.date.today().isoformat()})",
        labelling=[run],
    )
    register(manifest.name, plan.out)
    os.replace(plan.journal, plan.out / JOURNAL_IN_STORE)
    return manifest
