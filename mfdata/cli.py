"""The ``mfdata`` command: convert QM files to stores, inspect, export, pack and verify them."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import typer
from pydantic import ValidationError

from mfdata.catalog import describe, filter_entries, find_entry, load_catalog, parse_elements
from mfdata.convert import convert as convert_files
from mfdata.convert import merge as merge_stores
from mfdata.errors import MfkitError, UsageError
from mfdata.files import atomic_write_text
from mfdata.levels import add_level, registry, resolve_level
from mfdata.loading.sources import open_source
from mfdata.query import parse_has, select, source_ids
from mfdata.readers import FORMATS, format_help
from mfdata.records import DEFAULT_GEOMETRY_TOLERANCE
from mfdata.registry import home, open_store, registered
from mfdata.resources import example_file
from mfdata.schema import LevelOfTheory, QuerySpec
from mfdata.split import make_split
from mfdata.store.manifest import StoreError
from mfdata.store.remote import is_url
from mfdata.store.store import Store
from mfdata.store.zarr_store import Precision

app = typer.Typer(
    help="Multi-level QM datasets: every label tagged with its level of theory and unit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# What main() reports as one line: mfkit's own errors, and files missing or in the way. Anything
# else is a bug and keeps its traceback.
USER_ERRORS = (
    MfkitError,
    FileExistsError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
)

# --format's choices, from the reader table (typer makes a choice of a Literal's values).
FormatName = Literal[FORMATS]  # type: ignore[valid-type]


def _pairs(items: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not (sep and key and value):
            raise UsageError(f"{option} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _pbc(text: str | None) -> bool | None:
    if text is None:
        return None
    table = {"t": True, "true": True, "f": False, "false": False}
    if text.lower() not in table:
        raise UsageError(f"--pbc {text!r}: expected T or F")
    return table[text.lower()]


def _note(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def convert(
    out: Annotated[Path, typer.Option(help="The store to create; must not exist.")],
    sources: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Input files (with --catalog, default: those 'mfdata download' fetched).",
            exists=True,
        ),
    ] = None,
    format: Annotated[FormatName | None, typer.Option(help=format_help())] = None,
    level: Annotated[
        str | None, typer.Option(help="Level of ASE's energy/forces/stress keys (or of a file).")
    ] = None,
    map: Annotated[
        list[str], typer.Option("--map", help="KEY=LEVEL:LABEL, e.g. Emp2=mp2-augccpvdz:energy.")
    ] = [],  # noqa: B006 - typer reads the default
    units: Annotated[list[str], typer.Option(help="KEY=UNIT, e.g. Emp2=Hartree.")] = [],  # noqa: B006
    link_by: Annotated[
        str | None, typer.Option(help="Merge sources by 'geometry' or by 'id:KEY'.")
    ] = None,
    tolerance: Annotated[float, typer.Option(help="Geometry tolerance, Å.")] = (
        DEFAULT_GEOMETRY_TOLERANCE
    ),
    pbc: Annotated[str | None, typer.Option(help="T or F: override periodicity.")] = None,
    isolated_atoms: Annotated[
        str | None, typer.Option(help="FILE of isolated atoms, or KEY=VALUE marking them.")
    ] = None,
    group_key: Annotated[
        str | None, typer.Option(help="Info key that names a structure's molecule/group.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Store name (default: directory name).")] = None,
    precision: Annotated[
        Precision, typer.Option(help="lossless, or compact: forces bit-rounded to ~1e-4 relative.")
    ] = "lossless",
    licence: Annotated[str | None, typer.Option(help="Licence of the data.")] = None,
    citation: Annotated[str | None, typer.Option(help="How to cite the data.")] = None,
    catalog: Annotated[
        str | None,
        typer.Option(
            help="A catalogued dataset (see 'mfdata catalog list'): its reader options, units, "
            "licence and citation fill in the flags not given."
        ),
    ] = None,
    allow_implausible: Annotated[
        bool,
        typer.Option(
            help="Keep values implausible for their stated unit (recorded in the manifest)."
        ),
    ] = False,
) -> None:
    """Convert QM files into a store; every label gets its level of theory and unit."""
    if not sources and catalog is not None:
        from mfdata.download import catalog_sources

        sources = catalog_sources(catalog)
    store = convert_files(
        sources or [],
        out,
        format=format,
        level=level,
        maps=map,
        units=_pairs(units, "--units"),
        link_by=link_by,
        tolerance=tolerance,
        pbc=_pbc(pbc),
        isolated_atoms=isolated_atoms,
        group_key=group_key,
        name=name,
        precision=precision,
        licence=licence,
        citation=citation,
        catalog=catalog,
        allow_implausible=allow_implausible,
        notify=_note,
    )
    typer.echo(_summary(store))


def _summary(store: Store) -> str:
    """What a store holds, with each label's unit and the units its sources gave."""
    info = store.info()
    lines = [
        f"store {info['name']} at {info['path']}",
        f"  {info['n_structures']} structures, {info['n_atoms']} atoms, "
        f"elements {' '.join(info['elements'])}",
    ]
    for level, labels in info["levels"].items():
        counts = ", ".join(
            f"{kind} {n} ({_units(info['units'][level][kind], info['source_units'][level][kind])})"
            for kind, n in labels.items()
        )
        name = store.manifest.levels[level].name
        lines.append(f"  {level} ({name}): {counts or 'atom energies only'}")
    if info["splits"]:
        lines.append(f"  splits: {', '.join(info['splits'])}")
    lines.append(f"  checksum {info['checksum'][:16]}")
    return "\n".join(lines)


def _units(unit: str, source_units: list[str]) -> str:
    """``eV`` when the sources gave eV, ``eV, from kcal/mol`` when they gave another unit."""
    other = [u for u in source_units if u != unit]
    return f"{unit}, from {', '.join(other)}" if other else unit


@app.command()
def info(
    store: Annotated[str, typer.Argument(help="A store: path, registered name or URL.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What a store holds: structures, atoms, elements, levels and label counts."""
    opened = open_source(store)
    typer.echo(json.dumps(opened.info(), indent=2) if json_out else _summary(opened))


levels_app = typer.Typer(
    help="The levels of theory mfkit knows (package and $MFKIT_HOME/levels.yaml); 'add' "
    "registers a new one.",
)
app.add_typer(levels_app, name="levels")


@levels_app.callback(invoke_without_command=True)
def levels(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The levels of theory mfkit knows, with the aliases that work wherever a level is typed."""
    if ctx.invoked_subcommand is not None:
        return
    known = registry()
    if json_out:
        typer.echo(
            json.dumps([lvl.model_dump() for lvl in known.values()], indent=2, ensure_ascii=False)
        )
        return
    id_width = max(len(lvl.id) for lvl in known.values())
    name_width = max(len(lvl.name) for lvl in known.values())
    for lvl in known.values():
        typer.echo(f"{lvl.id:{id_width}s}  {lvl.name:{name_width}s}  {', '.join(lvl.aliases)}")


@levels_app.command("add")
def levels_add(
    level_id: Annotated[str, typer.Argument(metavar="ID", help="Short id: a-z, 0-9 and '-'.")],
    name: Annotated[str, typer.Option(help="Canonical name, e.g. 'PW91 (CASTEP)'.")],
    method: Annotated[str, typer.Option(help="The method, e.g. PW91.")],
    family: Annotated[
        str, typer.Option(help="wavefunction, dft, semiempirical, empirical or composite.")
    ],
    basis: Annotated[str | None, typer.Option(help="Basis set (or plane-wave cutoff).")] = None,
    program: Annotated[str | None, typer.Option(help="Program and version.")] = None,
    alias: Annotated[
        list[str], typer.Option("--alias", help="A name source files use; repeatable.")
    ] = [],  # noqa: B006 - typer reads the default
    notes: Annotated[str | None, typer.Option(help="Anything else worth knowing.")] = None,
) -> None:
    """Register a level of theory in $MFKIT_HOME/levels.yaml; stores converted with it carry its
    definition, so they work where it is not registered."""
    try:
        level = LevelOfTheory(
            id=level_id,
            name=name,
            method=method,
            family=family,
            basis=basis,
            program=program,
            aliases=alias,
            notes=notes,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"level {level_id}: {problems}") from None
    path = add_level(level)
    typer.echo(f"added {level.id} ({level.name}) to {path}")


@app.command()
def export(
    store: Annotated[str, typer.Argument(help="A store: path or registered name.")],
    out: Annotated[Path, typer.Option(help="File (directory for mace) to write; must not exist.")],
    level: Annotated[
        str | None, typer.Option(help="Level whose labels are written (extxyz, aselmdb).")
    ] = None,
    format: Annotated[
        Literal["extxyz", "aselmdb", "mace"],
        typer.Option(
            help="extxyz (ASE, nequip); aselmdb (fairchem); mace: one extxyz per level with "
            "MACE's REF_ keys and head, isolated atoms, and heads.yaml for a multi-head config."
        ),
    ] = "extxyz",
) -> None:
    """Write a store's labels (eV, eV/Å, eV/Å³) in the formats peers train on."""
    from mfdata.export import write_aselmdb, write_extxyz, write_mace

    opened = open_store(store)
    if format == "mace":
        if level is not None:
            raise UsageError("--format mace writes every level (one head each); drop --level")
        files = write_mace(opened, out)
        typer.echo(f"wrote {len(files)} heads ({', '.join(files)}) and heads.yaml to {out}")
        return
    if level is None:
        raise UsageError(f"--format {format} writes one level: give --level")
    level_id = resolve_level(level, allowed=opened.levels).id
    write = write_extxyz if format == "extxyz" else write_aselmdb
    n = write(opened, level_id, out)
    typer.echo(f"wrote {n} structures at {level_id} to {out}")


@app.command()
def verify(
    store: Annotated[str, typer.Argument(help="A store: path, registered name or URL.")],
    repair: Annotated[
        bool, typer.Option(help="First remove what interrupted writes left in the store.")
    ] = False,
) -> None:
    """Recompute every checksum and derived count (arrays, manifest, splits, LMDB shards) and
    list leftovers of interrupted writes; exit non-zero on any problem."""
    if repair and is_url(store):
        raise UsageError(f"{store}: --repair is for local stores (a push leaves no leftovers)")
    opened = open_source(store)
    if repair:
        from mfdata.store.verify import repair as remove_leftovers

        for path in remove_leftovers(opened.path):
            typer.echo(f"removed {path}", err=True)
    problems = opened.verify()
    if problems:
        for problem in problems:
            typer.echo(problem, err=True)
        raise typer.Exit(1)
    typer.echo(f"{store}: ok")


@app.command()
def stats(
    store: Annotated[str, typer.Argument(help="A store: path, registered name or URL.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    allow_implausible: Annotated[
        bool,
        typer.Option(
            help="Keep values implausible for their stated unit (recorded in the manifest)."
        ),
    ] = False,
) -> None:
    """Per-level reference energies, energy spread, force RMS and level alignment; saved in the
    manifest (the checksum does not change) so training can initialise each head from them.
    Values implausible for their stated unit are refused unless overridden."""
    import warnings

    from mfdata.plausibility import checked_statistics, update_checked_statistics
    from mfdata.stats import StatisticsWarning, all_warnings, format_statistics

    opened = open_source(store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StatisticsWarning)  # echoed below, once each
        if is_url(store):
            result, implausible = checked_statistics(opened, allow_implausible)
            _note(f"{store}: a store at a URL is read-only: statistics printed, not saved")
        else:
            result, implausible = update_checked_statistics(opened.path, allow_implausible)
    for message in all_warnings(result) + implausible:
        typer.echo(f"warning: {message}", err=True)
    typer.echo(result.model_dump_json(indent=2) if json_out else format_statistics(result))


@app.command()
def pack(
    store: Annotated[str, typer.Argument(help="A store: path or registered name.")],
    shards: Annotated[
        int | None, typer.Option(help="Number of LMDB shards (default: one per 1M structures).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace existing shards.")] = False,
) -> None:
    """Write LMDB shards (STORE/lmdb) for fast shuffled reads in training."""
    from mfdata.store.lmdb_store import pack as pack_store

    path = open_store(store).path
    info = pack_store(path, shards=shards, force=force)
    typer.echo(f"{path}: packed into {len(info.shards)} LMDB shard(s) in {path / 'lmdb'}")


@app.command()
def push(
    store: Annotated[str, typer.Argument(help="A local store: path or registered name.")],
    url: Annotated[str, typer.Argument(help="Where to copy it: an fsspec URL, s3://BUCKET/NAME.")],
) -> None:
    """Copy a verified store to object storage (its Zarr group and splits, then its manifest,
    last; LMDB shards stay local); rerun to complete an interrupted push."""
    from mfdata.store.push import push as push_store

    done = push_store(open_store(store), url)
    if done.objects:
        typer.echo(f"pushed {done.objects} objects ({done.bytes} bytes) to {done.url}")
    else:
        typer.echo(f"{done.url} already holds this store and manifest: nothing pushed")


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Where to write the store.")] = None,
) -> None:
    """Convert the bundled ANI-1x/ANI-1ccx sample (8 conformers) and print its summary."""
    source = example_file("ani1_n5.hdf5")
    with tempfile.TemporaryDirectory() as tmp:
        target = out or Path(tmp) / "ani1_n5"
        typer.echo(f"converting {source} (bundled ANI-1x/ANI-1ccx sample)")
        convert_files(
            [Path(str(source))],
            target,
            name="ani1_n5",
            licence="MIT (the modelforge test file this sample comes from)",
        )
        problems = Store(target).verify()
        typer.echo("verify: ok" if not problems else "\n".join(problems))
        s, _ = Store(target).read()
        e = s.labels[("wb97x-631gd", "energy")].values
        typer.echo(f"ωB97X/6-31G(d) energies (eV): {np.array2string(e, precision=3)}")


@app.command()
def register(
    store: Annotated[Path, typer.Argument(help="A store directory.")],
    name: Annotated[
        str | None, typer.Option(help="Name to register (default: the directory name).")
    ] = None,
) -> None:
    """Register an existing store by name (e.g. one whose conversion was interrupted just
    before it was registered, or one copied from another machine)."""
    from mfdata.registry import register as register_store

    opened = Store(store)
    chosen = name or opened.path.resolve().name
    register_store(chosen, opened.path)
    typer.echo(f"registered {chosen} -> {opened.path.resolve()}")


@app.command("list")
def list_stores(
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """The stores registered on this machine (by convert and merge), by name."""
    rows = {}
    for name, path in sorted(registered().items()):
        try:
            rows[name] = {"path": path, **_brief(Store(path).info())}
        except StoreError as exc:
            rows[name] = {"path": path, "error": str(exc)}
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"registry: {home()}")
    for name, row in rows.items():
        detail = row.get("error") or f"{row['n_structures']} structures, {', '.join(row['levels'])}"
        typer.echo(f"  {name:20s} {row['path']}  ({detail})")


def _brief(info: dict) -> dict:
    return {"n_structures": info["n_structures"], "levels": list(info["levels"])}


@app.command()
def query(
    stores: Annotated[list[str], typer.Argument(help="Stores: paths, registered names or URLs.")],
    has: Annotated[
        list[str], typer.Option(help="LEVEL:LABEL that must be present; repeatable.")
    ] = [],  # noqa: B006
    elements: Annotated[str | None, typer.Option(help="Only these elements, e.g. H,C,N,O.")] = None,
    min_atoms: Annotated[int | None, typer.Option(help="At least this many atoms.")] = None,
    max_atoms: Annotated[int | None, typer.Option(help="At most this many atoms.")] = None,
    charge: Annotated[int | None, typer.Option(help="Total charge.")] = None,
    source: Annotated[
        str | None, typer.Option(help="Input file (path or file name) or store name.")
    ] = None,
    count: Annotated[bool, typer.Option(help="Print the number of matches alone.")] = False,
    out: Annotated[Path | None, typer.Option(help="Save the selection as JSON.")] = None,
) -> None:
    """Structures that have given labels, elements, sizes and charge, across stores."""
    opened = [open_source(s) for s in stores]
    spec = QuerySpec(
        has=parse_has(has, opened),
        elements=parse_elements(elements) if elements is not None else None,
        min_atoms=min_atoms,
        max_atoms=max_atoms,
        charge=charge,
        source=source,
    )
    if source is not None and not any(len(source_ids(s, source)) for s in opened):
        names = sorted({Path(f.path).name for s in opened for f in s.manifest.provenance.inputs})
        raise UsageError(f"--source {source!r}: no store has that input; inputs: {names}")
    selection = select(opened, spec)
    total = sum(entry.n_selected for entry in selection.stores)
    if out is not None:
        if out.exists():
            raise FileExistsError(f"{out}: already exists; choose another output path")
        atomic_write_text(out, selection.model_dump_json(indent=2) + "\n")
    if count:
        typer.echo(str(total))
        return
    for entry in selection.stores:
        typer.echo(f"{entry.name}: {entry.n_selected} of {entry.n_structures} structures")
    if out is not None:
        typer.echo(f"selection saved to {out}")


@app.command()
def split(
    store: Annotated[str, typer.Argument(help="A store: path or registered name.")],
    name: Annotated[str, typer.Option(help="Name of the split.")],
    by: Annotated[str, typer.Option(help="structure, group or formula.")] = "structure",
    fractions: Annotated[str, typer.Option(help="Part fractions, e.g. 0.8,0.1,0.1.")] = (
        "0.8,0.1,0.1"
    ),
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same split.")] = 0,
    parts: Annotated[str | None, typer.Option(help="Part names (default train,val,test).")] = None,
    subsets: Annotated[
        str | None, typer.Option(help="Nested training subsets, e.g. 50,100,200,400.")
    ] = None,
) -> None:
    """Save a deterministic, group-aware split shared by all levels of the store."""
    opened = open_store(store)
    info = make_split(
        opened,
        name,
        by=by,
        fractions=_numbers(fractions, float, "--fractions"),
        seed=seed,
        parts=parts.split(",") if parts else None,
        subsets=_numbers(subsets, int, "--subsets") if subsets else [],
    )
    sizes = ", ".join(f"{p} {n}" for p, n in info.sizes.items())
    typer.echo(f"split {info.name} by {info.by} (seed {info.seed}): {sizes}")
    if info.subsets:
        typer.echo(f"  nested training subsets: {', '.join(map(str, info.subsets))}")


def _numbers(text: str, kind: type, option: str) -> list:
    try:
        return [kind(x) for x in text.split(",")]
    except ValueError as exc:
        raise UsageError(f"{option} {text!r}: expected comma-separated numbers") from exc


@app.command()
def merge(
    stores: Annotated[list[str], typer.Argument(help="Stores to join: paths or names.")],
    out: Annotated[Path, typer.Option(help="The store to create; must not exist.")],
    tolerance: Annotated[float, typer.Option(help="Geometry tolerance, Å.")] = (
        DEFAULT_GEOMETRY_TOLERANCE
    ),
    name: Annotated[str | None, typer.Option(help="Store name (default: directory name).")] = None,
    allow_implausible: Annotated[
        bool, typer.Option(help="Keep levels whose energies disagree by a unit ratio.")
    ] = False,
) -> None:
    """Join stores by geometry so one record carries the labels of all; conflicts are errors.
    Each store is converted on its own (one convert per level or unit), then merged."""
    merged = merge_stores(
        stores, out, tolerance=tolerance, name=name, allow_implausible=allow_implausible
    )
    typer.echo(_summary(merged))


@app.command()
def label(
    source: Annotated[str, typer.Argument(help="Structures: an ASE-readable file or a store.")],
    level: Annotated[str, typer.Option(help="A level with a compute recipe (mfdata levels).")],
    out: Annotated[Path, typer.Option(help="The store to create; must not exist.")],
    labels: Annotated[
        str | None, typer.Option(help="energy,forces (default: all the recipe computes).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Local worker processes, one thread each: --scheduler local:N."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="local:N (a Dask LocalCluster of N processes) or a running Dask scheduler's "
            "address, tcp://HOST:PORT (default: local:1)."
        ),
    ] = None,
    n: Annotated[
        int | None, typer.Option("--n", help="Label a seeded subset of N structures.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the subset; same seed, nested subsets.")] = 0,
    charge: Annotated[
        int | None, typer.Option(help="Total charge of structures whose source states none.")
    ] = None,
    multiplicity: Annotated[
        int | None, typer.Option(help="Spin multiplicity where the source states none.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Store name (default: directory name).")] = None,
) -> None:
    """Compute a level's energies/forces for every structure (tblite, PySCF); resumable:
    rerun the same command after an interruption and only the missing structures are computed."""
    from mfdata.dask_cluster import scheduler_spec
    from mfdata.label import plan_labelling, run_labelling

    spec = scheduler_spec(workers, scheduler)
    plan = plan_labelling(
        source,
        level,
        out,
        labels=[x.strip() for x in labels.split(",")] if labels else None,
        n=n,
        seed=seed,
        charge=charge,
        multiplicity=multiplicity,
        name=name,
    )
    if plan.journal.exists():
        typer.echo(f"resuming from {plan.journal}", err=True)
    (run,) = run_labelling(plan, spec).provenance.labelling
    typer.echo(
        f"{run.level}: {run.n_structures} structures, {run.seconds_per_structure:.3g} s each "
        f"({run.recipe.program} {run.program_version}, {run.scheduler})",
        err=True,
    )
    typer.echo(_summary(Store(out)))


@app.command()
def sample(
    molecule: Annotated[
        str, typer.Argument(help="An ase.build.molecule name (CH3OH, H2O...) or a structure file.")
    ],
    n: Annotated[int, typer.Option("--n", help="Number of frames to write.")],
    temperature: Annotated[float, typer.Option(help="Langevin temperature, K.")],
    out: Annotated[Path, typer.Option(help="extxyz file to write; must not exist.")],
    seed: Annotated[int, typer.Option(help="Seed of velocities and thermostat noise.")] = 0,
    timestep: Annotated[float, typer.Option(help="MD time step, fs.")] = 0.5,
    interval: Annotated[int, typer.Option(help="MD steps between written frames.")] = 100,
    equilibration: Annotated[int, typer.Option(help="MD steps before the first frame.")] = 2000,
    charge: Annotated[int | None, typer.Option(help="Total charge (files must state it).")] = None,
    multiplicity: Annotated[int | None, typer.Option(help="Spin multiplicity.")] = None,
) -> None:
    """Geometries from GFN2-xTB Langevin dynamics (tblite, ASE), written as extxyz."""
    from mfdata.sample import sample as run_sample

    run_sample(
        molecule,
        n,
        temperature,
        out,
        seed=seed,
        timestep=timestep,
        interval=interval,
        equilibration=equilibration,
        charge=charge,
        multiplicity=multiplicity,
    )
    typer.echo(f"wrote {n} frames of {molecule} at {temperature} K to {out}")


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="A catalogued dataset: name or alias.")],
    to: Annotated[
        Path | None, typer.Option(help="Directory (default: $MFKIT_HOME/downloads/NAME).")
    ] = None,
) -> None:
    """Download a catalogued dataset's files: resumed after an interruption, checked against
    the catalog's size and sha256; 'mfdata convert --catalog NAME --out STORE' then finds them."""
    from mfdata.download import download as fetch

    typer.echo(f"files in {fetch(find_entry(name), to, echo=_note)}")


catalog_app = typer.Typer(
    help="Public QM datasets: levels, labels, units, licence, citation, and how to convert them.",
    no_args_is_help=True,
)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("list")
def catalog_list(
    level: Annotated[
        str | None, typer.Option(help="Only datasets with this level (id or alias).")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="Only datasets with this label (at --level, if given).")
    ] = None,
    elements: Annotated[
        str | None, typer.Option(help="Only datasets whose elements are among these: H,C,N,O.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The public datasets mfkit knows, by level of theory, label and elements."""
    symbols = parse_elements(elements) if elements is not None else None
    entries = filter_entries(list(load_catalog().values()), level, label, symbols)
    if json_out:
        rows = [entry.model_dump(mode="json") for entry in entries]
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    typer.echo(f"{'name':28s} {'size':>9s} {'reader':7s} levels")
    for entry in entries:
        reader = entry.reader.format if entry.reader else "-"
        typer.echo(f"{entry.name:28s} {entry.size!s:>9s} {reader:7s} {', '.join(entry.levels)}")


@catalog_app.command("show")
def catalog_show(
    name: Annotated[str, typer.Argument(help="A dataset: name or alias.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Everything the catalog says about one dataset, and how to convert it."""
    entry = find_entry(name)
    if json_out:
        typer.echo(json.dumps(entry.model_dump(mode="json"), indent=2, ensure_ascii=False))
    else:
        typer.echo(describe(entry))


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2; any other
    exception is a bug and keeps its traceback."""
    try:
        app()
    except USER_ERRORS as exc:
        typer.echo(f"mfdata: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
