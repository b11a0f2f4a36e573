"""The ``mftrain`` command: train multi-head NequIP potentials on mfkit stores, and score them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mfdata.errors import MfkitError
from mftrain.studies import options

if TYPE_CHECKING:
    from mftrain.studies.args import StudyArgs
    from mftrain.studies.recipe import Recipe

app = typer.Typer(
    help="Multi-head NequIP potentials over levels of theory: train (fit), score (eval), export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# errors a user can act on: one line and exit status 2; anything else is a bug (a traceback)
USER_ERRORS = (MfkitError, FileExistsError, FileNotFoundError, IsADirectoryError)
# Optimiser steps per run and seed: the studies' default (the same for every model), and the
# demo's, which finishes within 6 minutes on 2 cores (README, "Studies").
STUDY_STEPS = 6000
DEMO_STEPS = 3000


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
    max_time: Annotated[
        float | None,
        typer.Option(help="Wall-clock budget in minutes; training ends at steps or time, first."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="The store's split to train and validate on (default).")
    ] = None,
    val_every: Annotated[
        int | None,
        typer.Option(help="Validate every N steps (default: after every epoch and at the end)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Structures per batch.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the model, split and sampler.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default mftrain-run).")
    ] = None,
) -> None:
    """Train a model: writes DIR/last.ckpt, DIR/best.ckpt, DIR/learning_curve.png and the
    resolved configs, and validates at least once (at the end); rerun to resume an interrupted
    run from DIR/last.ckpt. Flags override the config. Checkpoints are
    pickles (loading one runs code in it): resume only from a DIR you trust."""
    from mftrain.config import load_config, with_overrides

    overrides: dict = {}
    if data:
        overrides["data.stores"] = list(data)
    if strategy is not None:
        overrides["strategy"] = strategy
    if levels is not None:
        overrides["data.levels"] = [lvl.strip() for lvl in levels.split(",") if lvl.strip()]
    for key, value in (
        ("trainer.max_steps", max_steps),
        ("trainer.max_time_minutes", max_time),
        ("data.split", split),
        ("trainer.val_every_n_steps", val_every),
        ("data.batch_size", batch_size),
        ("optimizer.lr", lr),
        ("seed", seed),
    ):
        if value is not None:
            overrides[key] = value
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
    structure, force MAE/RMSE, counts; parity plots as PNG. The checkpoint is a pickle (loading
    it runs code in it): evaluate only checkpoints you trust."""
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
def show(
    path: Annotated[Path, typer.Argument(help="A checkpoint, or a package mftrain exported.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What a model says about itself: heads with their level definitions and reference
    energies, strategy, training data (store checksums, split), steps and validation metrics.
    A checkpoint is a pickle (reading it runs code in it): trusted files only; a package's
    description is read from its YAML metadata without loading the model."""
    from mftrain.show import describe, format_description

    description = describe(path)
    typer.echo(json.dumps(description, indent=2) if json_out else format_description(description))


@app.command()
def demo(
    out: options.Out = Path("mfkit-demo"),
    steps: options.Steps = DEMO_STEPS,
    budget_minutes: options.BudgetMinutes = None,
    md: options.MD = True,
) -> None:
    """The embedded default: the low-forces-high-energies study on the bundled methanol data
    (GFN2-xTB energies and forces, 100 wB97X/6-31G(d) energies), one seed, printing the
    comparison table."""
    study_low_forces(out=out, steps=steps, budget_minutes=budget_minutes, md=md, seeds=1)


study_app = typer.Typer(
    help="Study recipes: comparisons on one store, each writing a Markdown report with PNG "
    "plots, a JSON of the numbers, and every run's config and seed.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")


@study_app.command("low-forces-high-energies")
def study_low_forces(
    data: options.Data = None,
    low: Annotated[str, typer.Option(help="The cheap level: energies and forces.")] = "gfn2-xtb",
    high: Annotated[
        str, typer.Option(help="The expensive level: energies (forces only score).")
    ] = "wb97x-631gd-pyscf",
    n_high: Annotated[
        str,
        typer.Option(
            help="High-level energies used in training; several (e.g. 25,50,100,200) draw a "
            "learning curve."
        ),
    ] = "100",
    n_test: options.NTest = 50,
    seeds: options.Seeds = 3,
    steps: options.Steps = STUDY_STEPS,
    budget_minutes: options.BudgetMinutes = None,
    config: options.Config = None,
    md: options.MD = True,
    md_steps: options.MDSteps = 400,
    jobs: options.Jobs = None,
    json_out: Annotated[
        Path | None, typer.Option("--json-out", help="Also write the JSON of numbers here.")
    ] = None,
    out: options.Out = Path("study-low-forces-high-energies"),
) -> None:
    """energy_only, multi_fidelity(_delta), energy_forces and the low-level forces themselves,
    scored on the high level's forces and energies of held-out structures."""
    from mftrain.studies.low_forces import LowForces, LowForcesArgs

    args = LowForcesArgs(
        data=data,
        n_test=n_test,
        seeds=seeds,
        steps=steps,
        budget_minutes=budget_minutes,
        config=config,
        jobs=jobs,
        out=out,
        low=low,
        high=high,
        n_high=options.size_list(n_high, "--n-high"),
        md=md,
        md_steps=md_steps,
    )
    _run_study(LowForces, args, json_out)


@study_app.command("representations")
def study_representations(
    data: options.Data = None,
    levels: options.Levels = None,
    n_test: options.NTest = 20,
    seeds: options.Seeds = 2,
    steps: options.Steps = STUDY_STEPS,
    budget_minutes: options.BudgetMinutes = None,
    config: options.Config = None,
    jobs: options.Jobs = None,
    out: options.Out = Path("study-representations"),
) -> None:
    """Linear CKA between the backbones of single-level models and a multi-head model, on the
    same held-out structures (two seeds or more give the seed-to-seed reference)."""
    from mftrain.studies.representations import Representations, RepresentationsArgs

    args = RepresentationsArgs(
        data=data,
        n_test=n_test,
        seeds=seeds,
        steps=steps,
        budget_minutes=budget_minutes,
        config=config,
        jobs=jobs,
        out=out,
        levels=options.level_list(levels),
    )
    _run_study(Representations, args)


@study_app.command("pretrain-finetune")
def study_pretrain_finetune(
    data: options.Data = None,
    pretrain: Annotated[
        str, typer.Option(help="Pre-training level (energies and forces).")
    ] = "gfn2-xtb",
    finetune: Annotated[str, typer.Option(help="Fine-tuning level.")] = "wb97x-631gd-pyscf",
    sizes: Annotated[
        str, typer.Option(help="Fine-tuning set sizes N, e.g. 10,25,50,100.")
    ] = "10,25,50,100",
    n_test: options.NTest = 50,
    seeds: options.Seeds = 1,
    steps: options.Steps = STUDY_STEPS // 2,
    budget_minutes: options.BudgetMinutes = None,
    pretrain_steps: Annotated[
        int | None, typer.Option(help="Pre-training steps (the same for every seed).")
    ] = STUDY_STEPS,
    pretrain_minutes: Annotated[
        float | None, typer.Option(help="Also stop pre-training after these minutes.")
    ] = None,
    config: options.Config = None,
    jobs: options.Jobs = None,
    out: options.Out = Path("study-pretrain-finetune"),
) -> None:
    """From scratch against pre-trained and fine-tuned (full, frozen backbone, discriminative
    learning rates, energies only) at several fine-tuning set sizes: learning curves."""
    from mftrain.studies.pretrain_finetune import PretrainFinetune, PretrainFinetuneArgs

    args = PretrainFinetuneArgs(
        data=data,
        n_test=n_test,
        seeds=seeds,
        steps=steps,
        budget_minutes=budget_minutes,
        config=config,
        jobs=jobs,
        out=out,
        pretrain=pretrain,
        finetune=finetune,
        sizes=options.size_list(sizes),
        pretrain_steps=pretrain_steps,
        pretrain_minutes=pretrain_minutes,
    )
    _run_study(PretrainFinetune, args)


@study_app.command("multihead-vs-finetune")
def study_multihead_vs_finetune(
    data: options.Data = None,
    levels: options.Levels = None,
    pretrain: Annotated[
        str | None,
        typer.Option(help="Level the fine-tuned models start from (default: the most data)."),
    ] = None,
    n_test: options.NTest = 20,
    seeds: options.Seeds = 1,
    steps: options.Steps = STUDY_STEPS,
    budget_minutes: options.BudgetMinutes = None,
    config: options.Config = None,
    jobs: options.Jobs = None,
    out: options.Out = Path("study-multihead-vs-finetune"),
) -> None:
    """Single-level models, one multi-head model and pre-trained/fine-tuned models, each scored
    on every level it has a head for."""
    from mftrain.studies.multihead_vs_finetune import (
        MultiheadVsFinetune,
        MultiheadVsFinetuneArgs,
    )

    args = MultiheadVsFinetuneArgs(
        data=data,
        n_test=n_test,
        seeds=seeds,
        steps=steps,
        budget_minutes=budget_minutes,
        config=config,
        jobs=jobs,
        out=out,
        levels=options.level_list(levels),
        pretrain=pretrain,
    )
    _run_study(MultiheadVsFinetune, args)


def _run_study(recipe: type[Recipe], args: StudyArgs, json_out: Path | None = None) -> None:
    """Run a study, optionally copy its numbers to ``json_out``, print where they are and its
    comparison table."""
    from mftrain.studies.runner import run_study

    summary = run_study(recipe, args, echo=typer.echo)
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    out = Path(args.out)
    typer.echo(f"report: {out / 'report.md'}; numbers: {out / 'results.json'}")
    typer.echo(recipe.table(summary))


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except USER_ERRORS as exc:
        typer.echo(f"mftrain: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
