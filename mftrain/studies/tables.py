"""Numbers over seeds, and the tables of the reports (Markdown) and of the terminal (text).

:func:`summarise` gives every metric's mean, standard deviation and range over seeds (None where
it cannot be computed, never NaN), which every results.json entry carries; :func:`show` and
:func:`show_spread` print values in milli-units (meV/Å, meV/atom), ``-`` for a missing one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SEED_METRICS = ("forces_mae", "energy_mae_per_atom", "forces_rmse", "energy_rmse_per_atom")
# the errors the reports tabulate and plot: metric -> (what, per what)
QUANTITIES = {"forces_mae": ("force MAE", "Å"), "energy_mae_per_atom": ("energy MAE", "atom")}


def summarise(per_seed: Sequence[dict], keys: Sequence[str] = SEED_METRICS) -> dict[str, Any]:
    """Per key over the seeds' values: ``key`` (mean), ``key_std`` (None with one value) and
    ``key_range`` ([min, max]); None where no seed has the key."""
    out: dict[str, Any] = {}
    for key in keys:
        data = np.asarray([r[key] for r in per_seed if r.get(key) is not None], dtype=float)
        out[key] = float(data.mean()) if len(data) else None
        out[f"{key}_std"] = float(data.std(ddof=1)) if len(data) > 1 else None
        out[f"{key}_range"] = [float(data.min()), float(data.max())] if len(data) else None
    return out


def show(value: float | None, scale: float = 1000.0, digits: int = 1) -> str:
    """``value`` × ``scale`` with ``digits`` decimals; ``-`` for None or a non-finite value."""
    return "-" if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def show_spread(entry: dict, key: str, digits: int = 1) -> str:
    """``entry[key]`` ± ``entry[key_std]`` (from :func:`summarise`) in milli-units."""
    text = show(entry.get(key), digits=digits)
    if entry.get(f"{key}_std") is not None:
        text += f" ± {show(entry[f'{key}_std'], digits=digits)}"
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns right-aligned, the first left-aligned, two spaces apart."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).rjust(w) for c, w in zip(row, widths, strict=True)]
        cells[0] = str(row[0]).ljust(widths[0])
        lines.append("  ".join(cells))
    return "\n".join(lines)
