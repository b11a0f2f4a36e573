"""``mftrain study representations``: do backbones trained on different levels learn alike?

Gardner et al. (2025) find pre-trained representations method-specific, and multi-head
backbones method-agnostic. This recipe trains, for every seed, one single-level model per level
and one multi-head model on all levels, and compares their backbones by linear CKA
(:func:`mftrain.studies.cka.linear_cka`) of the node features after the last interaction layer
on the same held-out structures (one row per atom). Two seeds or more of the same model give
the reference: how alike two backbones trained on the same data are. Each model's errors on its
own levels show that it learned something.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfdata.progress import Echo
from mfdata.store.store import Store
from mftrain.studies.args import Budget, StudyArgs
from mftrain.studies.cka import backbone_features, linear_cka
from mftrain.studies.configs import MULTIHEAD, multihead, single, single_name
from mftrain.studies.data import StudyData, require_levels
from mftrain.studies.plots import figures_dir, heatmap
from mftrain.studies.recipe import Job, Recipe, Results, Scored, Seed
from mftrain.studies.tables import markdown_table, show, text_table

FEATURES = "node features after the last interaction layer, one row per atom of the test structures"


@dataclass(kw_only=True)
class RepresentationsArgs(StudyArgs):
    levels: list[str] | None = None  # None: every level of the store


class Representations(Recipe[RepresentationsArgs]):
    """Single-level models and one multi-head model, compared by CKA of their backbones."""

    name = "representations"

    def __init__(self, args: RepresentationsArgs, store: Store) -> None:
        super().__init__(args, store)
        known = store.manifest.levels
        self.levels = require_levels(store, args.levels, "--levels")
        self.scored = [
            (level, kind)
            for level in self.levels
            for kind in ("energy", "forces")
            if kind in known[level].labels
        ]
        self.scarce = min(self.levels, key=lambda level: known[level].labels["energy"].count)
        self.models = {single_name(level): single(level) for level in self.levels}
        self.models[MULTIHEAD] = multihead(self.levels)

    def plan(self) -> dict[str, Any]:
        return {"levels": self.levels}

    def jobs(self, seed: Seed) -> list[Job]:
        budget, stores = self.args.budget(), seed.training()
        return [
            Job(name, seed.seed, seed.root / name, stores, model, budget)
            for name, model in self.models.items()
        ]

    def results(
        self, data: StudyData, seeds: list[Seed], runs: list[Scored], echo: Echo
    ) -> Results:
        names, numbers = list(self.models), [s.seed for s in seeds]
        scores: dict[str, dict[str, dict]] = {name: {} for name in names}
        features = {}
        for run in runs:
            record = {**run.metrics, "steps": run.steps, "seconds": run.seconds}
            scores[run.job.name][str(run.job.seed)] = record
            features[run.job.name, run.job.seed] = backbone_features(run.checkpoint, data.test)
        same_seed = {
            a: {
                b: float(np.mean([linear_cka(features[a, s], features[b, s]) for s in numbers]))
                for b in names
            }
            for a in names
        }
        pairs = list(itertools.combinations(numbers, 2))
        across_seeds = {
            a: float(np.mean([linear_cka(features[a, s], features[a, t]) for s, t in pairs]))
            if pairs
            else None
            for a in names
        }
        entries = {"cka": same_seed, "cka_seed_to_seed": across_seeds, "scores": scores}
        return Results(entries, {"features": FEATURES})

    @staticmethod
    def table(summary: dict[str, Any]) -> str:
        return text_table(*cka_table(summary))

    def report(self, out: Path, summary: dict[str, Any], arrays: dict[str, Any]) -> str:
        """The CKA heatmap and table, each model's errors, then the text."""
        names = list(summary["cka"])
        matrix = np.array([[summary["cka"][a][b] for b in names] for a in names])
        title = "linear CKA of backbone features (test atoms)"
        heatmap(figures_dir(out) / "cka.png", names, matrix, title)
        args = summary["study"]["arguments"]
        rows = []
        for name in names:
            for level in self.levels:
                per_seed = [s[level] for s in summary["scores"][name].values() if level in s]
                if not per_seed:
                    continue
                rows.append(
                    [
                        name,
                        level,
                        show(np.mean([m["energy_mae_per_atom"] for m in per_seed]), digits=2),
                        show(np.mean([m["forces_mae"] for m in per_seed]))
                        if "forces_mae" in per_seed[0]
                        else "-",
                    ]
                )
        lines = [
            "# Representations: backbones trained on different levels",
            "",
            f"Store `{summary['study']['source_store']['name']}`; levels "
            f"{', '.join(self.levels)}; {args['n_test']} held-out structures; {args['seeds']} "
            f"seed(s); {Budget.planned(args).describe()} per model. Models: one single-level model "
            f"per level and `{MULTIHEAD}` (all levels, balanced mixing), same architecture. "
            "Compared by linear CKA of the node features after the last interaction layer, one "
            "row per atom of the test structures (mean over seeds of the same-seed pairs); "
            "`seed-to-seed`: the same model from two seeds, the reference for 'alike'.",
            "",
            markdown_table(*cka_table(summary)),
            "",
            "![CKA](figures/cka.png)",
            "",
            "## Errors on the test structures (mean over seeds)",
            "",
            markdown_table(["model", "head", "energy MAE meV/atom", "force MAE meV/Å"], rows),
            "",
            "Every run's directory `runs/seed-K/MODEL/` holds its configs (`study-config.yaml`, "
            "`mftrain.yaml`, `config.yaml`), logs and checkpoints; numbers in `results.json`.",
            "",
        ]
        return "\n".join(lines)


def cka_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: CKA of every pair of models, and each model's seed-to-seed CKA."""
    names = list(summary["cka"])
    header = ["CKA", *names, "seed-to-seed"]
    rows = []
    for a in names:
        reference = summary["cka_seed_to_seed"][a]
        rows.append(
            [a]
            + [f"{summary['cka'][a][b]:.3f}" for b in names]
            + ["-" if reference is None else f"{reference:.3f}"]
        )
    return header, rows
