"""The options every ``mftrain study`` command shares, declared once.

Each alias is a type with its typer option (name and help); a command gives it a default in its
signature (``n_test: NTest = 50``), so every recipe spells and documents an option the same way
while keeping its own default. The helpers turn the comma-separated options into lists. This
module imports typer only: the command line loads it at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mfdata.errors import UsageError

Data = Annotated[
    str | None,
    typer.Option("--data", help="A store (path or name); default: the bundled dataset."),
]
Levels = Annotated[
    str | None, typer.Option(help="Levels to compare, e.g. gfn2-xtb,wb97x (default: all).")
]
NTest = Annotated[int, typer.Option(help="Held-out test structures (with every scored label).")]
Seeds = Annotated[int, typer.Option(help="Repeats of the comparison (seeds 0..K-1).")]
Steps = Annotated[
    int | None,
    typer.Option(
        help="Optimiser steps per run and seed, the same for every model (fine-tuning: stage 2)."
    ),
]
BudgetMinutes = Annotated[
    float | None,
    typer.Option(
        help="Also stop each run after this many wall-clock minutes (default: steps alone)."
    ),
]
Config = Annotated[
    Path | None,
    typer.Option(help="Base mftrain config every run shares (default: the study's)."),
]
MD = Annotated[bool, typer.Option(help="Run the MD check on the exported heads.")]
MDSteps = Annotated[
    int, typer.Option(help="NVE steps of the MD check (0.5 fs), after half as many Langevin steps.")
]
Jobs = Annotated[int | None, typer.Option(help="Runs at a time (default: one per CPU core).")]
Out = Annotated[Path, typer.Option(help="Study directory.")]


def level_list(text: str | None) -> list[str] | None:
    """``--levels a,b``: the names given, or None for none."""
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def size_list(text: str, option: str = "--sizes") -> list[int]:
    """``--sizes 10,25``: the sizes; UsageError for anything but integers."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated integers") from None
