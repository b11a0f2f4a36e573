"""``mftrain study representations``: do backbones trained on different levels learn alike?

Gardner et al. (2025) find pre-trained representations method-specific, and multi-head
backbones method-agnostic. This recipe trains, with the same architecture, budget and study
stores (see ``mftrain.study``), one single-level model per level and one multi-head model on all
levels, for every seed, and compares their backbones by linear CKA
(:func:`mftrain.analysis.linear_cka`) of the node features after the last interaction layer on
the same held-out structures (one row per atom). Two seeds of the same model give the reference:
how alike two backbones trained on the same data are. Each model's errors on its own levels show
that it learned something.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mfdata.registry import open_store
from mftrain.config import ConfigError, with_overrides
from mftrain.study import (
    SPLIT,
    Echo,
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
    show,
    text_table,
    training_store,
)

NAME = "representations"
MULTIHEAD = "multihead"


@dataclass
class RepresentationsArgs:
    data: str
    levels: list[str] | None = None  # default: every level of the store
    n_test: int = 20
    seeds: int = 2
    budget_minutes: float = 2.0
    val_fraction: float = 0.1
    split_seed: int = 0
    config: str | None = None
    out: str = "study-representations"
    jobs: int | None = None


def single(level: str) -> str:
    return f"single_{level}"


def _levels(args: RepresentationsArgs, store) -> list[str]:
    available = list(store.manifest.levels)
    levels = available if args.levels is None else [level_id(name) for name in args.levels]
    missing = [level for level in levels if level not in available]
    if missing:
        raise ConfigError(
            f"{store.path}: --levels {', '.join(missing)} not in the store (it has "
            f"{', '.join(available)})"
        )
    if len(levels) < 2:
        raise ConfigError(f"--levels {', '.join(levels)}: the study compares at least two levels")
    return levels


def run_study(args: RepresentationsArgs, echo: Echo = print) -> dict:
    """Train, score and compare; writes ``OUT/results.json`` and ``OUT/report.md``."""
    from mftrain.analysis import backbone_features, linear_cka

    if args.seeds < 1 or args.n_test < 2 or not args.budget_minutes > 0:
        raise ConfigError("--seeds >= 1, --n-test >= 2 and a positive --budget-minutes, please")
    base = base_config(args.config)
    opened = open_store(args.data)
    levels = _levels(args, opened)
    labels = {level: opened.manifest.levels[level].labels for level in levels}
    scored = [
        (level, kind) for level in levels for kind in ("energy", "forces") if kind in labels[level]
    ]
    scarce = min(
        levels, key=lambda level: labels[level]["energy"].count if "energy" in labels[level] else 0
    )
    out = Path(args.out).resolve()
    plan = {
        **asdict(args),
        "data": str(opened.path.resolve()),
        "checksum": opened.manifest.checksum,
        "levels": levels,
        "base_config": base.model_dump(mode="json"),
    }
    for key in ("out", "jobs"):
        plan.pop(key)
    check_plan(out, plan)
    started = time.perf_counter()
    data = prepare_study_data(
        opened.path, scarce, scored, args.n_test, out / "data", args.split_seed, echo
    )
    models = {single(level): [level] for level in levels} | {MULTIHEAD: levels}
    runs = []
    for seed in range(args.seeds):
        training = [str(training_store(data, draw(data, seed, args.val_fraction), None, echo))]
        check_held_out(data.test, training)
        for name, heads in models.items():
            run = out / "runs" / f"seed-{seed}" / name
            overrides = {
                "seed": seed,
                "strategy": "multihead" if name == MULTIHEAD else "single",
                "data.stores": training,
                "data.levels": heads,
                "data.split": SPLIT,
                "data.train_part": "train",
                "data.val_part": "val",
                **budget(args.budget_minutes),
                "out": str(run),
            }
            if name == MULTIHEAD:
                overrides["data.mixing"] = {"mode": "balanced"}
            runs.append((seed, name, run, with_overrides(base, overrides)))

    scores: dict[str, dict[int, dict]] = {name: {} for name in models}
    features: dict[tuple[str, int], np.ndarray] = {}

    def done(k: int, fitted: dict) -> None:
        seed, name, run, _ = runs[k]
        metrics, _ = score_checkpoint(run / "best.ckpt", data.test)
        scores[name][seed] = {**metrics, "steps": fitted["steps"], "seconds": fitted["seconds"]}
        features[name, seed] = backbone_features(run / "best.ckpt", data.test)
        echo(f"seed {seed} {name}: {fitted['steps']} steps in {fitted['seconds']:.0f} s")

    jobs = args.jobs or default_jobs(len(runs))
    with quiet_nequip():
        run_parallel([(run, config) for _, _, run, config in runs], jobs, done)

    names = list(models)
    seeds = list(range(args.seeds))
    same_seed = {
        a: {
            b: float(np.mean([linear_cka(features[a, s], features[b, s]) for s in seeds]))
            for b in names
        }
        for a in names
    }
    across_seeds = {
        name: float(
            np.mean(
                [
                    linear_cka(features[name, s], features[name, t])
                    for s, t in itertools.combinations(seeds, 2)
                ]
            )
        )
        if len(seeds) > 1
        else None
        for name in names
    }
    summary = {
        "cka": same_seed,
        "cka_seed_to_seed": across_seeds,
        "scores": {name: {str(s): v for s, v in per.items()} for name, per in scores.items()},
        "study": {
            "recipe": NAME,
            "arguments": plan,
            "source_store": data.info,
            "test_indices": data.test_index.tolist(),
            "features": "node features after the last interaction layer, one row per atom of the "
            "test structures",
            "wall_seconds": round(time.perf_counter() - started, 1),
        },
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _report(out, summary, names, levels, labels)
    return summary


def cka_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    names = list(summary["cka"])
    header = ["CKA", *names, "seed-to-seed"]
    rows = [
        [a]
        + [f"{summary['cka'][a][b]:.3f}" for b in names]
        + [
            "-"
            if summary["cka_seed_to_seed"][a] is None
            else f"{summary['cka_seed_to_seed'][a]:.3f}"
        ]
        for a in names
    ]
    return header, rows


def format_cka(summary: dict) -> str:
    return text_table(*cka_table(summary))


def _report(out: Path, summary: dict, names: list[str], levels: list[str], labels: dict) -> None:
    from mftrain.study_plots import heatmap

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    matrix = np.array([[summary["cka"][a][b] for b in names] for a in names])
    heatmap(figures / "cka.png", names, matrix, "linear CKA of backbone features (test atoms)")
    args = summary["study"]["arguments"]
    rows = []
    for name in names:
        for level in levels:
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
    text = [
        "# Representations: backbones trained on different levels",
        "",
        f"Store `{summary['study']['source_store']['name']}`; levels {', '.join(levels)}; "
        f"{args['n_test']} held-out structures; {args['seeds']} seed(s); "
        f"{args['budget_minutes']:g} min per model. Models: one single-level model per level and "
        f"`{MULTIHEAD}` (all levels, balanced mixing), same architecture. Compared by linear CKA "
        "of the node features after the last interaction layer, one row per atom of the test "
        "structures (mean over seeds of the same-seed pairs); `seed-to-seed`: the same model "
        "from two seeds, the reference for 'alike'.",
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
    (out / "report.md").write_text("\n".join(text), encoding="utf-8")
