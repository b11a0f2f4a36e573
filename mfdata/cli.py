"""The ``mfdata`` command: convert QM files to stores, inspect, export, pack and verify them."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from mfdata.levels import UnknownLevelError, registry, resolve_level
from mfdata.linking import link_sources
from mfdata.readers import FORMATS, parse_mapping, read_source
from mfdata.records import DEFAULT_GEOMETRY_TOLERANCE, InvalidDataError, Source
from mfdata.resources import example_file
from mfdata.schema import label_kind
from mfdata.store.store import Store, StoreError, write_store
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
) -> None:
    """Convert QM files into a store; every label gets its level of theory and unit."""
    maps = [parse_mapping(m) for m in map]
    unit_map = _pairs(units, "--units")
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
    )
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
    store: Annotated[Path, typer.Argument(help="A store.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What a store holds: structures, atoms, elements, levels and label counts."""
    summary = Store(store).info()
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
    store: Annotated[Path, typer.Argument(help="A store.")],
    level: Annotated[str, typer.Option(help="Level whose labels are written.")],
    out: Annotated[Path, typer.Option(help="extxyz file to write; must not exist.")],
) -> None:
    """Write the structures that have LEVEL as extxyz (eV, eV/Å), for MACE and nequip users."""
    from mfdata.export import write_extxyz

    opened = Store(store)
    level_id = resolve_level(level, allowed=opened.levels).id
    n = write_extxyz(opened, level_id, out)
    typer.echo(f"wrote {n} structures at {level_id} to {out}")


@app.command()
def verify(store: Annotated[Path, typer.Argument(help="A store.")]) -> None:
    """Recompute every checksum; exit non-zero if any array changed or is unreadable."""
    problems = Store(store).verify()
    if problems:
        for problem in problems:
            typer.echo(problem, err=True)
        raise typer.Exit(1)
    typer.echo(f"{store}: ok")


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
            licence="MIT (modelforge test data); ANI data CC BY 4.0",
            citation=None,
        )
        problems = Store(target).verify()
        typer.echo("verify: ok" if not problems else "\n".join(problems))
        s, _ = Store(target).read()
        e = s.labels[("wb97x-631gd", "energy")].values
        typer.echo(f"ωB97X/6-31G(d) energies (eV): {np.array2string(e, precision=3)}")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except USER_ERRORS as exc:
        typer.echo(f"mfdata: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
