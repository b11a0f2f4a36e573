"""``mftrain study low-forces-high-energies``: do cheap forces plus expensive energies suffice?

The question of Messerly et al. (MLST 2025): with N expensive (high-level) energies and many
cheap (low-level) energies and forces, how close does a multi-fidelity model get to one trained
on N high-level energies *and forces*, and does it beat the cheap forces themselves? Models, all
with the same architecture, the same number of optimiser steps and the same study stores (see
:mod:`mftrain.studies.data`), scored on the high level's forces and energies of held-out
structures, at one N or several (``--n-high 25,50,100,200``: a learning curve, nested sets):

- ``energy_only``: one head, high-level energies of the N structures;
- ``multi_fidelity``: two heads on one backbone, low-level energies and forces of every training
  structure plus the N high-level energies;
- ``multi_fidelity_delta``: the same data, the high head predicting the difference to the low
  head (strategy ``delta``);
- ``multi_fidelity_finetune``: pre-trained on the low level's energies and forces, then
  fine-tuned on the N high-level energies with the low level replayed, the new high head started
  from the low head (strategy ``multihead_finetune``; the route of Zaverkin et al. and Gardner
  et al.); its two stages share the steps of one run;
- ``energy_forces``: one head, high-level energies and forces of the N structures;
- ``low_level_as_prediction``: no model: the low level's forces (and energies plus per-element
  offsets fitted on the N training structures) taken as the high level's.

Only ``energy_forces`` trains on high-level forces, and only its training stores hold them: the
others train on stores whose high level has energies alone, so those forces cannot reach them,
not even through the statistics their heads start from. Every model is scored against them on
the test store. The multi-fidelity models' low heads are also scored against the low level's own
labels: a low head not clearly better than the low-vs-high gap cannot learn the correction, and
the report says so. Every trained model's high head goes through the MD check
(:func:`mftrain.studies.md.md_check`) for the report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import nequip
import numpy as np
import torch
from ase import Atoms

from mfdata.errors import UsageError
from mfdata.files import atomic_write_text
from mfdata.progress import Echo
from mfdata.records import Structures
from mfdata.stats import composition, fit_per_element
from mfdata.store.store import Store, mfkit_version
from mftrain.export import export_head
from mftrain.run_log import read_rows, series
from mftrain.studies.args import Budget, StudyArgs, at_least, each_at_least
from mftrain.studies.configs import study_defaults
from mftrain.studies.data import SPLIT, StudyData, require_level
from mftrain.studies.md import MDCheck, md_check
from mftrain.studies.plots import (
    bar_chart,
    curves,
    figures_dir,
    learning_curves_by_size,
    parity_grid,
)
from mftrain.studies.recipe import Job, Kept, Recipe, Results, Scored, Seed
from mftrain.studies.tables import (
    markdown_table,
    show,
    show_spread,
    summarise,
    text_table,
)

BASELINE = "low_level_as_prediction"
BY_N = "by_n_high"  # results.json: every N's entries; the top level holds the largest N's
SCORE_FILE = "score.json"  # each trained run's record, in its directory
MD_FILE = "md-check.json"  # each MD-checked run's check, in its directory
# A multi-fidelity model's low head is "clearly better" than the low-vs-high force gap (the
# baseline's force MAE) when its own force error is below this share of it; else it cannot
# resolve the correction it is meant to learn, and the report warns.
LOW_HEAD_SHARE = 0.5


@dataclass(frozen=True)
class Model:
    """One trained model of the study: its strategy, heads and which labels it trains on."""

    name: str
    strategy: str
    two_heads: bool  # low and high heads (else the high head alone)
    high_forces: bool  # trains on high-level forces
    trains_on: str  # for the report, with {low} and {high}

    @property
    def kept(self) -> Kept:
        """The high level's labels in its training stores: only those it trains on."""
        return None if self.high_forces else ("energy",)


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
    Model(
        "multi_fidelity_finetune",
        "multihead_finetune",
        True,
        False,
        "{low} energies+forces; then {high} energies, {low} replayed, {high} head from {low}'s",
    ),
    Model("energy_forces", "single", False, True, "{high} energies+forces"),
)

# What the multi-fidelity models add to the shared settings: the high level's energies weigh 100
# (per-atom energy MSE against per-component force MSE; each level's terms are averaged over its
# own frames, so the weight does not depend on the mixing), and the one-stage models draw half
# of each epoch from the high level.
MULTI_FIDELITY = {"high_energy_weight": 100.0, "mixing": {"mode": "balanced"}}
# multi_fidelity_finetune: the share of its steps spent fine-tuning, and the share of the
# fine-tuning samples replayed from the low level.
FINETUNE = {"steps_share": 1 / 3, "replay": 0.2}


@dataclass(kw_only=True)
class LowForcesArgs(StudyArgs):
    RULES: ClassVar = StudyArgs.RULES | {"n_high": each_at_least(1), "md_steps": at_least(1)}

    low: str  # the cheap level: energies and forces
    high: str  # the expensive level: energies (forces only score)
    n_high: list[int]  # high-level energies used in training (several: a learning curve)
    md: bool  # run the MD check on the exported heads
    md_steps: int = 400  # its NVE steps, after half as many Langevin steps


def model_settings(model: Model, low: str, high: str, budget: Budget) -> dict[str, Any]:
    """``model``'s settings over the shared base config; a two-stage model splits the run's
    ``budget`` between its stages."""
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
    if model.strategy in ("multihead", "delta"):
        settings["data.mixing"] = MULTI_FIDELITY["mixing"]
    if model.strategy == "delta":
        settings["delta"] = {"bases": {high: low}}
    if model.strategy == "multihead_finetune":
        stage1, stage2 = budget.split(FINETUNE["steps_share"])
        settings["data.levels"] = None  # the finetune section names them
        settings["trainer.max_steps"] = stage1.steps or 10**9
        settings["trainer.max_time_minutes"] = stage1.minutes
        settings["finetune"] = {
            "level": high,
            "pretrain": [low],
            "init_from": low,
            "energy_only": True,
            "replay": FINETUNE["replay"],
            "max_steps": stage2.steps,
            "max_time_minutes": stage2.minutes,
        }
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


def low_head_warnings(entries: dict[str, Any], low: str) -> list[str]:
    """For each multi-fidelity model whose low head's force error (against the low level's own
    labels) is not below :data:`LOW_HEAD_SHARE` of the low-vs-high gap, why it cannot learn the
    correction."""
    gap = entries[BASELINE]["forces_mae"]
    found = []
    for model in MODELS:
        head = entries.get(model.name, {}).get("low_head")
        if not model.two_heads or not head or head.get("forces_mae") is None:
            continue
        if head["forces_mae"] >= LOW_HEAD_SHARE * gap:
            found.append(
                f"`{model.name}`'s {low} head is not converged: its force MAE against {low}'s own "
                f"labels ({show(head['forces_mae'])} meV/Å) is not below "
                f"{LOW_HEAD_SHARE:g} x the {low}-vs-high gap ({show(gap)} meV/Å), so it cannot "
                "resolve the correction; train longer or larger"
            )
    return found


def model_names(summary: dict[str, Any]) -> list[str]:
    """The models and the baseline in a results.json (every key but the study's own)."""
    return [name for name in summary if name not in ("study", BY_N)]


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
        self.sizes = sorted(set(args.n_high))
        self.kept = list(dict.fromkeys(model.kept for model in MODELS))

    def plan(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "models": [m.name for m in MODELS]}

    def jobs(self, seed: Seed) -> list[Job]:
        jobs = []
        for n in self.sizes:
            for model in MODELS:
                budget = self.args.budget()
                settings = model_settings(model, self.low, self.high, budget)
                run = seed.root / (model.name if len(self.sizes) == 1 else f"n{n}/{model.name}")
                stores = seed.training(n, model.kept)
                jobs.append(Job(model.name, seed.seed, run, stores, settings, budget, n))
        return jobs

    def results(
        self, data: StudyData, seeds: list[Seed], runs: list[Scored], echo: Echo
    ) -> Results:
        largest, first = self.sizes[-1], seeds[0].seed
        by_n = {}
        for n in self.sizes:
            by_n[n], found = self._entries(data, seeds, [r for r in runs if r.job.n == n], n)
            if n == largest:
                parity = found
        entries = dict(by_n[largest])
        for warning in low_head_warnings(entries, self.low):
            echo(f"warning: N={largest}: {warning}")
        md: dict[str, MDCheck] = {}
        if self.args.md:
            chosen = [r for r in runs if r.job.seed == first and r.job.n == largest]
            md = self._md_checks(data, chosen, echo)
        for name, check in md.items():
            entries[name] = {**entries[name], "md_check": check.summary()}
        if len(self.sizes) > 1:
            entries = {**entries, BY_N: {str(n): found for n, found in by_n.items()}}
        return Results(entries, self._study(seeds, md), {"parity": parity})

    def _entries(
        self, data: StudyData, seeds: list[Seed], runs: list[Scored], n: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every model's and the baseline's numbers at size ``n`` (mean, spread, per seed), and
        the first seed's parity arrays on the high level."""
        low, high, first = self.low, self.high, seeds[0].seed
        out = Path(self.args.out).resolve()
        records: dict[str, dict[int, dict]] = {m.name: {} for m in MODELS} | {BASELINE: {}}
        parity: dict[str, dict] = {}
        for seed in seeds:
            records[BASELINE][seed.seed], arrays = low_level_prediction(
                data.source.structures, data.test_index, seed.draw.train(n), low, high
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
        entries: dict[str, Any] = {}
        for name, by_seed in records.items():
            per_seed = [{"seed": seed, **r} for seed, r in sorted(by_seed.items())]
            entry: dict[str, Any] = {"trained": name != BASELINE, **summarise(per_seed)}
            if name in two_heads:
                entry["low_head"] = summarise([r.get("low_head", {}) for r in per_seed])
            entry["per_seed"] = per_seed
            entries[name] = entry
        return entries, parity

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
            "finetune_settings": FINETUNE,
            "study_defaults": study_defaults(self.args.config, self.args.budget()),
            "selected": {
                str(s.seed): {
                    "train": {str(n): s.draw.train(n).tolist() for n in self.sizes},
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
        """The MD check of every run's high head, from the first test structure; a run keeps its
        check in ``RUN/md-check.json``, so a study repeated in its directory (same plan, same
        runs) does not run it again."""
        s, _ = Store(data.test).read()
        first = Atoms(numbers=s.numbers[: s.n_atoms[0]], positions=s.positions[: s.n_atoms[0]])
        found = {}
        for run in runs:
            package = run.job.run / f"{self.high}.nequip.zip"
            if not package.exists():
                export_head(run.checkpoint, self.high, package)
            saved = run.job.run / MD_FILE
            if saved.is_file():
                check = MDCheck(**json.loads(saved.read_text(encoding="utf-8")))
            else:
                steps = self.args.md_steps
                check = md_check(
                    package, first, langevin_steps=steps // 2, nve_steps=steps, seed=run.job.seed
                )
                atomic_write_text(saved, json.dumps(asdict(check)) + "\n")
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
        names = model_names(summary)
        seeds = sorted({r["seed"] for name in names for r in summary[name]["per_seed"]})
        largest = max(args["n_high"])
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
            f"held-out {high} errors, {largest} {high} energies in training",
            hatched=[BASELINE],
        )
        if BY_N in summary:
            self._learning_curve_by_n(figures / "by_n_high.png", summary[BY_N])
        parity = arrays["parity"]
        parity_grid(
            figures / "parity.png",
            [(name, parity[name]) for name in names if name in parity],
            [("forces", "force component (eV/Å)"), ("energy_per_atom", "energy (eV/atom)")],
            f"{high} on the test structures, seed {seeds[0]}",
        )
        logs = {m.name: run_curves(out / summary[m.name]["per_seed"][0]["run"]) for m in MODELS}
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
            f"learning curves, N = {largest}, seed {seeds[0]}",
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

    def _learning_curve_by_n(self, path: Path, by_n: dict[str, Any]) -> None:
        """Held-out high-level errors against N, every model, the baseline dashed."""
        names = model_names(next(iter(by_n.values())))
        panels = []
        quantities = {
            "forces_mae": "force MAE (eV/Å)",
            "energy_mae_per_atom": "energy MAE (eV/atom)",
        }
        for key, what in quantities.items():
            series = {
                name: [
                    (int(n), [r.get(key) for r in entries[name]["per_seed"]])
                    for n, entries in by_n.items()
                ]
                for name in names
            }
            panels.append((f"{self.high} {what}", series))
        learning_curves_by_size(
            path, panels, f"held-out {self.high} errors against N", dashed=[BASELINE]
        )


def run_curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """A run's logged metrics against step; a two-stage run's stage 2 continues stage 1's
    steps."""
    if not (run / "stages.json").is_file():
        return series(read_rows(run))
    first, second = series(read_rows(run / "pretrain")), series(read_rows(run / "finetune"))
    offset = max((step for points in first.values() for step, _ in points), default=0)
    joined = {key: list(points) for key, points in first.items()}
    for key, points in second.items():
        joined.setdefault(key, []).extend((step + offset, value) for step, value in points)
    return joined


def comparison_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per model, high-level force and energy errors (mean ± std over seeds)."""
    header = ["model", "force MAE meV/Å", "energy MAE meV/atom", "force RMSE meV/Å", "seeds"]
    rows = []
    for name in model_names(summary):
        entry = summary[name]
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
    """What the report concludes: each multi-fidelity model against the baselines, and whether
    its difference from the low-level forces exceeds the seed-to-seed spread."""

    def mae(name: str) -> float | None:
        return summary[name]["forces_mae"] if name in summary else None

    llap, alone, both = mae(BASELINE), mae("energy_only"), mae("energy_forces")
    sentences = []
    for model in MODELS:
        mf = mae(model.name)
        if not model.two_heads or mf is None:
            continue
        text = (
            f"`{model.name}` reaches a held-out {high} force MAE of "
            f"{show_spread(summary[model.name], 'forces_mae')} meV/Å, against {show(alone)} for "
            f"`energy_only`, {show(llap)} for the low-level forces themselves and {show(both)} for "
            f"`energy_forces`"
        )
        if both:
            text += f" ({mf / both:.2f}x)"
        text += ": " + ("better" if mf < alone else "no better") + " than high-level energies alone"
        std = summary[model.name].get("forces_mae_std")
        if mf < llap:
            text += ", and better than the low-level forces"
            text += (
                " by more than its seed-to-seed spread."
                if std is not None and llap - mf > std
                else " (one seed, or within its seed-to-seed spread)."
            )
        else:
            text += ", and not better than the low-level forces (no correction learned)."
        sentences.append(text)
    return " ".join(sentences)


def _report_text(summary: dict, low: str, high: str, seeds: list[int], md_checks: dict) -> str:
    study = summary["study"]
    args = study["arguments"]
    source = study["source_store"]
    base = args["base_config"]
    m = base["model"]
    largest = max(args["n_high"])
    budget = Budget.planned(args)
    lines = [
        f"# Low-level forces and high-level energies: {low} → {high}",
        "",
        f"Store `{source['name']}` (`{source['path']}`, checksum `{source['checksum'][:16]}`). "
        f"Every trained model sees {largest} {high} energies; the multi-fidelity models "
        f"also see {low} energies and forces of every training structure. Scored on "
        f"{args['n_test']} held-out structures' {high} forces and energies; {len(seeds)} "
        f"seed(s) ({', '.join(map(str, seeds))}); {budget.describe()} of training per model and "
        "seed, the same for every model (a two-stage model splits them between its stages); the "
        f"same NequIP architecture for all ({m['num_layers']} layers, l_max {m['l_max']}, "
        f"{m['num_features']} features, r_max {m['r_max']:g} Å, "
        f"{base['trainer']['precision']}); nothing tuned on the test structures. Numbers are "
        "mean ± standard deviation over seeds (one seed: no spread).",
        "",
        "## Result",
        "",
        markdown_table(*comparison_table(summary)),
        "",
        "![force and energy MAE per model](figures/force_mae.png)",
        "",
        _closing(summary, high),
        "",
    ]
    if BY_N in summary:
        lines += _by_n_section(summary[BY_N], high)
    lines += ["## Models", ""]
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
        "Steps: optimiser steps of the run (a two-stage model: both stages'). Wall time "
        "depends on each model's cost and on the machine's load: it is reported, not compared. "
        f"Only `energy_forces` trains on {high} forces, and only its training stores hold them.",
        "",
        "## Parity on the test structures",
        "",
        "![parity plots](figures/parity.png)",
        "",
        "## Learning curves",
        "",
        f"Validation part of seed {seeds[0]}'s split (a two-stage model: stage 2 continues the "
        f"steps of stage 1). Only `energy_forces` has {high} validation forces.",
        "",
        "![learning curves](figures/learning_curves.png)",
        "",
    ]
    lines += _low_head_section(summary, low)
    if md_checks:
        lines += _md_section(md_checks, high, seeds[0])
    counts = []
    for seed, chosen in study["selected"].items():
        counts.append(
            f"seed {seed}: {len(chosen['train'][str(largest)])} {high} training, "
            f"{len(chosen['val'])} validation"
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
        f"takes a prefix). `energy_forces` trains on `data/train-nN-seedK`: every structure "
        f"except the test ones, with {low} labels, and {high} labels only on those N and on the "
        f"validation structures (split `{SPLIT}` in that store); every other model on "
        f"`data/train-nN-seedK-energy`, the same without {high} forces.",
        "- " + "; ".join(counts) + " (indices: `study.selected`).",
        "",
        "## Hyperparameters",
        "",
    ]
    if study["study_defaults"] is not None:
        lines.append(
            "Shared by every model (the study's defaults): "
            + ", ".join(f"`{k}` = `{v}`" for k, v in study["study_defaults"].items())
            + f"; budget {budget.describe()} per run."
        )
    else:
        lines.append(f"Shared by every model: the base config `{args['config']}`.")
    mf, ft = study["multi_fidelity_settings"], study["finetune_settings"]
    lines += [
        "",
        f"Multi-fidelity models: {high} energy weight {mf['high_energy_weight']:g} (energy "
        f"terms are per-atom MSE, force terms per-component MSE, each level's averaged over its "
        f"own frames, {low} weights 1); `multi_fidelity` and `multi_fidelity_delta` mix the "
        f"levels `{mf['mixing']}` (equal shares of each epoch); `multi_fidelity_finetune` spends "
        f"{ft['steps_share']:.0%} of its steps fine-tuning, {ft['replay']:.0%} of those samples "
        f"replayed from {low}. Not tuned on the test structures.",
        "",
        "## Reproduce",
        "",
        "Each run's directory `runs/seed-K/MODEL/` (several N: `runs/seed-K/nN/MODEL/`) holds "
        "`study-config.yaml` (the mftrain config it was given), `mftrain.yaml` (resolved), "
        "`config.yaml` (nequip's), `provenance.json`, `fit.log`, the CSV logs and checkpoints, "
        "and `score.json`. The study's arguments are in `study-plan.json`; all numbers in "
        "`results.json`.",
        "",
    ]
    return "\n".join(lines)


def _by_n_section(by_n: dict[str, Any], high: str) -> list[str]:
    """The learning curve: every model's force MAE at every N, and its figure."""
    sizes = list(by_n)
    names = model_names(by_n[sizes[0]])
    rows = [[name, *(show_spread(by_n[n][name], "forces_mae") for n in sizes)] for name in names]
    return [
        "## Learning curve",
        "",
        f"Held-out {high} force MAE (meV/Å) against the number N of {high} energies in "
        "training (nested sets; `results.json` → `by_n_high`):",
        "",
        markdown_table(["model", *(f"N = {n}" for n in sizes)], rows),
        "",
        "![errors against N](figures/by_n_high.png)",
        "",
    ]


def _low_head_section(summary: dict, low: str) -> list[str]:
    """The multi-fidelity models' low heads against the low level's own labels, and warnings."""
    rows = []
    for model in MODELS:
        if model.two_heads:
            head = summary[model.name]["low_head"]
            rows.append(
                [
                    model.name,
                    show_spread(head, "forces_mae"),
                    show_spread(head, "energy_mae_per_atom", digits=2),
                ]
            )
    gap = summary[BASELINE]["forces_mae"]
    lines = [
        f"## The {low} heads",
        "",
        f"The multi-fidelity models' {low} heads against {low}'s own labels on the test "
        f"structures. A multi-fidelity model can only learn the {low} → high correction where its "
        f"{low} head resolves it: its force error should be well below the gap between the two "
        f"levels' forces ({show(gap)} meV/Å).",
        "",
        markdown_table(["model", "force MAE meV/Å", "energy MAE meV/atom"], rows),
        "",
    ]
    lines += [f"**Warning:** {w}." for w in low_head_warnings(summary, low)]
    return lines + [""]


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
