"""``mftrain study low-forces-high-energies``: do cheap forces plus expensive energies suffice?

The question of Messerly et al. (MLST 2025): with N expensive (high-level) energies and many
cheap (low-level) energies and forces, how close does a multi-fidelity model get to one trained
on N high-level energies *and forces*, and does it beat the cheap forces themselves? Models, all
with the same architecture, the same wall-clock training budget and the same study stores (see
:mod:`mftrain.studies.data`), scored on the high level's forces and energies of held-out
structures:

- ``energy_only``: one head, high-level energies of the N structures;
- ``multi_fidelity``: two heads on one backbone, low-level energies and forces of every training
  structure plus the N high-level energies;
- ``multi_fidelity_delta``: the same data, the high head predicting the difference to the low
  head (strategy ``delta``);
- ``energy_forces``: one head, high-level energies and forces of the N structures;
- ``low_level_as_prediction``: no model: the low level's forces (and energies plus per-element
  offsets fitted on the N training structures) taken as the high level's.

High-level forces are in the study stores (``energy_forces`` needs them, and they score every
model), but ``energy_only`` and the multi-fidelity models weigh them 0 in the loss, so they
take no part in training or in choosing the best checkpoint. Every trained model's high head
also goes through the MD check (:func:`mftrain.studies.md.md_check`) for the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import nequip
import numpy as np
import torch
from ase import Atoms

from mfdata.errors import UsageError
from mfdata.progress import Echo
from mfdata.records import Structures
from mfdata.stats import composition, fit_per_element
from mfdata.store.store import Store, mfkit_version
from mftrain.export import export_head
from mftrain.studies.args import StudyArgs, at_least
from mftrain.studies.configs import study_defaults
from mftrain.studies.data import SPLIT, StudyData, require_level
from mftrain.studies.md import MDCheck, md_check
from mftrain.studies.plots import bar_chart, curves, figures_dir, learning_curve, parity_grid
from mftrain.studies.recipe import Job, Recipe, Results, Scored, Seed
from mftrain.studies.tables import (
    markdown_table,
    show,
    show_spread,
    summarise,
    text_table,
)

BASELINE = "low_level_as_prediction"
SCORE_FILE = "score.json"  # each trained run's record, in its directory


@dataclass(frozen=True)
class Model:
    """One trained model of the study: its strategy, heads and which labels it trains on."""

    name: str
    strategy: str
    two_heads: bool  # low and high heads (else the high head alone)
    high_forces: bool  # trains on high-level forces
    trains_on: str  # for the report, with {low} and {high}


MODELS = (
    Model("energy_only", "single", False, False, "{high} energies"),
    Model(
        "multi_fidelity",
        "multihead",
        True,
        False,
        "{low} energies+forces, {high} energies (two heads)",
    ),
    Model(
        "multi_fidelity_delta",
        "delta",
        True,
        False,
        "as multi_fidelity; {high} head = {low} head + Δ",
    ),
    Model("energy_forces", "single", False, True, "{high} energies+forces"),
)

# What the multi-fidelity models add to the shared settings: the high level's energies weigh 100
# (per-atom energy MSE against per-component force MSE) and the sampler draws half of each batch
# from the high level. On the bundled data (N = 100, 2500 steps) this lowered multi_fidelity's
# validation high-level energy MAE from 18.8 (weight 1, natural mixing) to 4.7 meV/atom, the best
# of a grid (weights 1-1000, natural/balanced mixing, EMA); see the README's "Studies" section.
MULTI_FIDELITY = {"high_energy_weight": 100.0, "mixing": {"mode": "balanced"}}


@dataclass(kw_only=True)
class LowForcesArgs(StudyArgs):
    RULES: ClassVar = StudyArgs.RULES | {"n_high": at_least(1)}

    low: str  # the cheap level: energies and forces
    high: str  # the expensive level: energies (forces only score)
    n_high: int  # high-level energies used in training
    md: bool  # run the MD check on the exported heads


def model_settings(model: Model, low: str, high: str) -> dict[str, Any]:
    """``model``'s settings over the shared base config."""
    high_weights: dict[str, float] = {}
    settings: dict[str, Any] = {
        "strategy": model.strategy,
        "data.levels": [low, high] if model.two_heads else [high],
        "data.subset": None,
        "data.selection": None,
    }
    if not model.high_forces:
        high_weights["forces"] = 0.0
        if not model.two_heads:
            settings["data.labels"] = ["energy"]
    if model.two_heads:
        high_weights["energy"] = MULTI_FIDELITY["high_energy_weight"]
        settings["data.mixing"] = MULTI_FIDELITY["mixing"]
    if model.strategy == "delta":
        settings["delta"] = {"bases": {high: low}}
    settings["loss.levels"] = {high: high_weights} if high_weights else {}
    return settings


def low_level_prediction(
    s: Structures, test: np.ndarray, train: np.ndarray, low: str, high: str
) -> tuple[dict, dict]:
    """The low level's forces as the high level's on the ``test`` structures; energies as the
    low level's plus per-element offsets fitted (mfdata.stats.fit_per_element) to the high-low
    differences of the ``train`` structures. Returns metrics and parity arrays."""
    start = s.atom_start
    atoms = np.concatenate([np.arange(start[i], start[i + 1]) for i in test])
    f_low = s.labels[(low, "forces")].values[atoms].reshape(-1)
    f_high = s.labels[(high, "forces")].values[atoms].reshape(-1)
    e_low, e_high = s.labels[(low, "energy")].values, s.labels[(high, "energy")].values
    comp = composition(s.numbers, s.n_atoms)
    trained = np.zeros(s.n_structures, dtype=bool)
    trained[train] = True
    trained &= np.isfinite(e_high - e_low)
    fit = fit_per_element(comp, trained, e_high - e_low)
    predicted = e_low[test] + comp.counts[test][:, fit.columns] @ fit.energies
    n_atoms = s.n_atoms[test]
    e_err = (predicted - e_high[test]) / n_atoms
    f_err = f_low - f_high
    metrics = {
        "n": len(test),
        "forces_mae": float(np.mean(np.abs(f_err))),
        "forces_rmse": float(np.sqrt(np.mean(f_err**2))),
        "energy_mae_per_atom": float(np.mean(np.abs(e_err))),
        "energy_rmse_per_atom": float(np.sqrt(np.mean(e_err**2))),
        "offset_fit": fit.method,
    }
    parity = {
        "forces": (f_high, f_low),
        "energy_per_atom": (e_high[test] / n_atoms, predicted / n_atoms),
    }
    return metrics, parity


class LowForces(Recipe[LowForcesArgs]):
    """The models of :data:`MODELS` and the baseline, scored on the high level."""

    name = "low-forces-high-energies"

    def __init__(self, args: LowForcesArgs, store: Store) -> None:
        super().__init__(args, store)
        self.low = require_level(store, args.low, "--low", ("energy", "forces"))
        self.high = require_level(store, args.high, "--high", ("energy", "forces"))
        if self.low == self.high:
            raise UsageError(f"--low and --high are both {self.low}")
        self.scarce = self.high
        self.scored = [(self.high, k) for k in ("energy", "forces")]
        self.scored += [(self.low, k) for k in ("energy", "forces")]
        self.sizes = [args.n_high]

    def plan(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "models": [m.name for m in MODELS]}

    def jobs(self, seed: Seed) -> list[Job]:
        stores = seed.stores[self.args.n_high]
        return [
            Job(
                model.name,
                seed.seed,
                seed.root / model.name,
                stores,
                model_settings(model, self.low, self.high),
                self.args.budget_minutes,
            )
            for model in MODELS
        ]

    def results(
        self, data: StudyData, seeds: list[Seed], runs: list[Scored], echo: Echo
    ) -> Results:
        low, high, first = self.low, self.high, seeds[0].seed
        out = Path(self.args.out).resolve()
        records: dict[str, dict[int, dict]] = {m.name: {} for m in MODELS} | {BASELINE: {}}
        parity: dict[str, dict] = {}
        for seed in seeds:
            train = seed.draw.train(self.args.n_high)
            records[BASELINE][seed.seed], arrays = low_level_prediction(
                data.source.structures, data.test_index, train, low, high
            )
            parity.setdefault(BASELINE, arrays)
        two_heads = {m.name for m in MODELS if m.two_heads}
        for run in runs:
            record = {
                **run.metrics[high],
                "steps": run.steps,
                "train_seconds": run.seconds,
                "run": str(run.job.run.relative_to(out)),
            }
            if run.job.name in two_heads and low in run.metrics:
                record["low_head"] = run.metrics[low]
            records[run.job.name][run.job.seed] = record
            text = json.dumps(record, indent=2) + "\n"
            (run.job.run / SCORE_FILE).write_text(text, encoding="utf-8")
            if run.job.seed == first:
                parity[run.job.name] = run.parity[high]
        md: dict[str, MDCheck] = {}
        if self.args.md:
            md = self._md_checks(data, [r for r in runs if r.job.seed == first], echo)
        entries: dict[str, Any] = {}
        for name, by_seed in records.items():
            per_seed = [{"seed": seed, **r} for seed, r in sorted(by_seed.items())]
            entry: dict[str, Any] = {"trained": name != BASELINE, **summarise(per_seed)}
            if name in md:
                entry["md_check"] = md[name].summary()
            entry["per_seed"] = per_seed
            entries[name] = entry
        return Results(entries, self._study(seeds, md), {"parity": parity})

    def _study(self, seeds: list[Seed], md: dict[str, MDCheck]) -> dict[str, Any]:
        """The recipe's entries in results.json's ``study``."""
        low, high = self.low, self.high
        return {
            "models": {
                m.name: {
                    "strategy": m.strategy,
                    "trains_on": m.trains_on.format(low=low, high=high),
                }
                for m in MODELS
            },
            "multi_fidelity_settings": MULTI_FIDELITY,
            "study_defaults": study_defaults(self.args.config),
            "selected": {
                str(s.seed): {
                    "train": s.draw.train(self.args.n_high).tolist(),
                    "val": s.draw.val.tolist(),
                }
                for s in seeds
            },
            "held_out_check": "no test geometry in any training store (geometry hashes compared)",
            "versions": {
                "mfkit": mfkit_version(),
                "nequip": nequip.__version__,
                "torch": str(torch.__version__),
            },
            "md_series": {
                k: {"time_ps": v.nve_time_ps, "energy_ev_per_atom": v.nve_energy_ev_per_atom}
                for k, v in md.items()
            },
        }

    def _md_checks(self, data: StudyData, runs: list[Scored], echo: Echo) -> dict[str, MDCheck]:
        """The MD check of every run's high head, from the first test structure."""
        s, _ = Store(data.test).read()
        first = Atoms(numbers=s.numbers[: s.n_atoms[0]], positions=s.positions[: s.n_atoms[0]])
        found = {}
        for run in runs:
            package = run.job.run / f"{self.high}.nequip.zip"
            if not package.exists():
                export_head(run.checkpoint, self.high, package)
            check = md_check(package, first, seed=run.job.seed)
            found[run.job.name] = check
            failure = check.failure or "atoms flew apart"
            state = "stable" if check.stable else f"UNSTABLE ({failure})"
            drift = check.drift_ev_per_atom_per_ps
            echo(
                f"MD check {run.job.name}: {state}; NVE drift "
                f"{'n/a' if drift is None else f'{drift * 1000:.2f}'} meV/atom/ps"
            )
        return found

    @staticmethod
    def table(summary: dict[str, Any]) -> str:
        return text_table(*comparison_table(summary))

    def report(self, out: Path, summary: dict[str, Any], arrays: dict[str, Any]) -> str:
        """Figures: errors per model, parity, learning curves, MD; then the text."""
        low, high = self.low, self.high
        args = summary["study"]["arguments"]
        names = [name for name in summary if name != "study"]
        seeds = sorted({r["seed"] for name in names for r in summary[name]["per_seed"]})
        figures = figures_dir(out)
        bar_chart(
            figures / "force_mae.png",
            names,
            [
                (
                    f"{high} force MAE (eV/Å)",
                    [[r.get("forces_mae") for r in summary[n]["per_seed"]] for n in names],
                ),
                (
                    f"{high} energy MAE (eV/atom)",
                    [[r.get("energy_mae_per_atom") for r in summary[n]["per_seed"]] for n in names],
                ),
            ],
            f"held-out {high} errors, {args['n_high']} {high} energies in training",
            hatched=[BASELINE],
        )
        parity = arrays["parity"]
        parity_grid(
            figures / "parity.png",
            [(name, parity[name]) for name in names if name in parity],
            [("forces", "force component (eV/Å)"), ("energy_per_atom", "energy (eV/atom)")],
            f"{high} on the test structures, seed {seeds[0]}",
        )
        logs = {m.name: learning_curve(out / "runs" / f"seed-{seeds[0]}" / m.name) for m in MODELS}
        curves(
            figures / "learning_curves.png",
            [
                (
                    f"val {high} energy MAE (eV/atom)",
                    {
                        n: c.get(f"val0_epoch/{high}/energy_per_atom_mae", [])
                        for n, c in logs.items()
                    },
                ),
                (
                    f"val {high} force MAE (eV/Å)",
                    {n: c.get(f"val0_epoch/{high}/forces_mae", []) for n, c in logs.items()},
                ),
                (
                    "training loss (weighted sum)",
                    {n: c.get("train_loss_epoch/weighted_sum", []) for n, c in logs.items()},
                ),
            ],
            "step",
            f"learning curves, seed {seeds[0]}",
        )
        md_series = summary["study"]["md_series"]
        if md_series:
            deviations = {
                n: [
                    (t, 1000 * (e - v["energy_ev_per_atom"][0]))
                    for t, e in zip(v["time_ps"], v["energy_ev_per_atom"], strict=True)
                ]
                for n, v in md_series.items()
            }
            largest = max((abs(y) for points in deviations.values() for _, y in points), default=0)
            curves(
                figures / "md.png",
                [("NVE total energy − initial (meV/atom)", deviations)],
                "time (ps)",
                f"MD check: {high} heads, NVE after Langevin",
                # a model whose atoms fly apart gains eV: symlog keeps the stable ones visible
                yscale="symlog" if largest > 10 else "linear",
            )
        md_checks = {n: summary[n]["md_check"] for n in names if "md_check" in summary[n]}
        return _report_text(summary, low, high, seeds, md_checks)


def comparison_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per model, high-level force and energy errors (mean ± std over seeds)."""
    header = ["model", "force MAE meV/Å", "energy MAE meV/atom", "force RMSE meV/Å", "seeds"]
    rows = []
    for name, entry in summary.items():
        if name == "study":
            continue
        rows.append(
            [
                name,
                show_spread(entry, "forces_mae"),
                show_spread(entry, "energy_mae_per_atom", digits=2),
                show(entry["forces_rmse"]),
                str(len(entry["per_seed"])),
            ]
        )
    return header, rows


def _closing(summary: dict, high: str) -> str:
    """What the report concludes: each multi-fidelity model against the baselines."""

    def mae(name: str) -> float | None:
        return summary[name]["forces_mae"] if name in summary else None

    llap, alone, both = mae(BASELINE), mae("energy_only"), mae("energy_forces")
    sentences = []
    for name in ("multi_fidelity", "multi_fidelity_delta"):
        mf = mae(name)
        if mf is None:
            continue
        text = (
            f"`{name}` reaches a held-out {high} force MAE of {show(mf)} meV/Å, against "
            f"{show(alone)} for `energy_only`, {show(llap)} for the low-level forces themselves "
            f"and {show(both)} for `energy_forces`: "
        )
        text += "better" if mf < alone else "no better"
        text += " than high-level energies alone, and "
        text += (
            "better than the low-level forces (it has learned part of the correction)."
            if mf < llap
            else "not better than the low-level forces (it has not learned the correction)."
        )
        sentences.append(text)
    return " ".join(sentences)


def _report_text(summary: dict, low: str, high: str, seeds: list[int], md_checks: dict) -> str:
    study = summary["study"]
    args = study["arguments"]
    source = study["source_store"]
    base = args["base_config"]
    m = base["model"]
    lines = [
        f"# Low-level forces and high-level energies: {low} → {high}",
        "",
        f"Store `{source['name']}` (`{source['path']}`, checksum `{source['checksum'][:16]}`). "
        f"Every trained model sees {args['n_high']} {high} energies; the multi-fidelity models "
        f"also see {low} energies and forces of every training structure. Scored on "
        f"{args['n_test']} held-out structures' {high} forces and energies; {len(seeds)} "
        f"seed(s) ({', '.join(map(str, seeds))}); {args['budget_minutes']:g} min of training "
        f"per model and seed (wall clock); the same NequIP architecture for all "
        f"({m['num_layers']} layers, l_max {m['l_max']}, {m['num_features']} features, "
        f"r_max {m['r_max']:g} Å, {base['trainer']['precision']}). Numbers are mean ± standard "
        "deviation over seeds (one seed: no spread).",
        "",
        "## Result",
        "",
        markdown_table(*comparison_table(summary)),
        "",
        "![force and energy MAE per model](figures/force_mae.png)",
        "",
        _closing(summary, high),
        "",
        "## Models",
        "",
    ]
    rows = []
    for model in MODELS:
        per_seed = summary[model.name]["per_seed"]
        rows.append(
            [
                model.name,
                f"`{model.strategy}`",
                model.trains_on.format(low=low, high=high),
                f"{np.mean([r['steps'] for r in per_seed]):.0f}",
                f"{np.mean([r['train_seconds'] for r in per_seed]):.0f}",
            ]
        )
    rows.append([BASELINE, "-", f"{low} forces (energies + per-element offsets)", "-", "-"])
    lines += [
        markdown_table(["model", "strategy", "trains on", "steps", "wall s (fit)"], rows),
        "",
        f"{high} forces are in the training stores, but `energy_only` and the multi-fidelity "
        "models weigh them 0 in the loss (training and checkpoint choice); they only score.",
        "",
        "## Parity on the test structures",
        "",
        "![parity plots](figures/parity.png)",
        "",
        "## Learning curves",
        "",
        f"Validation part of seed {seeds[0]}'s split. The validation {high} force MAE (middle) "
        "is logged "
        "for every model but weighs 0 in the loss of those that do not train on it.",
        "",
        "![learning curves](figures/learning_curves.png)",
        "",
    ]
    two_heads = [model.name for model in MODELS if model.two_heads]
    rows = []
    for name in two_heads:
        heads = [r.get("low_head", {}) for r in summary[name]["per_seed"]]
        rows.append(
            [
                name,
                show_spread(summarise(heads), "forces_mae"),
                show_spread(summarise(heads), "energy_mae_per_atom", digits=2),
            ]
        )
    lines += [
        f"## The {low} heads",
        "",
        f"The multi-fidelity models' {low} heads on the same test structures:",
        "",
        markdown_table(["model", "force MAE meV/Å", "energy MAE meV/atom"], rows),
        "",
    ]
    if md_checks:
        lines += _md_section(md_checks, high, seeds[0])
    counts = []
    for seed, chosen in study["selected"].items():
        counts.append(
            f"seed {seed}: {len(chosen['train'])} {high} training, {len(chosen['val'])} validation"
        )
    lines += [
        "## Data and split",
        "",
        f"- Test: {args['n_test']} structures drawn with split seed {args['split_seed']} from "
        f"those with {high} and {low} energies and forces (indices in the store: "
        "`results.json` → `study.test_indices`); store `data/test`. "
        f"{study['held_out_check'].capitalize()}.",
        f"- Per seed, the other {high} structures are shuffled: the first "
        f"{args['val_fraction']:g} of them validate, the next N train (nested: a smaller N "
        f"takes a prefix). The run trains on `data/train-nN-seedK`: every structure except the "
        f"test ones, with {low} labels, and {high} labels only on those N and on the validation "
        f"structures (split `{SPLIT}` in that store).",
        "- " + "; ".join(counts) + " (indices: `study.selected`).",
        "",
        "## Hyperparameters",
        "",
    ]
    if study["study_defaults"] is not None:
        lines.append(
            "Shared by every model (the study's defaults): "
            + ", ".join(f"`{k}` = `{v}`" for k, v in study["study_defaults"].items())
            + f"; `trainer.max_time_minutes` = {args['budget_minutes']:g}, steps unbounded."
        )
    else:
        lines.append(f"Shared by every model: the base config `{args['config']}`.")
    mf = study["multi_fidelity_settings"]
    lines += [
        "",
        f"Multi-fidelity models: {high} energy weight {mf['high_energy_weight']:g} (energy "
        f"terms are per-atom MSE, force terms per-component MSE, {low} weights 1), level "
        f"mixing `{mf['mixing']}`: the best validation {high} energy MAE (never its forces) of "
        "a grid over weights 1-1000, natural/balanced mixing and EMA, measured on the bundled "
        "methanol data (see the README's Studies section).",
        "",
        "## Reproduce",
        "",
        "Each run's directory `runs/seed-K/MODEL/` holds `study-config.yaml` (the mftrain "
        "config it was given), `mftrain.yaml` (resolved), `config.yaml` (nequip's), "
        "`provenance.json`, `fit.log`, the CSV logs and checkpoints, and `score.json`. The "
        "study's arguments are in `study-plan.json`; all numbers in `results.json`.",
        "",
    ]
    return "\n".join(lines)


def _md_section(md_checks: dict, high: str, seed: int) -> list[str]:
    """The report's MD check table and figure."""
    rows = []
    for name, check in md_checks.items():
        drift = check["drift_ev_per_atom_per_ps"]
        rows.append(
            [
                name,
                "yes" if check["stable"] else f"no: {check['failure'] or 'atoms flew apart'}",
                show(drift, digits=2),
                show(check["nve_energy_std_ev_per_atom"], digits=2),
                "-"
                if check["mean_temperature_K"] is None
                else f"{check['mean_temperature_K']:.0f}",
                f"{check['fragments_start']} → {check['fragments_max']}",
                ", ".join(map(str, check["detached_atoms"])) or "none",
            ]
        )
    first = next(iter(md_checks.values()))
    return [
        "## MD check",
        "",
        f"Each model's {high} head, exported as a nequip package and run through nequip's "
        f"ASE calculator from the first test structure (seed {seed}): "
        f"{first['langevin_steps']} Langevin steps at {first['temperature_K']:g} K, then "
        f"{first['nve_steps']} NVE steps, {first['timestep_fs']:g} fs each. Drift: slope of "
        "the NVE total energy; fragments: connected parts of the bond graph (1.5 × covalent "
        "radii) at the start → at most during the run.",
        "",
        markdown_table(
            [
                "model",
                "stable",
                "NVE drift meV/atom/ps",
                "NVE energy std meV/atom",
                "mean T (K)",
                "fragments",
                "detached atoms",
            ],
            rows,
        ),
        "",
        "![NVE energy](figures/md.png)",
        "",
    ]
