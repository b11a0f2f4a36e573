"""The ``mfdata`` command: convert QM files to stores, inspect, export, pack and verify them."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from ase.data import chemical_symbols

from mfdata.calculators import CalculationError, MissingProgramError
from mfdata.catalog import (
    convert_options,
    describe,
    filter_entries,
    find_entry,
    load_catalog,
    parse_elements,
)
from mfdata.levels import UnknownLevelError, registry, resolve_level
from mfdata.linking import link_sources
from mfdata.query import parse_has, select, source_ids
from mfdata.readers import FORMATS, parse_mapping, read_source
from mfdata.records import DEFAULT_GEOMETRY_TOLERANCE, InvalidDataError, Source
from mfdata.registry import check_name_free, home, open_store, register, registered
from mfdata.resources import example_file
from mfdata.schema import QuerySpec, label_kind
from mfdata.split import make_split
from mfdata.store.manifest import StoreError
from mfdata.store.store import Store, store_as_source, write_store
from mfdata.units import UnitError

app = typer.Typer(
    help="Multi-level QM datasets: every label tagged with its level of theory and unit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

USER_ERRORS = (
    InvalidDataError,
    StoreError,
    UnknownLevelError,
    UnitError,
    FileExistsError,
    FileNotFoundError,
    ValueError,
    MissingProgramError,
    CalculationError,
)


def _pairs(items: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not (sep and key and value):
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _pbc(text: str | None) -> bool | None:
    if text is None:
        return None
    table = {"t": True, "true": True, "f": False, "false": False}
    if text.lower() not in table:
        raise ValueError(f"--pbc {text!r}: expected T or F")
    return table[text.lower()]


@app.command()
def convert(
    sources: Annotated[list[Path], typer.Argument(help="Input files.", exists=True)],
    out: Annotated[Path, typer.Option(help="The store to create; must not exist.")],
    format: Annotated[str | None, typer.Option(help=f"One of {', '.join(FORMATS)}.")] = None,
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
        str, typer.Option(help="lossless, or compact: forces bit-rounded to ~1e-4 relative.")
    ] = "lossless",
    licence: Annotated[str | None, typer.Option(help="Licence of the data.")] = None,
    citation: Annotated[str | None, typer.Option(help="How to cite the data.")] = None,
    catalog: Annotated[
        str | None,
        typer.Option(
            help="A catalogued dataset (see 'mfdata catalog list'): its reader options, licence "
            "and citation fill in the flags not given."
        ),
    ] = None,
) -> None:
    """Convert QM files into a store; every label gets its level of theory and unit."""
    maps = [parse_mapping(m) for m in map]
    unit_map = _pairs(units, "--units")
    description = None
    if catalog is not None:  # the catalog fills in what the flags leave open
        spec = convert_options(find_entry(catalog))
        format = format or spec.format
        level = level or spec.level
        maps = [m for m in spec.maps if m[0] not in {key for key, _, _ in maps}] + maps
        unit_map = {**spec.units, **unit_map}
        if pbc is None and spec.pbc is not None:
            pbc = "T" if spec.pbc else "F"
        group_key = group_key or spec.group_key
        licence = licence or spec.licence
        citation = citation or spec.citation
        description = spec.description
    usable = {key for key, _, _ in maps} | {"energy", "free_energy", "forces", "stress", "E", "R"}
    unused = sorted(set(unit_map) - usable)
    if unused:
        raise ValueError(
            f"--units {', '.join(unused)}: no --map uses these keys (units belong to mapped keys, "
            "ASE's standard keys, or an sGDML file's E and R)"
        )
    id_key = None
    if link_by is not None:
        if link_by.startswith("id:") and len(link_by) > 3:
            id_key = link_by[3:]
        elif link_by != "geometry":
            raise ValueError(f"--link-by {link_by!r}: expected 'geometry' or 'id:KEY'")
    if precision not in ("lossless", "compact"):
        raise ValueError(f"--precision {precision!r}: expected lossless or compact")
    if Path(out).exists():
        raise FileExistsError(f"{out}: already exists; choose another output path")
    check_name_free(name or Path(out).name, out)
    options = dict(level=level, maps=maps, units=unit_map, pbc=_pbc(pbc), group_key=group_key)
    iso_marker = None
    iso_sources: list[Source] = []
    if isolated_atoms is not None:
        if Path(isolated_atoms).is_file():
            iso_sources.append(read_source(isolated_atoms, format, all_isolated=True, **options))
        else:
            key, _, value = isolated_atoms.partition("=")
            if not value:
                raise ValueError(
                    f"--isolated-atoms {isolated_atoms!r}: not a file, and not KEY=VALUE"
                )
            iso_marker = (key, value)
    elif catalog is not None:
        iso_marker = spec.isolated_atoms
        if spec.isolated_atoms_file is not None:
            iso_file = Path(sources[0]).parent / spec.isolated_atoms_file
            if not iso_file.is_file():
                typer.echo(f"{catalog}: no {iso_file}: no isolated-atom energies", err=True)
            elif not any(iso_file.samefile(path) for path in sources):
                typer.echo(f"{catalog}: isolated atoms from {iso_file}", err=True)
                iso_sources.append(read_source(str(iso_file), format, all_isolated=True, **options))
    read = [
        read_source(
            str(path),
            format,
            isolated_atoms=iso_marker,
            id_key=id_key,
            maps_optional=len(sources) > 1,
            **options,
        )
        for path in sources
    ]
    found = {key for source in read for key in source.structures.labels}
    for key, level_id, label in maps:
        if (level_id, label_kind(label)[0].name) not in found:
            raise InvalidDataError(f"no record of any source has the key {key!r} (--map {key})")
    for source in read:
        if source.reader in ("ani2x", "spice"):
            level_id = next(iter(source.structures.labels))[0]
            typer.echo(
                f"{source.path}: {source.reader} release, level {level_id} (override with --level)",
                err=True,
            )
    structures = link_sources(read, None if link_by is None else link_by, tolerance)
    write_store(
        out,
        structures,
        read + iso_sources,
        name=name,
        link_by=link_by,
        tolerance=tolerance,
        precision=precision,
        licence=licence,
        citation=citation,  # type: ignore[arg-type]
        description=description,
    )
    register(name or Path(out).name, out)
    typer.echo(_summary(Store(out).info()))


def _summary(info: dict) -> str:
    lines = [
        f"store {info['name']} at {info['path']}",
        f"  {info['n_structures']} structures, {info['n_atoms']} atoms, "
        f"elements {' '.join(info['elements'])}",
    ]
    known = registry()
    for level, labels in info["levels"].items():
        counts = ", ".join(f"{kind} {n}" for kind, n in labels.items())
        lines.append(f"  {level} ({known[level].name}): {counts or 'atom energies only'}")
    if info["splits"]:
        lines.append(f"  splits: {', '.join(info['splits'])}")
    lines.append(f"  checksum {info['checksum'][:16]}")
    return "\n".join(lines)


@app.command()
def info(
    store: Annotated[str, typer.Argument(help="A store: path or registered name.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What a store holds: structures, atoms, elements, levels and label counts."""
    summary = open_store(store).info()
    typer.echo(json.dumps(summary, indent=2) if json_out else _summary(summary))


@app.command()
def levels(
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The levels of theory mfkit knows, with the aliases that work wherever a level is typed."""
    known = registry()
    if json_out:
        typer.echo(
            json.dumps([lvl.model_dump() for lvl in known.values()], indent=2, ensure_ascii=False)
        )
        return
    for lvl in known.values():
        typer.echo(f"{lvl.id:24s} {lvl.name:32s} {', '.join(lvl.aliases)}")


@app.command()
def export(
    store: Annotated[str, typer.Argument(help="A store: path or registered name.")],
    level: Annotated[str, typer.Option(help="Level whose labels are written.")],
    out: Annotated[Path, typer.Option(help="extxyz file to write; must not exist.")],
) -> None:
    """Write the structures that have LEVEL as extxyz (eV, eV/Å), for MACE and nequip users."""
    from mfdata.export import write_extxyz

    opened = open_store(store)
    level_id = resolve_level(level, allowed=opened.levels).id
    n = write_extxyz(opened, level_id, out)
    typer.echo(f"wrote {n} structures at {level_id} to {out}")


@app.command()
def verify(store: Annotated[Path, typer.Argument(help="A store.")]) -> None:
    """Recompute every checksum (arrays and LMDB shards); exit non-zero on any mismatch."""
    problems = open_store(store).verify()
    if problems:
        for problem in problems:
            typer.echo(problem, err=True)
        raise typer.Exit(1)
    typer.echo(f"{store}: ok")


@app.command()
def stats(
    store: Annotated[str, typer.Argument(help="A store: path or registered name.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Per-level reference energies, energy spread, force RMS and level alignment; saved in the
    manifest (the checksum does not change) so training can initialise each head from them."""
    import warnings

    from mfdata.stats import StatisticsWarning, all_warnings, format_statistics, update_statistics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StatisticsWarning)  # echoed below, once each
        result = update_statistics(open_store(store).path)
    for message in all_warnings(result):
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
def demo(
    out: Annotated[Path | None, typer.Option(help="Where to write the store.")] = None,
) -> None:
    """Convert the bundled ANI-1x/ANI-1ccx sample (8 conformers) and print its summary."""
    source = example_file("ani1_n5.hdf5")
    with tempfile.TemporaryDirectory() as tmp:
        target = out or Path(tmp) / "ani1_n5"
        typer.echo(f"converting {source} (bundled ANI-1x/ANI-1ccx sample)")
        convert(
            [Path(str(source))],
            out=target,
            format=None,
            level=None,
            map=[],
            units=[],
            link_by=None,
            tolerance=DEFAULT_GEOMETRY_TOLERANCE,
            pbc=None,
            isolated_atoms=None,
            group_key=None,
            name="ani1_n5",
            precision="lossless",
            licence="MIT (the modelforge test file this sample comes from)",
            citation=None,
        )
        problems = Store(target).verify()
        typer.echo("verify: ok" if not problems else "\n".join(problems))
        s, _ = Store(target).read()
        e = s.labels[("wb97x-631gd", "energy")].values
        typer.echo(f"ωB97X/6-31G(d) energies (eV): {np.array2string(e, precision=3)}")


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
    stores: Annotated[list[str], typer.Argument(help="Stores: paths or registered names.")],
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
    opened = [open_store(s) for s in stores]
    symbols = None
    if elements is not None:
        symbols = [e.strip() for e in elements.split(",") if e.strip()]
        unknown = [e for e in symbols if e not in chemical_symbols[1:]]
        if unknown:
            raise ValueError(f"--elements: {', '.join(unknown)} not chemical symbols")
    spec = QuerySpec(
        has=parse_has(has, opened),
        elements=symbols,
        min_atoms=min_atoms,
        max_atoms=max_atoms,
        charge=charge,
        source=source,
    )
    if source is not None and not any(len(source_ids(s, source)) for s in opened):
        names = sorted({Path(f.path).name for s in opened for f in s.manifest.provenance.inputs})
        raise ValueError(f"--source {source!r}: no store has that input; inputs: {names}")
    selection = select(opened, spec)
    total = sum(entry.n_selected for entry in selection.stores)
    if out is not None:
        if out.exists():
            raise FileExistsError(f"{out}: already exists; choose another output path")
        out.write_text(selection.model_dump_json(indent=2) + "\n", encoding="utf-8")
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
        raise ValueError(f"{option} {text!r}: expected comma-separated numbers") from exc


@app.command()
def merge(
    stores: Annotated[list[str], typer.Argument(help="Stores to join: paths or names.")],
    out: Annotated[Path, typer.Option(help="The store to create; must not exist.")],
    tolerance: Annotated[float, typer.Option(help="Geometry tolerance, Å.")] = (
        DEFAULT_GEOMETRY_TOLERANCE
    ),
    name: Annotated[str | None, typer.Option(help="Store name (default: directory name).")] = None,
) -> None:
    """Join stores by geometry so one record carries the labels of all; conflicts are errors."""
    if Path(out).exists():
        raise FileExistsError(f"{out}: already exists; choose another output path")
    check_name_free(name or Path(out).name, out)
    opened = [open_store(s) for s in stores]
    sources = [store_as_source(s) for s in opened]
    structures = link_sources(sources, "geometry", tolerance)
    write_store(
        out,
        structures,
        sources,
        name=name,
        link_by="geometry",
        tolerance=tolerance,
        labelling=[run for s in opened for run in s.manifest.provenance.labelling],
    )
    register(name or Path(out).name, out)
    typer.echo(_summary(Store(out).info()))


@app.command()
def label(
    source: Annotated[str, typer.Argument(help="Structures: an ASE-readable file or a store.")],
    level: Annotated[str, typer.Option(help="A level with a compute recipe (mfdata levels).")],
    out: Annotated[Path, typer.Option(help="The store to create; must not exist.")],
    labels: Annotated[
        str | None, typer.Option(help="energy,forces (default: all the recipe computes).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Processes, one thread each.")] = 1,
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
    from mfdata.label import plan_labelling, run_labelling

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
    (run,) = run_labelling(plan, workers=workers).provenance.labelling
    typer.echo(
        f"{run.level}: {run.n_structures} structures, {run.seconds_per_structure:.3g} s each "
        f"({run.recipe.program} {run.program_version})",
        err=True,
    )
    typer.echo(_summary(Store(out).info()))


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
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except USER_ERRORS as exc:
        typer.echo(f"mfdata: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
