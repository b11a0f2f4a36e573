"""``mftrain study pretrain-finetune`` and ``mftrain study multihead-vs-finetune``.

Both compare ways of carrying what a cheap level teaches over to an expensive one, with the same
architecture, wall-clock budget per run and study stores (see ``mftrain.study``):

- ``pretrain-finetune`` (Zaverkin et al. 2023; Gardner et al. 2025): a model pre-trained on the
  cheap level (every training structure), fine-tuned on N expensive-level structures with the
  whole backbone (``finetune_full``), a frozen backbone (``finetune_frozen``), layer-wise
  learning rates (``finetune_discriminative``, lr x 0.5 per layer from the output) or energies
  only (``finetune_energy_only``), against a model trained from scratch on the same N
  (``scratch``), at several N: learning curves, scored on the expensive level.
- ``multihead-vs-finetune`` (Gardner et al. 2025): one model per level trained on that level
  alone (``single_LEVEL``), one multi-head model on every level (``multihead``), and models
  pre-trained on one level and fine-tuned to each other (``finetune_LEVEL``), scored on every
  level they have a head for.

Fine-tuning runs use strategy ``pretrain_finetune`` from the pre-trained run's checkpoint
(``finetune.from_checkpoint``): the budget counts stage 2 only, so a fine-tuned model has had
the pre-training run's budget too (the report says so).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mfdata.registry import open_store
from mftrain.config import ConfigError, TrainConfig, with_overrides
from mftrain.study import (
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
    level_id,
    markdown_table,
    prepare_study_data,
    quiet_nequip,
    run_parallel,
    score_checkpoint,
    show_spread,
    summarise,
    text_table,
    training_store,
)

FINETUNE_VARIANTS = {
    "finetune_full": {"backbone": "full"},
    "finetune_frozen": {"backbone": "frozen"},
    "finetune_discriminative": {"backbone": "full", "layer_lr_decay": 0.5},
    "finetune_energy_only": {"backbone": "full", "energy_only": True},
}
SCRATCH = "scratch"
MULTIHEAD = "multihead"


@dataclass
class Job:
    """One run: a model (``name``) trained for ``seed`` on ``n`` scarce-level structures."""

    name: str
    seed: int
    n: int | None
    run: Path
    config: TrainConfig
    phase: int = 1  # phase-2 runs start from a phase-1 run's checkpoint


@dataclass
class Scores:
    """Every finished job's metrics per head on the test store, and its steps and time."""

    by_job: dict[tuple[str, int | None, int], dict] = field(default_factory=dict)

    def add(self, job: Job, metrics: dict, fitted: dict) -> None:
        self.by_job[job.name, job.n, job.seed] = {
            "heads": metrics,
            "steps": fitted["steps"],
            "train_seconds": fitted["seconds"],
            "run": str(job.run),
        }

    def summary(self, name: str, n: int | None, level: str) -> dict:
        """Mean, spread and per-seed values of every metric of ``level``'s head."""
        per_seed = [
            {"seed": seed, **r["heads"][level], "steps": r["steps"]}
            for (job, size, seed), r in sorted(self.by_job.items(), key=lambda x: x[0][2])
            if job == name and size == n and level in r["heads"]
        ]
        return {**summarise(per_seed), "per_seed": per_seed}


def _common(stores: list[str], seed: int, minutes: float, run: Path) -> dict:
    return {
        "seed": seed,
        "data.stores": stores,
        "data.split": SPLIT,
        "data.train_part": "train",
        "data.val_part": "val",
        **budget(minutes),
        "out": str(run),
    }


def single_config(base, level, stores, seed, minutes, run) -> TrainConfig:
    return with_overrides(
        base,
        {
            **_common(stores, seed, minutes, run),
            "strategy": "single",
            "data.levels": [level],
        },
    )


def multihead_config(base, levels, stores, seed, minutes, run) -> TrainConfig:
    return with_overrides(
        base,
        {
            **_common(stores, seed, minutes, run),
            "strategy": "multihead",
            "data.levels": list(levels),
            "data.mixing": {"mode": "balanced"},
        },
    )


def finetune_config(base, level, source: Path, options, stores, seed, minutes, run) -> TrainConfig:
    return with_overrides(
        base,
        {
            **_common(stores, seed, minutes, run),
            "strategy": "pretrain_finetune",
            "data.levels": None,
            "finetune": {"level": level, "from_checkpoint": str(source), **options},
        },
    )


def run_jobs(jobs: Sequence[Job], data: StudyData, parallel: int | None, echo: Echo) -> Scores:
    """Phase 1, then phase 2; every run scored on the test store as it finishes."""
    scores = Scores()
    for phase in sorted({job.phase for job in jobs}):
        todo = [job for job in jobs if job.phase == phase]

        def done(k: int, fitted: dict, todo=todo) -> None:
            job = todo[k]
            metrics, _ = score_checkpoint(Path(fitted["checkpoint"]), data.test)
            scores.add(job, metrics, fitted)
            size = "" if job.n is None else f" N={job.n}"
            echo(f"seed {job.seed}{size} {job.name}: {fitted['steps']} steps")

        run_parallel(
            [(job.run, job.config) for job in todo],
            parallel or default_jobs(len(todo)),
            done,
        )
    return scores


def _check(args) -> None:
    if args.seeds < 1 or args.n_test < 2 or not args.budget_minutes > 0:
        raise ConfigError("give --seeds >= 1, --n-test >= 2 and a positive --budget-minutes")
    if not 0 < args.val_fraction < 0.5:
        raise ConfigError(f"--val-fraction {args.val_fraction}: must be in (0, 0.5)")


def _plan(args, opened, base, **extra) -> dict:
    plan = {
        **asdict(args),
        "data": str(opened.path.resolve()),
        "checksum": opened.manifest.checksum,
        "base_config": base.model_dump(mode="json"),
        **extra,
    }
    for key in ("out", "jobs"):
        plan.pop(key)
    return plan


def _level_in(store, name: str, role: str, labels: Sequence[str] = ("energy",)) -> str:
    level = level_id(name)
    known = store.manifest.levels
    if level not in known:
        raise ConfigError(f"{store.path}: {role} {level} is not in the store ({', '.join(known)})")
    missing = [k for k in labels if k not in known[level].labels]
    if missing:
        raise ConfigError(f"{store.path}: {role} {level} has no {', '.join(missing)}")
    return level


# --------------------------------------------------------------------------- pretrain-finetune


@dataclass
class PretrainFinetuneArgs:
    data: str
    pretrain: str
    finetune: str
    sizes: list[int] = field(default_factory=lambda: [10, 25, 50, 100])
    n_test: int = 50
    seeds: int = 1
    budget_minutes: float = 1.0
    pretrain_minutes: float = 2.0
    val_fraction: float = 0.1
    split_seed: int = 0
    config: str | None = None
    out: str = "study-pretrain-finetune"
    jobs: int | None = None


def pretrain_finetune(args: PretrainFinetuneArgs, echo: Echo = print) -> dict:
    """Pre-train per seed, then scratch and the fine-tuning variants at every size."""
    base = base_config(args.config)
    opened = open_store(args.data)
    _check(args)
    low = _level_in(opened, args.pretrain, "--pretrain", ("energy", "forces"))
    high = _level_in(opened, args.finetune, "--finetune")
    if low == high:
        raise ConfigError(f"--pretrain and --finetune are both {low}")
    sizes = sorted(set(args.sizes))
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"--sizes {args.sizes}: give positive sizes")
    with_forces = "forces" in opened.manifest.levels[high].labels
    variants = {
        name: options
        for name, options in FINETUNE_VARIANTS.items()
        if with_forces or not options.get("energy_only")  # without forces it is the full one
    }
    out = Path(args.out).resolve()
    plan = _plan(args, opened, base, pretrain=low, finetune=high)
    check_plan(out, plan)
    started = time.perf_counter()
    scored = [(high, "energy")] + ([(high, "forces")] if with_forces else [])
    data = prepare_study_data(
        opened.path, high, scored, args.n_test, out / "data", args.split_seed, echo
    )
    jobs = []
    for seed in range(args.seeds):
        chosen = draw(data, seed, args.val_fraction)
        stores = {n: [str(training_store(data, chosen, n, echo))] for n in sizes}
        check_held_out(data.test, [s for paths in stores.values() for s in paths])
        root = out / "runs" / f"seed-{seed}"
        pre = root / f"pretrain-{low}"
        config = single_config(base, low, stores[sizes[-1]], seed, args.pretrain_minutes, pre)
        jobs.append(Job("pretrain", seed, None, pre, config))
        for n in sizes:
            run = root / f"n{n}" / SCRATCH
            config = single_config(base, high, stores[n], seed, args.budget_minutes, run)
            jobs.append(Job(SCRATCH, seed, n, run, config))
            for name, options in variants.items():
                run = root / f"n{n}" / name
                config = finetune_config(
                    base,
                    high,
                    pre / "best.ckpt",
                    options,
                    stores[n],
                    seed,
                    args.budget_minutes,
                    run,
                )
                jobs.append(Job(name, seed, n, run, config, phase=2))
    with quiet_nequip():
        scores = run_jobs(jobs, data, args.jobs, echo)
    names = [SCRATCH, *variants]
    summary: dict = {name: {str(n): scores.summary(name, n, high) for n in sizes} for name in names}
    summary["study"] = {
        "recipe": "pretrain-finetune",
        "arguments": plan,
        "pretrain": {
            str(seed): scores.by_job["pretrain", None, seed] for seed in range(args.seeds)
        },
        "variants": variants,
        "study_defaults": None if args.config else STUDY_DEFAULTS,
        "source_store": data.info,
        "test_indices": data.test_index.tolist(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _pretrain_finetune_report(out, summary, names, sizes, low, high, with_forces)
    return summary


def learning_curve_table(summary: dict, key: str, digits: int = 1) -> tuple[list, list]:
    names = [name for name in summary if name != "study"]
    sizes = list(summary[names[0]])
    header = ["model", *[f"N={n}" for n in sizes]]
    rows = [[name] + [show_spread(summary[name][n], key, digits) for n in sizes] for name in names]
    return header, rows


QUANTITIES = {"forces_mae": ("force MAE", "Å"), "energy_mae_per_atom": ("energy MAE", "atom")}


def format_learning_curves(summary: dict) -> str:
    first = next(iter(summary[SCRATCH].values()))
    key = "forces_mae" if first["forces_mae"] is not None else "energy_mae_per_atom"
    what, per = QUANTITIES[key]
    return f"{what} (meV/{per}):\n" + text_table(*learning_curve_table(summary, key))


def _pretrain_finetune_report(out, summary, names, sizes, low, high, with_forces) -> None:
    from mftrain.study_plots import learning_curves_by_size

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    panels = []
    keys = (["forces_mae"] if with_forces else []) + ["energy_mae_per_atom"]
    for key in keys:
        what, per = QUANTITIES[key]
        panels.append(
            (
                f"{high} {what} (eV/{per})",
                {
                    name: [
                        (n, [r.get(key) for r in summary[name][str(n)]["per_seed"]]) for n in sizes
                    ]
                    for name in names
                },
            )
        )
    learning_curves_by_size(figures / "learning_curves.png", panels, f"fine-tuning {low} → {high}")
    study = summary["study"]
    args = study["arguments"]
    lines = [
        f"# Pre-training on {low}, fine-tuning on {high}",
        "",
        f"Store `{study['source_store']['name']}`; {args['n_test']} held-out structures scored on "
        f"{high}; {args['seeds']} seed(s); pre-training: `single` on {low} energies and forces of "
        f"every training structure, {args['pretrain_minutes']:g} min; every other run "
        f"{args['budget_minutes']:g} min (fine-tuning runs: stage 2 only, on top of the "
        f"pre-training). N: {high} training structures (energies"
        + (" and forces" if with_forces else "")
        + "; nested across N). Variants: "
        + "; ".join(f"`{name}` {options}" for name, options in study["variants"].items())
        + f"; `{SCRATCH}`: `single` on the same N from scratch.",
        "",
    ]
    for key in keys:
        what, per = QUANTITIES[key]
        lines += [
            f"## {high} {what} (meV/{per}, mean ± std over seeds)",
            "",
            markdown_table(*learning_curve_table(summary, key, 1 if key == "forces_mae" else 2)),
            "",
        ]
    lines += [
        "![learning curves](figures/learning_curves.png)",
        "",
        "Every run's directory `runs/seed-K/...` holds its configs (`study-config.yaml`, "
        "`mftrain.yaml`, `config.yaml`), logs and checkpoints (a fine-tuning run's stage 2 in "
        "`finetune/`, summed up in `stages.json`); numbers in `results.json`.",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------- multihead-vs-finetune


@dataclass
class MultiheadVsFinetuneArgs:
    data: str
    levels: list[str] | None = None
    pretrain: str | None = None  # default: the level with the most energies
    n_test: int = 20
    seeds: int = 1
    budget_minutes: float = 2.0
    val_fraction: float = 0.1
    split_seed: int = 0
    config: str | None = None
    out: str = "study-multihead-vs-finetune"
    jobs: int | None = None


def multihead_vs_finetune(args: MultiheadVsFinetuneArgs, echo: Echo = print) -> dict:
    """Single-level models, one multi-head model and fine-tuned models, scored on every level."""
    base = base_config(args.config)
    opened = open_store(args.data)
    _check(args)
    known = opened.manifest.levels
    levels = [_level_in(opened, name, "--levels") for name in (args.levels or list(known))]
    if len(set(levels)) < 2:
        raise ConfigError(f"--levels {', '.join(levels)}: the study needs two levels or more")
    count: Callable[[str], int] = lambda level: known[level].labels["energy"].count  # noqa: E731
    pretrain = (
        _level_in(opened, args.pretrain, "--pretrain") if args.pretrain else max(levels, key=count)
    )
    if pretrain not in levels:
        raise ConfigError(f"--pretrain {pretrain} is not one of --levels {', '.join(levels)}")
    scarce = min(levels, key=count)
    scored = [(lvl, k) for lvl in levels for k in ("energy", "forces") if k in known[lvl].labels]
    out = Path(args.out).resolve()
    plan = _plan(args, opened, base, levels=levels, pretrain_level=pretrain)
    check_plan(out, plan)
    started = time.perf_counter()
    data = prepare_study_data(
        opened.path, scarce, scored, args.n_test, out / "data", args.split_seed, echo
    )
    jobs = []
    for seed in range(args.seeds):
        stores = [str(training_store(data, draw(data, seed, args.val_fraction), None, echo))]
        check_held_out(data.test, stores)
        root = out / "runs" / f"seed-{seed}"
        for level in levels:
            run = root / f"single_{level}"
            config = single_config(base, level, stores, seed, args.budget_minutes, run)
            jobs.append(Job(f"single_{level}", seed, None, run, config))
        run = root / MULTIHEAD
        config = multihead_config(base, levels, stores, seed, args.budget_minutes, run)
        jobs.append(Job(MULTIHEAD, seed, None, run, config))
        source = root / f"single_{pretrain}" / "best.ckpt"
        for level in levels:
            if level == pretrain:
                continue
            run = root / f"finetune_{level}"
            config = finetune_config(
                base, level, source, {"backbone": "full"}, stores, seed, args.budget_minutes, run
            )
            jobs.append(Job(f"finetune_{level}", seed, None, run, config, phase=2))
    with quiet_nequip():
        scores = run_jobs(jobs, data, args.jobs, echo)
    names = list(dict.fromkeys(job.name for job in jobs))
    summary: dict = {}
    for name in names:
        heads = {}
        for level in levels:
            found = scores.summary(name, None, level)
            if found["per_seed"]:
                heads[level] = found
        summary[name] = heads
    summary["study"] = {
        "recipe": "multihead-vs-finetune",
        "arguments": plan,
        "levels": levels,
        "pretrain_level": pretrain,
        "study_defaults": None if args.config else STUDY_DEFAULTS,
        "source_store": data.info,
        "test_indices": data.test_index.tolist(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _multihead_report(out, summary, names, levels, pretrain)
    return summary


def every_level_table(summary: dict) -> tuple[list, list]:
    levels = summary["study"]["levels"]
    names = [name for name in summary if name != "study"]
    header = ["model"]
    for level in levels:
        header += [f"{level} E meV/atom", f"{level} F meV/Å"]
    rows = []
    for name in names:
        row = [name]
        for level in levels:
            head = summary[name].get(level)
            if head is None:
                row += ["-", "-"]
                continue
            row.append(show_spread(head, "energy_mae_per_atom", digits=2))
            row.append(show_spread(head, "forces_mae"))
        rows.append(row)
    return header, rows


def format_every_level(summary: dict) -> str:
    return text_table(*every_level_table(summary))


def _multihead_report(out, summary, names, levels, pretrain) -> None:
    from mftrain.study_plots import bar_chart

    figures = out / "figures"
    figures.mkdir(exist_ok=True)

    def seeds(name: str, level: str, key: str) -> list:
        return [r.get(key) for r in summary[name].get(level, {}).get("per_seed", [])]

    plots = []
    for key, (what, per) in QUANTITIES.items():
        panels = [
            (f"{level} {what} (eV/{per})", [seeds(n, level, key) for n in names])
            for level in levels
            if any(v is not None for n in names for v in seeds(n, level, key))
        ]
        if panels:
            path = figures / f"{key.removesuffix('_per_atom')}.png"
            bar_chart(path, names, panels, f"held-out {what} per level")
            plots += [f"![{what} per level](figures/{path.name})", ""]
    study = summary["study"]
    args = study["arguments"]
    text = [
        "# Multi-head against pre-training/fine-tuning against single-level models",
        "",
        f"Store `{study['source_store']['name']}`; levels {', '.join(levels)}; "
        f"{args['n_test']} held-out structures with every level; {args['seeds']} seed(s); "
        f"{args['budget_minutes']:g} min per run. `single_LEVEL`: that level alone; "
        f"`{MULTIHEAD}`: one head per level, balanced mixing; `finetune_LEVEL`: "
        f"`single_{pretrain}` fine-tuned on LEVEL (whole backbone; it also had the pre-training "
        "run's budget). Every model is scored on every level it has a head for (mean ± std "
        "over seeds).",
        "",
        markdown_table(*every_level_table(summary)),
        "",
        *plots,
        "Every run's directory `runs/seed-K/MODEL/` holds its configs, logs and checkpoints; "
        "numbers in `results.json`.",
        "",
    ]
    (out / "report.md").write_text("\n".join(text), encoding="utf-8")
