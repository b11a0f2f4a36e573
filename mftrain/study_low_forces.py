"""``mftrain study low-forces-high-energies``: do cheap forces plus expensive energies suffice?

The question of Messerly et al. (MLST 2025): with N expensive (high-level) energies and many
cheap (low-level) energies and forces, how close does a multi-fidelity model get to one trained
on N high-level energies *and forces*, and does it beat the cheap forces themselves? Models, all
with the same architecture, the same wall-clock training budget and the same study stores (see
``mftrain.study``), scored on the high level's forces and energies of held-out structures:

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
also goes through the MD check (:func:`mftrain.analysis.md_check`) for the report.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mfdata.records import Structures
from mfdata.registry import open_store
from mfdata.store.store import Store
from mftrain.config import ConfigError, TrainConfig, with_overrides
from mftrain.study import (
    SCORE_FILE,
    SPLIT,
    STUDY_DEFAULTS,
    Echo,
    StudyData,
    base_config,
    budget,
    check_held_out,
    check_plan,
    default_jobs,
    draw,
    learning_curve,
    level_id,
    markdown_table,
    prepare_study_data,
    quiet_nequip,
    run_parallel,
    score_checkpoint,
    show,
    show_spread,
    summarise,
    text_table,
    training_store,
)

NAME = "low-forces-high-energies"
BASELINE = "low_level_as_prediction"


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


@dataclass
class LowForcesArgs:
    data: str
    low: str
    high: str
    n_high: int = 100
    n_test: int = 50
    seeds: int = 1
    budget_minutes: float = 2.0
    val_fraction: float = 0.1
    split_seed: int = 0
    config: str | None = None
    md: bool = True
    out: str = "study-low-forces-high-energies"
    jobs: int | None = None  # runs at a time (default: one per core); not part of the plan


def model_config(
    base: TrainConfig,
    model: Model,
    stores: list[str],
    split: str,
    low: str,
    high: str,
    seed: int,
    minutes: float,
    out: Path,
) -> TrainConfig:
    high_weights: dict = {}
    overrides: dict = {
        "seed": seed,
        "strategy": model.strategy,
        "data.stores": stores,
        "data.levels": [low, high] if model.two_heads else [high],
        "data.split": split,
        "data.train_part": "train",
        "data.val_part": "val",
        "data.subset": None,
        "data.selection": None,
        **budget(minutes),
        "out": str(out),
    }
    if not model.high_forces:
        high_weights["forces"] = 0.0
        if not model.two_heads:
            overrides["data.labels"] = ["energy"]
    if model.two_heads:
        high_weights["energy"] = MULTI_FIDELITY["high_energy_weight"]
        overrides["data.mixing"] = MULTI_FIDELITY["mixing"]
    if model.strategy == "delta":
        overrides["delta"] = {"bases": {high: low}}
    overrides["loss.levels"] = {high: high_weights} if high_weights else {}
    return with_overrides(base, overrides)


# --------------------------------------------------------------------------- the baseline


def low_level_prediction(
    s: Structures, test: np.ndarray, train: np.ndarray, low: str, high: str
) -> tuple[dict, dict]:
    """The low level's forces as the high level's on the ``test`` structures; energies as the
    low level's plus per-element offsets fitted (mfdata.stats.fit_per_element) to the high-low
    differences of the ``train`` structures. Returns metrics and parity arrays."""
    from mfdata.stats import composition, fit_per_element

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


# --------------------------------------------------------------------------- running


def _check_levels(store: Store, low: str, high: str) -> None:
    levels = store.manifest.levels
    for level, role in ((low, "--low"), (high, "--high")):
        if level not in levels:
            raise ConfigError(
                f"{store.path}: {role} {level} is not in the store (it has {', '.join(levels)})"
            )
        missing = [k for k in ("energy", "forces") if k not in levels[level].labels]
        if missing:
            why = (
                "the study trains on the low level's energies and forces"
                if role == "--low"
                else "the study scores the high level's forces and energies"
            )
            raise ConfigError(
                f"{store.path}: {role} {level} has no {' or '.join(missing)} in the store; {why}"
            )


def run_study(args: LowForcesArgs, echo: Echo = print) -> dict:
    """Build the study stores, train and score every model for every seed, write the JSON
    (``OUT/results.json``) and the report (``OUT/report.md`` and its PNGs); returns the JSON."""
    low, high = level_id(args.low), level_id(args.high)
    if low == high:
        raise ConfigError(f"--low and --high are both {low}")
    counts = {"--n-high": args.n_high, "--n-test": args.n_test, "--seeds": args.seeds}
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"{name} {value}: must be at least 1")
    if not args.budget_minutes > 0:
        raise ConfigError(f"--budget-minutes {args.budget_minutes}: must be positive")
    if not 0 < args.val_fraction < 0.5:
        raise ConfigError(f"--val-fraction {args.val_fraction}: must be in (0, 0.5)")
    base = base_config(args.config)
    opened = open_store(args.data)
    _check_levels(opened, low, high)
    models = list(MODELS)
    out = Path(args.out).resolve()
    plan = {
        **asdict(args),
        "data": str(opened.path.resolve()),
        "checksum": opened.manifest.checksum,
        "low": low,
        "high": high,
        "models": [m.name for m in models],
        "base_config": base.model_dump(mode="json"),
    }
    plan.pop("out")
    plan.pop("jobs")
    check_plan(out, plan)
    started = time.perf_counter()
    scored = [(high, "energy"), (high, "forces"), (low, "energy"), (low, "forces")]
    data = prepare_study_data(
        opened.path, high, scored, args.n_test, out / "data", args.split_seed, echo
    )
    seeds = list(range(args.seeds))
    results: dict[str, dict[int, dict]] = {m.name: {} for m in models}
    results[BASELINE] = {}
    parity: dict[str, dict] = {}
    selected: dict[int, dict] = {}
    runs = []
    for seed in seeds:
        chosen = draw(data, seed, args.val_fraction)
        training = [str(training_store(data, chosen, args.n_high, echo))]
        check_held_out(data.test, training)
        train = chosen.train(args.n_high)
        selected[seed] = {"train": train.tolist(), "val": chosen.val.tolist()}
        results[BASELINE][seed], arrays = low_level_prediction(
            data.source.structures, data.test_index, train, low, high
        )
        parity.setdefault(BASELINE, arrays)
        for model in models:
            run = out / "runs" / f"seed-{seed}" / model.name
            config = model_config(
                base, model, training, SPLIT, low, high, seed, args.budget_minutes, run
            )
            runs.append((seed, model, run, config))

    def scored(seed: int, model: Model, run: Path, fitted: dict) -> None:
        metrics, arrays = score_checkpoint(run / "best.ckpt", data.test)
        record = {
            **metrics[high],
            "steps": fitted["steps"],
            "train_seconds": fitted["seconds"],
            "run": str(run.relative_to(out)),
        }
        if model.two_heads and low in metrics:
            record["low_head"] = metrics[low]
        results[model.name][seed] = record
        (run / SCORE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if seed == seeds[0]:
            parity[model.name] = arrays[high]
        echo(
            f"seed {seed} {model.name}: {fitted['steps']} steps in {fitted['seconds']:.0f} s; "
            f"{high} force MAE {show(record.get('forces_mae'))} meV/Å, energy MAE "
            f"{show(record.get('energy_mae_per_atom'), digits=2)} meV/atom"
        )

    jobs = args.jobs or default_jobs(len(runs))
    echo(f"{len(runs)} runs of {args.budget_minutes:g} min each, {jobs} at a time")
    with quiet_nequip():
        run_parallel(
            [(run, config) for _, _, run, config in runs],
            jobs,
            lambda k, fitted: scored(runs[k][0], runs[k][1], runs[k][2], fitted),
        )
        md = _md_checks(out, data, models, seeds[0], high, echo) if args.md else {}
    summary = _summary(args, plan, data, models, results, selected, md, started)
    write_report(out, summary, models, parity, low, high)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _md_checks(
    out: Path, data: StudyData, models: list[Model], seed: int, high: str, echo: Echo
) -> dict:
    """The MD check of every model's high head (seed ``seed``), from the first test structure."""
    from ase import Atoms

    from mftrain.analysis import md_check
    from mftrain.export import export_head

    s, _ = Store(data.test).read()
    first = Atoms(numbers=s.numbers[: s.n_atoms[0]], positions=s.positions[: s.n_atoms[0]])
    found = {}
    for model in models:
        run = out / "runs" / f"seed-{seed}" / model.name
        package = run / f"{high}.nequip.zip"
        if not package.exists():
            export_head(run / "best.ckpt", high, package)
        check = md_check(package, first, seed=seed)
        found[model.name] = check
        state = "stable" if check.stable else f"UNSTABLE ({check.failure or 'atoms flew apart'})"
        drift = check.drift_ev_per_atom_per_ps
        echo(
            f"MD check {model.name}: {state}; NVE drift "
            f"{'n/a' if drift is None else f'{drift * 1000:.2f}'} meV/atom/ps"
        )
    return found


def _summary(args, plan, data, models, results, selected, md, started) -> dict:
    import nequip
    import torch

    from mfdata.store.store import mfkit_version

    summary: dict = {}
    for name in [m.name for m in models] + [BASELINE]:
        per_seed = [{"seed": seed, **r} for seed, r in sorted(results[name].items())]
        entry: dict = {"trained": name != BASELINE, **summarise(per_seed)}
        if name in md:
            entry["md_check"] = md[name].summary()
        entry["per_seed"] = per_seed
        summary[name] = entry
    summary["study"] = {
        "recipe": NAME,
        "arguments": plan,
        "models": {
            m.name: {
                "strategy": m.strategy,
                "trains_on": m.trains_on.format(low=plan["low"], high=plan["high"]),
            }
            for m in models
        },
        "multi_fidelity_settings": MULTI_FIDELITY,
        "study_defaults": None if args.config else STUDY_DEFAULTS,
        "source_store": data.info,
        "test_indices": data.test_index.tolist(),
        "selected": {str(k): v for k, v in selected.items()},
        "held_out_check": "no test geometry in any training store (geometry hashes compared)",
        "wall_seconds": round(time.perf_counter() - started, 1),
        "versions": {
            "mfkit": mfkit_version(),
            "nequip": nequip.__version__,
            "torch": str(torch.__version__),
        },
    }
    summary["study"]["md_series"] = {
        k: {"time_ps": v.nve_time_ps, "energy_ev_per_atom": v.nve_energy_ev_per_atom}
        for k, v in md.items()
    }
    return summary


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


def format_comparison(summary: dict) -> str:
    return text_table(*comparison_table(summary))


def markdown_comparison(summary: dict) -> str:
    return markdown_table(*comparison_table(summary))


# --------------------------------------------------------------------------- the report


def write_report(
    out: Path, summary: dict, models: list[Model], parity: dict, low: str, high: str
) -> Path:
    """``OUT/report.md`` with its PNGs beside it."""
    from mftrain.study_plots import bar_chart, curves, parity_grid

    study = summary["study"]
    args = study["arguments"]
    names = [name for name in summary if name != "study"]
    seeds = sorted({r["seed"] for name in names for r in summary[name]["per_seed"]})
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
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
    parity_grid(
        figures / "parity.png",
        [(name, parity[name]) for name in names if name in parity],
        [("forces", "force component (eV/Å)"), ("energy_per_atom", "energy (eV/atom)")],
        f"{high} on the test structures, seed {seeds[0]}",
    )
    logs = {m.name: learning_curve(out / "runs" / f"seed-{seeds[0]}" / m.name) for m in models}
    curves(
        figures / "learning_curves.png",
        [
            (
                f"val {high} energy MAE (eV/atom)",
                {n: c.get(f"val0_epoch/{high}/energy_per_atom_mae", []) for n, c in logs.items()},
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
    md_series = study["md_series"]
    md_checks = {n: summary[n]["md_check"] for n in names if "md_check" in summary[n]}
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
    text = _report_text(summary, models, low, high, seeds, md_checks)
    path = out / "report.md"
    path.write_text(text, encoding="utf-8")
    return path


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


def _report_text(summary, models, low, high, seeds, md_checks: dict) -> str:
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
        markdown_comparison(summary),
        "",
        "![force and energy MAE per model](figures/force_mae.png)",
        "",
        _closing(summary, high),
        "",
        "## Models",
        "",
    ]
    rows = []
    for model in models:
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
    two_heads = [model.name for model in models if model.two_heads]
    if two_heads:
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
        lines += [
            "## MD check",
            "",
            f"Each model's {high} head, exported as a nequip package and run through nequip's "
            f"ASE calculator from the first test structure (seed {seeds[0]}): "
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
