"""The ``mftrain`` command: train multi-head NequIP potentials on mfkit stores, and score them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mfdata.levels import UnknownLevelError
from mfdata.store.store import StoreError
from mftrain.config import ConfigError

app = typer.Typer(
    help="Multi-head NequIP potentials over levels of theory: train (fit), score (eval), export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

USER_ERRORS = (
    ConfigError,
    StoreError,
    UnknownLevelError,
    FileExistsError,
    FileNotFoundError,
    ValueError,
)


@app.command()
def fit(
    config: Annotated[
        Path | None, typer.Argument(help="mftrain training config (YAML); defaults without one.")
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", help="A store (path or registered name); repeatable."),
    ] = None,
    strategy: Annotated[str | None, typer.Option(help="single or multihead.")] = None,
    levels: Annotated[
        str | None, typer.Option(help="Heads in order, e.g. wb97x-631gd,ccsdt-star-cbs.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default mftrain-run).")
    ] = None,
) -> None:
    """Train a model: writes DIR/last.ckpt, DIR/best.ckpt and the resolved configs; rerun to
    resume an interrupted run from DIR/last.ckpt. Flags override the config."""
    from mftrain.config import load_config, with_overrides

    overrides: dict = {}
    if data:
        overrides["data.stores"] = list(data)
    if strategy is not None:
        overrides["strategy"] = strategy
    if levels is not None:
        overrides["data.levels"] = [lvl.strip() for lvl in levels.split(",") if lvl.strip()]
    if max_steps is not None:
        overrides["trainer.max_steps"] = max_steps
    if out is not None:
        overrides["out"] = str(out)
    settings = with_overrides(load_config(config), overrides)  # a bad config fails here, fast

    from mftrain.train import fit as run_fit

    run_fit(settings, echo=typer.echo)


@app.command("eval")
def evaluate(
    ckpt: Annotated[Path, typer.Argument(help="A checkpoint written by mftrain fit.")],
    data: Annotated[str, typer.Option("--data", help="A store (path or registered name).")],
    split: Annotated[
        str | None, typer.Option(help="NAME:PART of a split saved in the store, e.g. default:test.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plots: Annotated[
        Path | None,
        typer.Option(help="Directory for the parity plots (default: beside the checkpoint)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Structures per batch.")] = 32,
) -> None:
    """Per head, on the structures that have each label: energy MAE/RMSE per atom and per
    structure, force MAE/RMSE, counts; parity plots as PNG."""
    from mftrain.evaluate import evaluate as run_eval
    from mftrain.evaluate import format_table, plot_parity

    echo = (lambda m: typer.echo(m, err=True)) if json_out else typer.echo
    result = run_eval(ckpt, data, split=split, batch_size=batch_size, echo=echo)
    if plots is None:
        name = Path(result.store).name + (f"-{split.replace(':', '-')}" if split else "")
        plots = ckpt.resolve().parent / f"eval-{name}"
    written = plot_parity(result, plots)
    if json_out:
        typer.echo(json.dumps(result.metrics, indent=2))
    else:
        typer.echo(format_table(result.metrics))
    echo(f"parity plots: {', '.join(str(p) for p in written)}")


@app.command()
def export(
    ckpt: Annotated[Path, typer.Argument(help="A checkpoint written by mftrain fit.")],
    head: Annotated[str, typer.Option("--head", help="The level whose head to export.")],
    out: Annotated[Path, typer.Option("--out", help="The package to write (*.nequip.zip).")],
) -> None:
    """One head as a standard nequip package (.nequip.zip) for nequip's ASE calculator
    (NequIPCalculator._from_saved_model). Checkpoints and packages are pickles: trusted files
    only."""
    from mftrain.export import export_head

    written = export_head(ckpt, head, out)
    typer.echo(f"wrote {written}: head {head} of {ckpt}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Directory for the store and the run.")] = Path(
        "mfkit-demo"
    ),
    max_steps: Annotated[int, typer.Option(help="Training steps.")] = 150,
) -> None:
    """The embedded default: convert the bundled ANI-1x/ANI-1ccx sample, train a tiny two-head
    model (ωB97X/6-31G(d) energies and forces, CCSD(T)*/CBS energies) and score it."""
    from mfdata.resources import example_file
    from mfdata.split import make_split
    from mfdata.store.store import Store
    from mftrain.config import load_config, with_overrides
    from mftrain.evaluate import evaluate as run_eval
    from mftrain.evaluate import format_table, plot_parity
    from mftrain.train import fit as run_fit

    store, run = out / "ani1_n5", out / "run"
    if not store.exists():
        from mfdata.cli import convert

        convert([Path(str(example_file("ani1_n5.hdf5")))], out=store, name="mfkit-demo-ani1_n5")
        # 8 conformers: split by structure so that every part has one
        make_split(Store(store), "default", by="structure", fractions=[0.5, 0.25, 0.25], seed=0)
    settings = with_overrides(
        load_config(None),
        {
            "data.stores": [str(store)],
            "data.levels": ["wb97x-631gd", "ccsdt-star-cbs"],
            "data.batch_size": 2,
            "model.num_layers": 1,
            "model.num_features": 8,
            "trainer.max_steps": max_steps,
            "trainer.progress_bar": False,
            "out": str(run),
        },
    )
    run_fit(settings, echo=typer.echo)
    result = run_eval(run / "best.ckpt", str(store), split="default:test", echo=typer.echo)
    typer.echo(format_table(result.metrics))
    written = plot_parity(result, run / "eval-test")
    typer.echo(f"parity plots: {', '.join(str(p) for p in written)}")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except USER_ERRORS as exc:
        typer.echo(f"mftrain: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
