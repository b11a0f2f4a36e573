"""The ``mftrain`` command: train multi-head NequIP potentials on mfkit stores, and score them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mfdata.errors import MfkitError
from mftrain.config import ConfigError

app = typer.Typer(
    help="Multi-head NequIP potentials over levels of theory: train (fit), score (eval), export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# errors a user can act on: one line and exit status 2; anything else is a bug (a traceback)
USER_ERRORS = (MfkitError, FileExistsError, FileNotFoundError, IsADirectoryError)


@app.command()
def fit(
    config: Annotated[
        Path | None, typer.Argument(help="mftrain training config (YAML); defaults without one.")
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", help="A store (path or registered name); repeatable."),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="single, multihead, pretrain_finetune, multihead_finetune, fidelity_embedding "
            "or delta (the config's `strategy`)."
        ),
    ] = None,
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

    from mftrain.fit import fit as run_fit

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
    out: Annotated[Path, typer.Option(help="Study directory.")] = Path("mfkit-demo"),
    budget_minutes: Annotated[
        float, typer.Option(help="Training wall-clock minutes per model.")
    ] = 2.0,
    md: Annotated[bool, typer.Option(help="Run the MD check on the exported heads.")] = True,
) -> None:
    """The embedded default: the low-forces-high-energies study on the bundled methanol data
    (GFN2-xTB energies and forces, 100 wB97X/6-31G(d) energies), printing the comparison table."""
    study_low_forces(out=out, budget_minutes=budget_minutes, md=md)


study_app = typer.Typer(
    help="Study recipes: comparisons on one store, each writing a Markdown report with PNG "
    "plots, a JSON of the numbers, and every run's config and seed.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")


@study_app.command("low-forces-high-energies")
def study_low_forces(
    data: Annotated[
        str | None,
        typer.Option("--data", help="A store (path or name); default: the bundled dataset."),
    ] = None,
    low: Annotated[str, typer.Option(help="The cheap level: energies and forces.")] = "gfn2-xtb",
    high: Annotated[
        str, typer.Option(help="The expensive level: energies (forces only score).")
    ] = "wb97x-631gd-pyscf",
    n_high: Annotated[int, typer.Option(help="High-level energies used in training.")] = 100,
    n_test: Annotated[int, typer.Option(help="Held-out test structures.")] = 50,
    seeds: Annotated[int, typer.Option(help="Repeats of the comparison (seeds 0..K-1).")] = 1,
    budget_minutes: Annotated[
        float, typer.Option(help="Training wall-clock minutes per model and seed.")
    ] = 2.0,
    config: Annotated[
        Path | None,
        typer.Option(help="Base mftrain config every model shares (default: the study's)."),
    ] = None,
    md: Annotated[bool, typer.Option(help="Run the MD check on the exported heads.")] = True,
    jobs: Annotated[
        int | None, typer.Option(help="Runs at a time (default: one per CPU core).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json-out", help="Also write the JSON of numbers here.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Study directory.")] = Path(
        "study-low-forces-high-energies"
    ),
) -> None:
    """energy_only, multi_fidelity(_delta), energy_forces and the low-level forces themselves,
    scored on the high level's forces and energies of held-out structures."""
    from mftrain.study import default_store
    from mftrain.study_low_forces import LowForcesArgs, format_comparison, run_study

    args = LowForcesArgs(
        data=data or default_store(),
        low=low,
        high=high,
        n_high=n_high,
        n_test=n_test,
        seeds=seeds,
        budget_minutes=budget_minutes,
        config=None if config is None else str(config),
        md=md,
        out=str(out),
        jobs=jobs,
    )
    summary = run_study(args, echo=typer.echo)
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _show_study(out, format_comparison(summary))


@study_app.command("representations")
def study_representations(
    data: Annotated[
        str | None,
        typer.Option("--data", help="A store (path or name); default: the bundled dataset."),
    ] = None,
    levels: Annotated[
        str | None, typer.Option(help="Levels to compare, e.g. gfn2-xtb,wb97x (default: all).")
    ] = None,
    n_test: Annotated[int, typer.Option(help="Held-out test structures.")] = 20,
    seeds: Annotated[int, typer.Option(help="Seeds (two or more give the reference).")] = 2,
    budget_minutes: Annotated[
        float, typer.Option(help="Training wall-clock minutes per model and seed.")
    ] = 2.0,
    config: Annotated[
        Path | None,
        typer.Option(help="Base mftrain config every model shares (default: the study's)."),
    ] = None,
    jobs: Annotated[
        int | None, typer.Option(help="Runs at a time (default: one per CPU core).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Study directory.")] = Path("study-representations"),
) -> None:
    """Linear CKA between the backbones of single-level models and a multi-head model, on the
    same held-out structures."""
    from mftrain.study import default_store
    from mftrain.study_representations import RepresentationsArgs, format_cka, run_study

    args = RepresentationsArgs(
        data=data or default_store(),
        levels=_levels_option(levels),
        n_test=n_test,
        seeds=seeds,
        budget_minutes=budget_minutes,
        config=None if config is None else str(config),
        out=str(out),
        jobs=jobs,
    )
    summary = run_study(args, echo=typer.echo)
    _show_study(out, format_cka(summary))


def _show_study(out: Path, table: str) -> None:
    typer.echo(f"report: {out / 'report.md'}; numbers: {out / 'results.json'}")
    typer.echo(table)


def _levels_option(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


@study_app.command("pretrain-finetune")
def study_pretrain_finetune(
    data: Annotated[
        str | None,
        typer.Option("--data", help="A store (path or name); default: the bundled dataset."),
    ] = None,
    pretrain: Annotated[
        str, typer.Option(help="Pre-training level (energies and forces).")
    ] = "gfn2-xtb",
    finetune: Annotated[str, typer.Option(help="Fine-tuning level.")] = "wb97x-631gd-pyscf",
    sizes: Annotated[
        str, typer.Option(help="Fine-tuning set sizes N, e.g. 10,25,50,100.")
    ] = "10,25,50,100",
    n_test: Annotated[int, typer.Option(help="Held-out test structures.")] = 50,
    seeds: Annotated[int, typer.Option(help="Repeats (seeds 0..K-1).")] = 1,
    budget_minutes: Annotated[
        float, typer.Option(help="Training minutes per run (fine-tuning: stage 2).")
    ] = 1.0,
    pretrain_minutes: Annotated[float, typer.Option(help="Pre-training minutes.")] = 2.0,
    config: Annotated[
        Path | None,
        typer.Option(help="Base mftrain config every run shares (default: the study's)."),
    ] = None,
    jobs: Annotated[
        int | None, typer.Option(help="Runs at a time (default: one per CPU core).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Study directory.")] = Path("study-pretrain-finetune"),
) -> None:
    """From scratch against pre-trained and fine-tuned (full, frozen backbone, discriminative
    learning rates, energies only) at several fine-tuning set sizes: learning curves."""
    from mftrain.study import default_store
    from mftrain.study_transfer import (
        PretrainFinetuneArgs,
        format_learning_curves,
        pretrain_finetune,
    )

    try:
        sizes_list = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--sizes {sizes!r}: expected comma-separated integers") from None
    args = PretrainFinetuneArgs(
        data=data or default_store(),
        pretrain=pretrain,
        finetune=finetune,
        sizes=sizes_list,
        n_test=n_test,
        seeds=seeds,
        budget_minutes=budget_minutes,
        pretrain_minutes=pretrain_minutes,
        config=None if config is None else str(config),
        out=str(out),
        jobs=jobs,
    )
    summary = pretrain_finetune(args, echo=typer.echo)
    _show_study(out, format_learning_curves(summary))


@study_app.command("multihead-vs-finetune")
def study_multihead_vs_finetune(
    data: Annotated[
        str | None,
        typer.Option("--data", help="A store (path or name); default: the bundled dataset."),
    ] = None,
    levels: Annotated[
        str | None, typer.Option(help="Levels, e.g. gfn2-xtb,wb97x (default: all).")
    ] = None,
    pretrain: Annotated[
        str | None,
        typer.Option(help="Level the fine-tuned models start from (default: the most data)."),
    ] = None,
    n_test: Annotated[int, typer.Option(help="Held-out test structures (with every level).")] = 20,
    seeds: Annotated[int, typer.Option(help="Repeats (seeds 0..K-1).")] = 1,
    budget_minutes: Annotated[float, typer.Option(help="Training minutes per run.")] = 2.0,
    config: Annotated[
        Path | None,
        typer.Option(help="Base mftrain config every run shares (default: the study's)."),
    ] = None,
    jobs: Annotated[
        int | None, typer.Option(help="Runs at a time (default: one per CPU core).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Study directory.")] = Path(
        "study-multihead-vs-finetune"
    ),
) -> None:
    """Single-level models, one multi-head model and pre-trained/fine-tuned models, each scored
    on every level it has a head for."""
    from mftrain.study import default_store
    from mftrain.study_transfer import (
        MultiheadVsFinetuneArgs,
        format_every_level,
        multihead_vs_finetune,
    )

    args = MultiheadVsFinetuneArgs(
        data=data or default_store(),
        levels=_levels_option(levels),
        pretrain=pretrain,
        n_test=n_test,
        seeds=seeds,
        budget_minutes=budget_minutes,
        config=None if config is None else str(config),
        out=str(out),
        jobs=jobs,
    )
    summary = multihead_vs_finetune(args, echo=typer.echo)
    _show_study(out, format_every_level(summary))


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except USER_ERRORS as exc:
        typer.echo(f"mftrain: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
