"""``mftrain study pretrain-finetune``: how much does pre-training on a cheap level help?

Zaverkin et al. 2023; Gardner et al. 2025. Per seed, a model pre-trained (``single``) on the
cheap level's energies and forces of every training structure is fine-tuned on N
expensive-level structures with the whole backbone (``finetune_full``), a frozen backbone
(``finetune_frozen``), layer-wise learning rates (``finetune_discriminative``, lr × 0.5 per
layer from the output) or energies only (``finetune_energy_only``, left out when the expensive
level has no forces), against a model trained from scratch on the same N (``scratch``), at
every ``--sizes`` N: learning curves, scored on the expensive level of held-out structures.

Fine-tuning runs use strategy ``pretrain_finetune`` from the pre-trained run's checkpoint
(``finetune.from_checkpoint``): their budget counts stage 2 only, so a fine-tuned model has had
the pre-training run's budget too (the report says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mfdata.errors import UsageError
from mfdata.progress import Echo
from mfdata.store.store import Store
from mftrain.studies.args import Budget, StudyArgs, at_least, each_at_least, positive
from mftrain.studies.configs import finetuned, single, study_defaults
from mftrain.studies.data import StudyData, require_level
from mftrain.studies.plots import figures_dir, learning_curves_by_size
from mftrain.studies.recipe import Job, Recipe, Results, Scored, Seed, over_seeds
from mftrain.studies.tables import QUANTITIES, markdown_table, show_spread, text_table

FINETUNE_VARIANTS = {
    "finetune_full": {"backbone": "full"},
    "finetune_frozen": {"backbone": "frozen"},
    "finetune_discriminative": {"backbone": "full", "layer_lr_decay": 0.5},
    "finetune_energy_only": {"backbone": "full", "energy_only": True},
}
SCRATCH = "scratch"
PRETRAIN = "pretrain"


@dataclass(kw_only=True)
class PretrainFinetuneArgs(StudyArgs):
    RULES: ClassVar = StudyArgs.RULES | {
        "sizes": each_at_least(1),
        "pretrain_steps": at_least(1),
        "pretrain_minutes": positive,
    }

    pretrain: str  # the pre-training level (energies and forces)
    finetune: str  # the fine-tuning level
    sizes: list[int]  # fine-tuning set sizes N
    pretrain_steps: int | None = None  # the pre-training run's budget: steps
    pretrain_minutes: float | None = None  # and/or minutes

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pretrain_steps is None and self.pretrain_minutes is None:
            raise UsageError("give --pretrain-steps or --pretrain-minutes")

    def pretrain_budget(self) -> Budget:
        return Budget(self.pretrain_steps, self.pretrain_minutes)


class PretrainFinetune(Recipe[PretrainFinetuneArgs]):
    """Pre-training per seed, then scratch and the fine-tuning variants at every size."""

    name = "pretrain-finetune"

    def __init__(self, args: PretrainFinetuneArgs, store: Store) -> None:
        super().__init__(args, store)
        self.low = require_level(store, args.pretrain, "--pretrain", ("energy", "forces"))
        self.high = require_level(store, args.finetune, "--finetune")
        if self.low == self.high:
            raise UsageError(f"--pretrain and --finetune are both {self.low}")
        self.sizes = sorted(set(args.sizes))
        self.with_forces = "forces" in store.manifest.levels[self.high].labels
        self.variants = {
            name: options
            for name, options in FINETUNE_VARIANTS.items()
            if self.with_forces or not options.get("energy_only")  # else it is the full one
        }
        self.scarce = self.high
        self.scored = [(self.high, "energy")]
        if self.with_forces:
            self.scored.append((self.high, "forces"))

    def plan(self) -> dict[str, Any]:
        return {"pretrain": self.low, "finetune": self.high}

    def jobs(self, seed: Seed) -> list[Job]:
        pre = seed.root / f"pretrain-{self.low}"
        largest = seed.training(self.sizes[-1])
        jobs = [
            Job(PRETRAIN, seed.seed, pre, largest, single(self.low), self.args.pretrain_budget())
        ]
        for n in self.sizes:
            models = {SCRATCH: single(self.high)}
            for name, options in self.variants.items():
                models[name] = finetuned(self.high, pre / "best.ckpt", options)
            jobs += [
                Job(
                    name,
                    seed.seed,
                    seed.root / f"n{n}" / name,
                    seed.training(n),
                    model,
                    self.args.budget(),
                    n,
                    phase=1 if name == SCRATCH else 2,
                )
                for name, model in models.items()
            ]
        return jobs

    def results(
        self, data: StudyData, seeds: list[Seed], runs: list[Scored], echo: Echo
    ) -> Results:
        entries = {
            name: {str(n): over_seeds(runs, name, self.high, n) for n in self.sizes}
            for name in [SCRATCH, *self.variants]
        }
        pretrain = {
            str(run.job.seed): {
                "heads": run.metrics,
                "steps": run.steps,
                "train_seconds": run.seconds,
                "run": str(run.job.run),
            }
            for run in runs
            if run.job.name == PRETRAIN
        }
        study = {
            "pretrain": pretrain,
            "variants": self.variants,
            "study_defaults": study_defaults(self.args.config, self.args.budget()),
        }
        return Results(entries, study)

    @staticmethod
    def table(summary: dict[str, Any]) -> str:
        first = next(iter(summary[SCRATCH].values()))
        key = "forces_mae" if first["forces_mae"] is not None else "energy_mae_per_atom"
        what, per = QUANTITIES[key]
        return f"{what} (meV/{per}):\n" + text_table(*learning_curve_table(summary, key))

    def report(self, out: Path, summary: dict[str, Any], arrays: dict[str, Any]) -> str:
        """Learning curves (figure and one table per error), then the text."""
        low, high = self.low, self.high
        names = [SCRATCH, *self.variants]
        keys = (["forces_mae"] if self.with_forces else []) + ["energy_mae_per_atom"]
        panels = []
        for key in keys:
            what, per = QUANTITIES[key]
            by_size = {
                name: [
                    (n, [r.get(key) for r in summary[name][str(n)]["per_seed"]]) for n in self.sizes
                ]
                for name in names
            }
            panels.append((f"{high} {what} (eV/{per})", by_size))
        learning_curves_by_size(
            figures_dir(out) / "learning_curves.png", panels, f"fine-tuning {low} → {high}"
        )
        study = summary["study"]
        args = study["arguments"]
        pretrain = Budget(args["pretrain_steps"], args["pretrain_minutes"])
        lines = [
            f"# Pre-training on {low}, fine-tuning on {high}",
            "",
            f"Store `{study['source_store']['name']}`; {args['n_test']} held-out structures "
            f"scored on {high}; {args['seeds']} seed(s); pre-training: `single` on {low} "
            f"energies and forces of every training structure, {pretrain.describe()}; "
            f"every other run {Budget.planned(args).describe()} (fine-tuning runs: stage 2 only, "
            f"on top of the pre-training). N: {high} training structures (energies"
            + (" and forces" if self.with_forces else "")
            + "; nested across N). Variants: "
            + "; ".join(f"`{name}` {options}" for name, options in study["variants"].items())
            + f"; `{SCRATCH}`: `single` on the same N from scratch.",
            "",
        ]
        for key in keys:
            what, per = QUANTITIES[key]
            digits = 1 if key == "forces_mae" else 2
            lines += [
                f"## {high} {what} (meV/{per}, mean ± std over seeds)",
                "",
                markdown_table(*learning_curve_table(summary, key, digits)),
                "",
            ]
        lines += [
            "![learning curves](figures/learning_curves.png)",
            "",
            "Every run's directory `runs/seed-K/...` holds its configs (`study-config.yaml`, "
            "`mftrain.yaml`, `config.yaml`), logs and checkpoints (a fine-tuning run's stage 2 "
            "in `finetune/`, summed up in `stages.json`); numbers in `results.json`.",
            "",
        ]
        return "\n".join(lines)


def learning_curve_table(summary: dict, key: str, digits: int = 1) -> tuple[list, list]:
    """Header and rows: per model, ``key`` (mean ± std over seeds) at every size N."""
    names = [name for name in summary if name != "study"]
    sizes = list(summary[names[0]])
    header = ["model", *[f"N={n}" for n in sizes]]
    rows = [[name] + [show_spread(summary[name][n], key, digits) for n in sizes] for name in names]
    return header, rows
