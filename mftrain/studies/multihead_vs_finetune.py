"""``mftrain study multihead-vs-finetune``: one multi-head model, or fine-tuned ones?

Gardner et al. 2025. Per seed: one model per level trained on that level alone
(``single_LEVEL``), one multi-head model on every level (``multihead``, balanced mixing), and
the ``--pretrain`` level's single model fine-tuned (whole backbone) to each other level
(``finetune_LEVEL``; its budget counts stage 2 only, so it also had the pre-training run's).
Every model is scored on every level it has a head for, on held-out structures with every
level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfdata.errors import UsageError
from mfdata.progress import Echo
from mfdata.store.store import Store
from mftrain.studies.args import Budget, StudyArgs
from mftrain.studies.configs import (
    MULTIHEAD,
    finetuned,
    multihead,
    single,
    single_name,
    study_defaults,
)
from mftrain.studies.data import StudyData, require_level, require_levels
from mftrain.studies.plots import bar_chart, figures_dir
from mftrain.studies.recipe import Job, Recipe, Results, Scored, Seed, over_seeds
from mftrain.studies.tables import QUANTITIES, markdown_table, show_spread, text_table


@dataclass(kw_only=True)
class MultiheadVsFinetuneArgs(StudyArgs):
    levels: list[str] | None = None  # None: every level of the store
    pretrain: str | None = None  # the fine-tuned models' start; None: the most energies


class MultiheadVsFinetune(Recipe[MultiheadVsFinetuneArgs]):
    """Single-level models, one multi-head model and fine-tuned models, on every level."""

    name = "multihead-vs-finetune"

    def __init__(self, args: MultiheadVsFinetuneArgs, store: Store) -> None:
        super().__init__(args, store)
        known = store.manifest.levels
        self.levels = require_levels(store, args.levels, "--levels")
        counts = {level: known[level].labels["energy"].count for level in self.levels}
        self.pretrain = (
            require_level(store, args.pretrain, "--pretrain")
            if args.pretrain
            else max(self.levels, key=counts.__getitem__)
        )
        if self.pretrain not in self.levels:
            raise UsageError(
                f"--pretrain {self.pretrain} is not one of --levels {', '.join(self.levels)}"
            )
        self.scarce = min(self.levels, key=counts.__getitem__)
        self.scored = [
            (level, kind)
            for level in self.levels
            for kind in ("energy", "forces")
            if kind in known[level].labels
        ]

    def plan(self) -> dict[str, Any]:
        return {"levels": self.levels, "pretrain_level": self.pretrain}

    def jobs(self, seed: Seed) -> list[Job]:
        models = {single_name(level): single(level) for level in self.levels}
        models[MULTIHEAD] = multihead(self.levels)
        source = seed.root / single_name(self.pretrain) / "best.ckpt"
        finetuning = {
            f"finetune_{level}": finetuned(level, source, {"backbone": "full"})
            for level in self.levels
            if level != self.pretrain
        }
        budget, stores = self.args.budget(), seed.training()
        return [
            Job(name, seed.seed, seed.root / name, stores, model, budget)
            for name, model in models.items()
        ] + [
            Job(name, seed.seed, seed.root / name, stores, model, budget, phase=2)
            for name, model in finetuning.items()
        ]

    def results(
        self, data: StudyData, seeds: list[Seed], runs: list[Scored], echo: Echo
    ) -> Results:
        entries: dict[str, Any] = {}
        for name in dict.fromkeys(run.job.name for run in runs):
            heads = {level: over_seeds(runs, name, level) for level in self.levels}
            entries[name] = {level: found for level, found in heads.items() if found["per_seed"]}
        study = {
            "levels": self.levels,
            "pretrain_level": self.pretrain,
            "study_defaults": study_defaults(self.args.config, self.args.budget()),
        }
        return Results(entries, study)

    @staticmethod
    def table(summary: dict[str, Any]) -> str:
        return text_table(*every_level_table(summary))

    def report(self, out: Path, summary: dict[str, Any], arrays: dict[str, Any]) -> str:
        """Bars of each error per level, the table, then the text."""
        names = [name for name in summary if name != "study"]

        def seeds(name: str, level: str, key: str) -> list:
            return [r.get(key) for r in summary[name].get(level, {}).get("per_seed", [])]

        plots = []
        for key, (what, per) in QUANTITIES.items():
            panels = [
                (f"{level} {what} (eV/{per})", [seeds(n, level, key) for n in names])
                for level in self.levels
                if any(v is not None for n in names for v in seeds(n, level, key))
            ]
            if panels:
                path = figures_dir(out) / f"{key.removesuffix('_per_atom')}.png"
                bar_chart(path, names, panels, f"held-out {what} per level")
                plots += [f"![{what} per level](figures/{path.name})", ""]
        study = summary["study"]
        args = study["arguments"]
        lines = [
            "# Multi-head against pre-training/fine-tuning against single-level models",
            "",
            f"Store `{study['source_store']['name']}`; levels {', '.join(self.levels)}; "
            f"{args['n_test']} held-out structures with every level; {args['seeds']} seed(s); "
            f"{Budget.planned(args).describe()} per run. `single_LEVEL`: that level alone; "
            f"`{MULTIHEAD}`: one head per level, balanced mixing; `finetune_LEVEL`: "
            f"`{single_name(self.pretrain)}` fine-tuned on LEVEL (whole backbone; it also had "
            "the pre-training run's budget). Every model is scored on every level it has a head "
            "for (mean ± std over seeds).",
            "",
            markdown_table(*every_level_table(summary)),
            "",
            *plots,
            "Every run's directory `runs/seed-K/MODEL/` holds its configs, logs and checkpoints; "
            "numbers in `results.json`.",
            "",
        ]
        return "\n".join(lines)


def every_level_table(summary: dict) -> tuple[list, list]:
    """Header and rows: per model, energy and force MAE on every level it has a head for."""
    levels = summary["study"]["levels"]
    header = ["model"]
    for level in levels:
        header += [f"{level} E meV/atom", f"{level} F meV/Å"]
    rows = []
    for name, heads in summary.items():
        if name == "study":
            continue
        row = [name]
        for level in levels:
            head = heads.get(level)
            if head is None:
                row += ["-", "-"]
                continue
            row.append(show_spread(head, "energy_mae_per_atom", digits=2))
            row.append(show_spread(head, "forces_mae"))
        rows.append(row)
    return header, rows
