"""PNG figures of the study reports: bars, parity grids, curves, a heatmap, learning curves.

Figures are drawn with matplotlib's object API (no pyplot, no GUI backend, nothing global), one
file per call under the study's ``figures/`` directory (:func:`figures_dir`); every function
returns the path it wrote. A run's logged metrics come from :mod:`mftrain.run_log`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def figures_dir(out: Path) -> Path:
    """``OUT/figures``, created if missing."""
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    return figures


def _save(fig: Figure, path: Path, title: str | None) -> Path:
    """Title (when the panels have none of their own), lay out and write a figure."""
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def bar_chart(
    path: Path,
    names: Sequence[str],
    panels: Sequence[tuple[str, Sequence[Sequence[float | None]]]],
    title: str,
    hatched: Sequence[str] = (),
) -> Path:
    """One panel per (y label, per-name values over seeds): bars at the mean, a black error bar
    of one standard deviation, and every seed's value as a dot. ``hatched`` names are drawn
    hatched (e.g. a baseline that is not a trained model)."""
    width = (1.4 + 0.8 * len(names)) * len(panels)
    fig = Figure(figsize=(width, 4.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    x = np.arange(len(names))
    for ax, (label, values) in zip(axes, panels, strict=True):
        for i, (name, seeds) in enumerate(zip(names, values, strict=True)):
            seeds = np.asarray([v for v in seeds if v is not None and np.isfinite(v)], float)
            if len(seeds) == 0:
                continue
            ax.bar(
                i,
                seeds.mean(),
                color=f"C{i}",
                alpha=0.75,
                hatch="//" if name in hatched else None,
                yerr=seeds.std(ddof=1) if len(seeds) > 1 else None,
                capsize=4,
            )
            ax.scatter(np.full(len(seeds), i), seeds, color="k", s=10, zorder=3)
            ax.annotate(
                f"{seeds.mean():.3g}", (i, seeds.mean()), ha="center", va="bottom", fontsize=8
            )
        ax.set_xticks(x, names, rotation=25, ha="right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path, title)


def parity_grid(
    path: Path,
    columns: Sequence[tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]],
    rows: Sequence[tuple[str, str]],
    title: str,
) -> Path:
    """Predicted against reference: one column per model (name, {quantity: (true, pred)}), one
    row per (quantity, axis label); a missing quantity leaves its panel empty."""
    fig = Figure(figsize=(3.1 * len(columns), 3.0 * len(rows)))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for j, (name, data) in enumerate(columns):
        for i, (quantity, label) in enumerate(rows):
            ax = axes[i][j]
            if quantity not in data or len(data[quantity][0]) == 0:
                ax.axis("off")
                continue
            true, pred = (np.asarray(a, float) for a in data[quantity])
            lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1)
            ax.scatter(true, pred, s=4, alpha=0.5, color=f"C{j}")
            mae = float(np.mean(np.abs(pred - true)))
            unit = label.split("(")[-1].rstrip(")")
            ax.set_title(f"{name}\nMAE {mae * 1000:.1f} m{unit}", fontsize=9)
            ax.set_xlabel(f"reference {label}", fontsize=8)
            ax.set_ylabel(f"predicted {label}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_locator(MaxNLocator(4))
    return _save(fig, path, title)


def curves(
    path: Path,
    panels: Sequence[tuple[str, dict[str, list[tuple[float, float]]]]],
    xlabel: str,
    title: str,
    yscale: str = "log",
) -> Path:
    """One panel per (y label, {series name: [(x, y), ...]}), lines in series order; ``yscale``
    as matplotlib's (``symlog``: linear near 0, for series far apart in size)."""
    fig = Figure(figsize=(max(6.0, 4.6 * len(panels)), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, series) in zip(axes, panels, strict=True):
        for k, (name, points) in enumerate(series.items()):
            if not points:
                continue
            x, y = zip(*points, strict=True)
            ax.plot(x, y, color=f"C{k}", label=name, lw=1.2, marker="." if len(x) < 30 else None)
        if yscale == "symlog":
            ax.set_yscale("symlog", linthresh=1.0)
        else:
            ax.set_yscale(yscale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path, title)


def heatmap(path: Path, names: Sequence[str], matrix: np.ndarray, title: str) -> Path:
    """A square matrix of values in [0, 1] with the value in every cell."""
    size = 1.6 + 1.1 * len(names)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.subplots()
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            color = "k" if matrix[i, j] > 0.6 else "w"
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color=color)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title)
    return _save(fig, path, None)


def learning_curves_by_size(
    path: Path,
    panels: Sequence[tuple[str, dict[str, list[tuple[int, Sequence[float | None]]]]]],
    title: str,
    dashed: Sequence[str] = (),
) -> Path:
    """Error against training-set size, log-log: one panel per (y label, {model: [(N, values
    over seeds)]}); the mean with a one-standard-deviation band, every seed as a dot. ``dashed``
    models are drawn as black dashed lines (e.g. a baseline that is not a trained model)."""
    fig = Figure(figsize=(5.0 * len(panels), 4.0))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, series) in zip(axes, panels, strict=True):
        for k, (name, points) in enumerate(series.items()):
            xs, means, stds = [], [], []
            for n, values in points:
                values = np.asarray([v for v in values if v is not None], float)
                if len(values) == 0:
                    continue
                xs.append(n)
                means.append(values.mean())
                stds.append(values.std(ddof=1) if len(values) > 1 else 0.0)
                ax.scatter(np.full(len(values), n), values, color=f"C{k}", s=8, alpha=0.6)
            if not xs:
                continue
            means, stds = np.asarray(means), np.asarray(stds)
            if name in dashed:
                ax.plot(xs, means, color="k", linestyle="--", label=name)
                continue
            ax.plot(xs, means, color=f"C{k}", marker="o", label=name)
            ax.fill_between(xs, means - stds, means + stds, color=f"C{k}", alpha=0.15)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training structures N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return _save(fig, path, title)
