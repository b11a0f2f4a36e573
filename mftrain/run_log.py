"""A run's metrics log, read and drawn: Lightning's CSV logs under ``RUN/logs/version_*/``.

One reader for everything that looks back at a run: ``fit``'s ``learning_curve.png``, the
fine-tuning stages' summaries and the studies' learning curves. A resumed run appends a new
``version_N`` directory; the versions are read in their numeric order.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from mftrain.checkpoint import MONITOR

TRAIN_LOSS = "train_loss_step/weighted_sum"
VAL_PREFIX = "val0_epoch/"


def metrics_files(run: Path) -> list[Path]:
    """``RUN/logs/version_*/metrics.csv``, oldest version first."""
    found = (Path(run) / "logs").glob("version_*/metrics.csv")
    return sorted(found, key=lambda p: int(p.parent.name.removeprefix("version_") or 0))


def read_rows(run: Path) -> list[dict[str, float]]:
    """Every logged row of the run, its empty cells left out (``step`` as a float too)."""
    rows = []
    for path in metrics_files(run):
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                rows.append({key: float(value) for key, value in row.items() if value})
    return rows


def series(rows: list[dict[str, float]]) -> dict[str, list[tuple[int, float]]]:
    """Every metric column as (step, value) pairs in step order."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("epoch", "step"):
                curves.setdefault(key, []).append((int(row["step"]), value))
    return {key: sorted(points) for key, points in curves.items()}


def validation_rows(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """The rows a validation wrote (those with the monitored loss)."""
    return [row for row in rows if MONITOR in row]


def validation_summary(row: dict[str, float], levels: list[str]) -> dict:
    """One validation: its step, monitored loss and metrics per level (eV, eV/Å)."""
    per_level = {}
    for level in levels:
        prefix = f"{VAL_PREFIX}{level}/"
        values = {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix)}
        if values:
            per_level[level] = values
    return {"step": int(row["step"]), "loss": row[MONITOR], "levels": per_level}


def validation_line(validation: dict[str, Any], levels: list[str]) -> str:
    """``validation at step S: loss L; LEVEL energy X meV/atom, forces Y meV/Å; ...``."""
    metrics = validation.get("metrics", {})
    parts = []
    for level in levels:
        shown = [
            f"{what} {metrics[key] * 1000:.4g} {unit}"
            for what, key, unit in (
                ("energy", f"{VAL_PREFIX}{level}/energy_per_atom_mae", "meV/atom"),
                ("forces", f"{VAL_PREFIX}{level}/forces_mae", "meV/Å"),
            )
            if key in metrics
        ]
        if shown:
            parts.append(f"{level} {', '.join(shown)}")
    loss = metrics.get(MONITOR)
    head = f"validation at step {validation.get('step')}: loss " + (
        "n/a" if loss is None else f"{loss:.4g}"
    )
    return "; ".join([head, *parts]) + (" (MAE)" if parts else "")


def plot_learning_curve(run: Path, levels: list[str]) -> Path | None:
    """``RUN/learning_curve.png``: training and validation loss, and each level's validation
    energy MAE per atom and force MAE, against the optimiser step; None when nothing was logged."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    curves = series(read_rows(run))
    if not curves:
        return None
    panels = [
        (
            "loss (weighted sum)",
            {"training": curves.get(TRAIN_LOSS, []), "validation": curves.get(MONITOR, [])},
        ),
        (
            "validation energy MAE (meV/atom)",
            {level: curves.get(f"{VAL_PREFIX}{level}/energy_per_atom_mae", []) for level in levels},
        ),
        (
            "validation force MAE (meV/Å)",
            {level: curves.get(f"{VAL_PREFIX}{level}/forces_mae", []) for level in levels},
        ),
    ]
    fig = Figure(figsize=(14.0, 4.0))
    axes = fig.subplots(1, len(panels))
    for i, (ax, (label, lines)) in enumerate(zip(axes, panels, strict=True)):
        scale = 1.0 if i == 0 else 1000.0  # eV -> meV
        for k, (name, points) in enumerate(lines.items()):
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            steps = [step + 1 for step in steps]  # a log row's step counts from 0
            marker = "o" if name != "training" else None
            ax.plot(
                steps,
                [v * scale for v in values],
                color=f"C{k}",
                marker=marker,
                ms=4,
                lw=1.0,
                label=name,
            )
        if ax.lines:
            ax.set_yscale("log")
            # plain numbers; minor ticks labelled only where the axis spans under a decade
            plain = FormatStrFormatter("%g")
            low, high = ax.get_ylim()
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain if high < 10 * low else NullFormatter())
            ax.tick_params(axis="y", which="minor", labelsize=7)
            ax.legend(fontsize=7)
        ax.set_xlabel("optimiser steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    sources = ", ".join(str(p.relative_to(run)) for p in metrics_files(run))
    fig.suptitle(f"{Path(run).name}: learning curve (from {sources})", fontsize=9)
    fig.tight_layout()
    path = Path(run) / "learning_curve.png"
    fig.savefig(path, dpi=100)
    return path
