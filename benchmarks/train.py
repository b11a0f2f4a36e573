"""Training-step benchmark: mfkit's heads, masked loss and fit against plain nequip, side by side.

    python benchmarks/train.py --quick            # under 2 minutes on 2 cores
    python benchmarks/train.py                    # the full matrix (README: figures and time)
    python benchmarks/train.py --device cuda      # the same on a GPU

Everything runs on the same structures and the same architecture (mftrain's default model:
2 layers, l_max 1, 16 features, r_max 5 Å; Adam at 0.01):

1. **Steps in process.** Batches are read once from a store through mfkit's ``FidelityDataset``
   (LMDB) and collated; nequip's batches are the same frames without mfkit's fields (``dataset``,
   the label presence flags). Each configuration is a Lightning ``Trainer.fit`` over those
   batches: nequip's ``NequIPLightningModule`` with ``NequIPGNNModel`` and ``EnergyForceLoss``,
   or mfkit's ``MultiFidelityLightningModule`` with ``MultiHeadNequIPModel`` and
   ``MultiFidelityLoss`` (what ``mftrain fit`` builds): ``single`` (one head), ``multihead``
   with 1, 3 and 8 heads, ``delta`` (two heads, the second on the first) and
   ``fidelity_embedding`` (3 levels). Batch kinds: energies and forces of one level (every
   frame in head 0), the same frames with energies only (no force label: mfkit skips the force
   pass), and mixed levels (frame ``k`` in head ``k mod heads``). A step is forward, loss,
   backward and optimiser step (``step_timer.StepTimes``: median after warm-up); samples/s
   from it; peak memory is the largest RSS above the RSS before the run, sampled every 10 ms (on
   a GPU: ``torch.cuda.max_memory_allocated``).
   **Interleaved** (float32): the same configurations without Lightning, each taking one step
   per round in a new random order, so that the machine's slow phases fall on all of them alike;
   the headline step ratios come from these (consecutive Lightning runs drift by more than the
   differences being measured on a shared virtual machine). ``--paired-only`` runs just these.
2. **End to end.** ``nequip-train`` on its own config (``NequIPDataModule`` over a
   ``NequIPLMDBDataset`` of the same structures at one level, ``EnergyForceLoss``), against the
   config ``mftrain fit`` writes for the same store, level, model, batch size and trainer
   (``FidelityDataModule``, sampler, ``MultiFidelityLoss``, checkpoints, CSV logs), each run by
   ``python -m nequip.scripts.train`` in a subprocess with the timer among its callbacks: the
   median interval between batches (loading, sampling, logging and callbacks included).

Datasets: the bundled methanol store (6 atoms; GFN2-xTB energies and forces) and the synthetic
ANI-like store of ``benchmarks/loader.py`` (3-30 H/C/N/O atoms). Progress goes to stderr; the
last line of stdout is one JSON object with every figure, the headline ratios first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loader import build_nequip_lmdb, log, make_store  # noqa: E402
from step_timer import StepTimes  # noqa: E402

METHANOL = ROOT / "mfdata" / "examples" / "methanol-store"
METHANOL_LEVEL = "gfn2-xtb"
ANI_LEVEL = "wb97x-631gd"  # the level loader.build_nequip_lmdb writes
LR = 0.01


# --------------------------------------------------------------------------- batches


def prepared_copy(store: Path, work: Path) -> Path:
    """A copy of ``store`` in ``work``, packed, with statistics and the default split (what
    ``mftrain fit`` makes of a store; the original is not touched)."""

    from mftrain.config import TrainConfig
    from mftrain.train import prepare_stores

    copy = work / store.name
    if not copy.exists():
        shutil.copytree(store, copy)
    prepare_stores(TrainConfig.model_validate({"data": {"stores": [str(copy)]}}), log)
    return copy


def read_batches(
    store: Path, level: str, batch_size: int, n_batches: int, dtype: str
) -> dict[str, list[dict]]:
    """``n_batches`` batches of the same structures of ``level``, read through mfkit's dataset:
    ``energy_forces`` and ``energy`` (no force label), as mfkit's training sees them."""
    import torch
    from nequip.data import AtomicDataDict

    from mfdata.loading.lmdb_dataset import FidelityDataset
    from mfdata.loading.samples import frame_transforms
    from mftrain.config import ModelConfig

    type_names = _type_names(store)
    transforms = frame_transforms(ModelConfig().r_max, type_names)
    dataset = FidelityDataset([str(store)], [level], type_names, dtype=dtype, transforms=transforms)
    pool = np.asarray(dataset.pools[level])
    ids = np.random.default_rng(0).choice(pool, size=(n_batches, batch_size), replace=False)
    batches = {
        "energy_forces": [
            AtomicDataDict.batched_from_list([dataset[int(i)] for i in row]) for row in ids
        ]
    }
    # the same frames as a level without forces gives them (CCSD(T) energies): NaN, flag 0
    batches["energy"] = [
        {
            **batch,
            "forces": torch.full_like(batch["forces"], float("nan")),
            "forces_present": torch.zeros_like(batch["forces_present"]),
        }
        for batch in batches["energy_forces"]
    ]
    return batches


def with_heads(batches: list[dict], heads: int) -> list[dict]:
    """The batches with frame ``k`` in head ``k mod heads``."""
    import torch

    out = []
    for batch in batches:
        frames = batch["dataset"].shape[0]
        head = (torch.arange(frames) % heads).view(-1, 1).to(batch["dataset"].dtype)
        out.append({**batch, "dataset": head})
    return out


def for_nequip(batches: list[dict]) -> list[dict]:
    """The batches as nequip's own dataset gives them: without mfkit's fields."""
    from mfdata.loading.fields import PRESENT_FIELDS

    dropped = {"dataset", *PRESENT_FIELDS.values()}
    return [{k: v for k, v in batch.items() if k not in dropped} for batch in batches]


# --------------------------------------------------------------------------- modules


def architecture(type_names: list[str], avg_num_neighbors: float, dtype: str) -> dict:
    """mftrain's default model as builder arguments (both builders take them)."""
    from mftrain.config import ModelConfig
    from mftrain.train import backbone_arguments

    return {
        "seed": 0,
        "model_dtype": dtype,
        "type_names": type_names,
        **backbone_arguments(ModelConfig()),
        "avg_num_neighbors": avg_num_neighbors,
    }


def training_module(module_class, model: dict, loss: dict):
    """A training module of ``module_class`` (nequip's or mfkit's) with Adam and no validation."""
    return module_class(
        model=model,
        num_datasets={"train": 1, "val": 0, "test": 0},
        optimizer={"_target_": "torch.optim.Adam", "lr": LR},
        loss=loss,
    )


def nequip_module(arch: dict, shifts: dict, scales: dict):
    """nequip's own training module, model and loss."""
    from nequip.train import NequIPLightningModule

    model = {
        "_target_": "nequip.model.NequIPGNNModel",
        **arch,
        "per_type_energy_shifts": shifts,
        "per_type_energy_scales": scales,
    }
    loss = {"_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": True}
    return training_module(NequIPLightningModule, model, loss)


def mfkit_module(arch: dict, shifts: dict, scales: dict, heads: int, variant: str):
    """mftrain's training module, multi-head model and masked loss: ``heads`` heads, each
    initialised like the first level's; ``variant`` is multihead, delta or fidelity_embedding."""
    from mftrain.training_module import MultiFidelityLightningModule

    levels = [f"level-{k}" for k in range(heads)]
    model = {
        "_target_": "mftrain.model.MultiHeadNequIPModel",
        **arch,
        "levels": levels,
        "per_level_energy_shifts": dict.fromkeys(levels, shifts),
        "per_level_energy_scales": dict.fromkeys(levels, scales),
    }
    if variant == "delta":
        model["bases"] = {levels[1]: levels[0]}
    if variant == "fidelity_embedding":
        model["level_embedding_features"] = 4
    loss = {"_target_": "mftrain.loss.MultiFidelityLoss", "levels": levels}
    return training_module(MultiFidelityLightningModule, model, loss)


# --------------------------------------------------------------------------- timing


class PeakRSS:
    """The largest resident set size above the one at start, sampled every 10 ms in a thread."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return round((self.peak - self.start) / 2**20, 1)


def time_steps(module, batches: list[dict], warmup: int, steps: int, device: str) -> dict:
    """``Trainer.fit`` of ``module`` over ``batches`` (cycled) for ``warmup + steps`` steps:
    median step time, samples/s and peak memory."""
    import lightning
    import torch

    timer = StepTimes()
    order = [batches[k % len(batches)] for k in range(warmup + steps)]
    loader = torch.utils.data.DataLoader(order, batch_size=None, shuffle=False)
    trainer = lightning.Trainer(
        max_steps=warmup + steps,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        trainer.fit(module, train_dataloaders=loader)
    measured = np.asarray(timer.steps[warmup:])
    frames = float(np.mean([int(b["num_atoms"].shape[0]) for b in batches]))
    result = {
        "ms_per_step": round(1e3 * float(np.median(measured)), 2),
        "ms_per_step_iqr": [round(1e3 * float(q), 2) for q in np.percentile(measured, [25, 75])],
        "samples_per_s": round(frames / float(np.median(measured)), 1),
        "steps": len(measured),
        "warmup_s": round(float(np.sum(timer.steps[:warmup])), 2),  # compiling, where compiled
    }
    if device == "cuda":
        result["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        result["peak_rss_mib"] = rss.mib
    return result


def _optimiser_step(module, optimiser, batch: dict) -> None:
    """One training step as the modules' ``training_step`` takes it (mfkit's skips the force
    pass of a batch without force labels), then backward and Adam; no Lightning around it."""
    from mftrain.nn import set_derivatives

    needs = getattr(module.loss, "needs_derivatives", None)
    previous = set_derivatives(module.model, True if needs is None else needs(batch))
    try:
        loss = module.loss(module(dict(batch)), dict(batch))["weighted_sum"]
    finally:
        set_derivatives(module.model, previous)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


def paired_steps(runs: dict[str, tuple], warmup: int, steps: int) -> dict[str, dict]:
    """Every configuration's steps interleaved in one process: each round, every module takes
    one step, in a new random order, so the machine's slow phases fall on all of them alike.
    ``runs`` maps a name to (module, batches); median step time and its ratio to ``nequip``."""
    import random

    import torch

    optimisers = {name: torch.optim.Adam(m.parameters(), lr=LR) for name, (m, _) in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    order, rng = list(runs), random.Random(0)
    for k in range(warmup + steps):
        rng.shuffle(order)
        for name in order:
            module, batches = runs[name]
            started = time.perf_counter()
            _optimiser_step(module, optimisers[name], batches[k % len(batches)])
            if k >= warmup:
                times[name].append(time.perf_counter() - started)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    return {
        name: {
            "ms_per_step": round(1e3 * medians[name], 2),
            "vs_nequip": round(medians[name] / medians["nequip"], 3),
        }
        for name in runs
    }


def _setting(store: Path, level: str, dtype: str, batch_size: int, args):
    """What every configuration of one (dtype, batch size) shares: the batches, the
    architecture and the first level's per-type shifts and scales."""
    import torch
    from nequip.utils.global_state import set_global_state

    from mfdata.store.store import Store
    from mftrain.heads import head_initialisation
    from mftrain.train import average_neighbours

    set_global_state()
    torch.set_num_threads(args.threads)
    batches = read_batches(store, level, batch_size, args.batches, dtype)
    types = _type_names(store)
    init = head_initialisation([Store(store)], [level], types)
    arch = architecture(types, average_neighbours(_dataset(store, level, types)), dtype)
    return batches, arch, init.shifts[level], init.scales[level]


def paired_matrix(store: Path, level: str, dtype: str, batch_size: int, args) -> dict[str, dict]:
    """Part 1's configurations on ``store``, timed by :func:`paired_steps`."""
    batches, arch, shifts, scales = _setting(store, level, dtype, batch_size, args)
    runs = {}
    for name, (kind, heads, variant, batch_kind) in _configs(args.quick, False).items():
        if kind == "nequip":
            runs[name] = (nequip_module(arch, shifts, scales), for_nequip(batches["energy_forces"]))
            continue
        source = batches["energy" if batch_kind == "energy" else "energy_forces"]
        chosen = with_heads(source, heads if batch_kind == "mixed" else 1)
        runs[name] = (mfkit_module(arch, shifts, scales, heads, variant), chosen)
    return paired_steps(runs, args.warmup, args.steps)


def step_matrix(
    store: Path, level: str, dtypes: list[str], batch_sizes: list[int], args
) -> dict[str, dict]:
    """Every configuration of part 1 on ``store``; keys ``MODEL/BATCH/DTYPE/bsN``."""
    results: dict[str, dict] = {}
    for dtype in dtypes:
        for batch_size in batch_sizes:
            batches, arch, shifts, scales = _setting(store, level, dtype, batch_size, args)
            ef, e = batches["energy_forces"], batches["energy"]
            configs = _configs(args.quick, args.compile)
            for name, (kind, heads, variant, batch_kind) in configs.items():
                key = f"{name}/{dtype}/bs{batch_size}"
                compiled = name.endswith("_compile")
                built = {**arch, "compile_mode": "compile"} if compiled else arch
                if kind == "nequip":
                    module = nequip_module(built, shifts, scales)
                    chosen = for_nequip(ef)
                else:
                    module = mfkit_module(built, shifts, scales, heads, variant)
                    source = e if batch_kind == "energy" else ef
                    chosen = with_heads(source, heads if batch_kind == "mixed" else 1)
                # a compiled model compiles at its first step and for new batch shapes: warm up
                # over every distinct batch, and report the compile time apart
                warmup = max(args.warmup, 2 * len(chosen)) if compiled else args.warmup
                results[key] = time_steps(module, chosen, warmup, args.steps, args.device)
                log(f"  {store.name} {key}: {results[key]}")
    return results


def _configs(quick: bool, compile_: bool) -> dict[str, tuple[str, int, str, str]]:
    """name -> (nequip or mfkit, heads, variant, batch kind); ``*_compile``: nequip's
    train-time compile mode (``compile_mode: compile``, torch.compile)."""
    configs = {
        "nequip": ("nequip", 1, "", "energy_forces"),
        "single": ("mfkit", 1, "multihead", "energy_forces"),
        "multihead3": ("mfkit", 3, "multihead", "energy_forces"),
        "multihead3_energy_only": ("mfkit", 3, "multihead", "energy"),
        "multihead3_mixed": ("mfkit", 3, "multihead", "mixed"),
    }
    if not quick:
        configs |= {
            "multihead1_mixed": ("mfkit", 1, "multihead", "mixed"),
            "multihead8_mixed": ("mfkit", 8, "multihead", "mixed"),
            "delta_mixed": ("mfkit", 2, "delta", "mixed"),
            "fidelity_embedding_mixed": ("mfkit", 3, "fidelity_embedding", "mixed"),
        }
    if compile_:
        configs |= {
            "nequip_compile": ("nequip", 1, "", "energy_forces"),
            "multihead3_compile": ("mfkit", 3, "multihead", "energy_forces"),
        }
    return configs


def _type_names(store: Path) -> list[str]:
    from mfdata.loading.samples import default_type_names
    from mfdata.store.store import Store

    return default_type_names([Store(store)])


def _dataset(store: Path, level: str, types: list[str]):
    from mfdata.loading.lmdb_dataset import FidelityDataset
    from mfdata.loading.samples import frame_transforms
    from mftrain.config import ModelConfig

    transforms = frame_transforms(ModelConfig().r_max, types)
    return FidelityDataset([str(store)], [level], types, transforms=transforms)


# --------------------------------------------------------------------------- end to end


def copy_lmdb(source: Path, target: Path) -> None:
    """A compact copy of the single-file LMDB ``source`` at ``target``."""
    import lmdb

    env = lmdb.open(str(source), subdir=False, readonly=True, lock=False)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        env.copyfd(fd, compact=True)
    finally:
        os.close(fd)
        env.close()


def nequip_train(config_dir: Path, env: dict[str, str]) -> float:
    """``nequip-train`` on ``CONFIG_DIR/config.yaml`` in a subprocess; its wall time."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "nequip.scripts.train", "-cp", str(config_dir), "-cn", "config"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def end_to_end(store: Path, level: str, work: Path, args) -> dict[str, dict]:
    """Part 2: ``mftrain fit``'s config against nequip's own, same store, level and model."""
    import yaml

    from mftrain.config import TrainConfig
    from mftrain.train import prepare

    steps = args.warmup + args.e2e_steps
    config = TrainConfig.model_validate(
        {
            "data": {"stores": [str(store)], "levels": [level], "batch_size": args.e2e_batch},
            "trainer": {
                "max_steps": steps,
                "progress_bar": False,
                "precision": args.e2e_dtype,
                "device": args.device,
            },
            "lr_scheduler": None,
            "out": str(work / "mftrain"),
        }
    )
    prepared = prepare(config, echo=lambda _: None)
    ours = prepared.nequip
    ours["trainer"]["callbacks"].append(
        {"_target_": "step_timer.StepTimes", "path": str(work / "mftrain-times.json")}
    )
    ours["training_module"]["provenance"] = {}
    (work / "mftrain").mkdir(parents=True, exist_ok=True)
    (work / "mftrain" / "config.yaml").write_text(yaml.safe_dump(ours), encoding="utf-8")

    lmdb = work / "nequip.lmdb"
    if not lmdb.exists():
        build_nequip_lmdb(store, lmdb, level)
        # validation reads its own copy (one LMDB file cannot be opened twice in a process);
        # LMDB's compacting copy: a plain file copy would fill the 16 GiB map's holes with zeros
        copy_lmdb(lmdb, work / "nequip-val.lmdb")
    theirs = nequip_config(ours, lmdb, level, work / "nequip")
    (work / "nequip").mkdir(parents=True, exist_ok=True)
    (work / "nequip" / "config.yaml").write_text(yaml.safe_dump(theirs), encoding="utf-8")

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "OMP_NUM_THREADS": str(args.threads),
    }
    results = {}
    for name in ("nequip", "mftrain"):
        wall = nequip_train(work / name, env)
        times = json.loads((work / f"{name}-times.json").read_text(encoding="utf-8"))
        intervals = np.asarray(times["intervals"][args.warmup :])
        results[name] = {
            "ms_per_step": round(1e3 * float(np.median(intervals)), 2),
            "ms_per_step_mean": round(1e3 * float(np.mean(intervals)), 2),
            "steps": int(len(intervals)),
            "wall_s": round(wall, 1),
        }
        log(f"  end to end {name}: {results[name]}")
    return results


def nequip_config(ours: dict, lmdb: Path, level: str, out: Path) -> dict:
    """nequip-train's own config for what ``ours`` (mftrain's) trains: the same model (as
    ``NequIPGNNModel``, the head's shifts and scales), batch size, optimiser and trainer, over
    nequip's LMDB dataset and DataModule with nequip's loss."""
    module = ours["training_module"]
    m = dict(module["model"])
    model = {
        "_target_": "nequip.model.NequIPGNNModel",
        **{k: v for k, v in m.items() if not k.startswith("per_level") and k != "_target_"},
        "per_type_energy_shifts": m["per_level_energy_shifts"][level],
        "per_type_energy_scales": m["per_level_energy_scales"][level],
    }
    model.pop("levels")
    for key in ("per_type_energy_shifts_trainable", "per_type_energy_scales_trainable"):
        model[key] = m[key]
    data = ours["data"]
    transforms = [
        {
            "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
            "model_type_names": data["type_names"],
        },
        {"_target_": "nequip.data.transforms.NonPeriodicCellTransform", "override_cell": True},
        {
            "_target_": "nequip.data.transforms.NeighborListTransform",
            "r_max": data["r_max"],
            "type_names": data["type_names"],
            "backend": "matscipy",
        },
    ]

    def dataset(path: Path) -> dict:
        return {
            "_target_": "nequip.data.dataset.NequIPLMDBDataset",
            "file_path": str(path),
            "transforms": transforms,
        }

    loss = {"_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": True}
    trainer = json.loads(json.dumps(ours["trainer"]))
    for callback in trainer["callbacks"]:
        if "dirpath" in callback:
            callback["dirpath"] = str(out)
        if callback["_target_"] == "mftrain.training_module.FinalCheckpoint":
            callback["_target_"] = "lightning.pytorch.callbacks.ModelCheckpoint"
            callback.pop("dirpath")
            callback["dirpath"] = str(out)
            callback["save_last"] = True
        if callback["_target_"] == "step_timer.StepTimes":
            callback["path"] = str(out.parent / "nequip-times.json")
        if callback.get("monitor"):
            callback["monitor"] = "val0_epoch/weighted_sum"
    trainer["logger"]["save_dir"] = str(out)
    return {
        "run": ["train"],
        "seed": ours["seed"],
        "data": {
            "_target_": "nequip.data.datamodule.NequIPDataModule",
            "seed": ours["seed"],
            "train_dataset": dataset(lmdb),
            "val_dataset": dataset(lmdb.with_name("nequip-val.lmdb")),
            "train_dataloader": {
                "_target_": "torch.utils.data.DataLoader",
                "batch_size": data["batch_size"],
                "shuffle": True,
            },
            "val_dataloader": {
                "_target_": "torch.utils.data.DataLoader",
                "batch_size": data["val_batch_size"] or data["batch_size"],
            },
        },
        "trainer": trainer,
        "training_module": {
            "_target_": "nequip.train.NequIPLightningModule",
            "model": model,
            "loss": loss,
            "val_metrics": loss,
            "optimizer": module["optimizer"],
        },
        "hydra": {"run": {"dir": str(out)}, "output_subdir": None, "job": {"chdir": False}},
    }


# --------------------------------------------------------------------------- main


def ratio(a: dict, b: dict) -> float:
    return round(a["ms_per_step"] / b["ms_per_step"], 3)


def headline(steps: dict[str, dict], e2e: dict[str, dict], prefix: str) -> dict[str, float]:
    """The issue's three target ratios (and a few more) from one dataset's figures."""
    out = {}
    for key in steps:
        name, dtype, bs = key.split("/")
        if name != "nequip":
            continue
        base = steps[key]
        suffix = f"{prefix}/{dtype}/{bs}"
        for other in ("single", "multihead3", "multihead3_mixed", "multihead8_mixed"):
            found = steps.get(f"{other}/{dtype}/{bs}")
            if found is not None:
                out[f"{other}_vs_nequip_step/{suffix}"] = ratio(found, base)
        e, ef = steps[f"multihead3_energy_only/{dtype}/{bs}"], steps[f"multihead3/{dtype}/{bs}"]
        out[f"energy_only_vs_energy_forces_step/{suffix}"] = ratio(e, ef)
        for name in ("nequip", "multihead3"):
            compiled = steps.get(f"{name}_compile/{dtype}/{bs}")
            if compiled is not None:
                out[f"{name}_compile_vs_eager_step/{suffix}"] = ratio(
                    compiled, steps[f"{name}/{dtype}/{bs}"]
                )
    if e2e:
        out[f"fit_vs_nequip_train_step/{prefix}"] = ratio(e2e["mftrain"], e2e["nequip"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="methanol, float32, batch 8")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--n", type=int, default=4000, help="synthetic ANI-like structures")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batches", type=int, default=8, help="distinct batches cycled")
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--compile", action="store_true", help="also nequip's train-time compile mode (slow)"
    )
    parser.add_argument(
        "--paired-only",
        action="store_true",
        help="only the interleaved timing of part 1's configurations (float32)",
    )
    args = parser.parse_args()
    args.steps = args.steps or (20 if args.quick else 60)
    args.e2e_steps = 60 if args.quick else 300
    args.e2e_batch = 8
    args.e2e_dtype = "float32"
    dtypes = ["float32"] if args.quick else ["float32", "float64"]
    batch_sizes = [8] if args.quick else [8, 32]

    started = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mfkit-train-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MFKIT_HOME"] = str(work / "mfkit_home")

    import torch

    torch.set_num_threads(args.threads)
    datasets = {"methanol": (prepared_copy(METHANOL, work), METHANOL_LEVEL)}
    if not args.quick:
        log(f"synthetic ANI-like store of {args.n} structures ...")
        datasets["ani"] = (prepared_copy(make_store(work, args.n), work), ANI_LEVEL)
    figures: dict[str, dict] = {"paired": {}, "steps": {}, "end_to_end": {}}
    ratios: dict[str, float] = {}
    for name, (store, level) in datasets.items():
        log(f"{name}: interleaved steps (float32) ...")
        figures["paired"][name] = {
            f"float32/bs{bs}": paired_matrix(store, level, "float32", bs, args)
            for bs in batch_sizes
        }
        log(f"  {name}: {figures['paired'][name]}")
        if args.paired_only:
            continue
        log(f"{name}: steps in process ...")
        figures["steps"][name] = step_matrix(store, level, dtypes, batch_sizes, args)
        e2e = {}
        if name == ("methanol" if args.quick else "ani"):
            log(f"{name}: nequip-train and mftrain fit end to end ...")
            e2e = end_to_end(store, level, work / f"e2e-{name}", args)
            figures["end_to_end"][name] = e2e
        ratios |= headline(figures["steps"][name], e2e, name)
    # the headline step ratios come from the interleaved timing (methanol, float32, batch 8)
    paired = figures["paired"]["methanol"]["float32/bs8"]
    energy_only = paired["multihead3_energy_only"]["ms_per_step"]
    first = {
        "multihead3_vs_nequip_step": paired["multihead3"]["vs_nequip"],
        "energy_only_vs_energy_forces_step": round(
            energy_only / paired["multihead3"]["ms_per_step"], 3
        ),
        "fit_vs_nequip_train_step": next(
            (v for k, v in ratios.items() if k.startswith("fit_vs_nequip_train_step/")), None
        ),
    }
    import lightning
    import nequip

    summary = {
        **first,
        "ratios": ratios,
        **figures,
        "settings": {
            "quick": args.quick,
            "device": args.device,
            "threads": args.threads,
            "steps": args.steps,
            "warmup": args.warmup,
            "end_to_end_steps": args.e2e_steps,
            "end_to_end_batch": args.e2e_batch,
            "end_to_end_dtype": args.e2e_dtype,
            "synthetic_structures": None if args.quick else args.n,
            "compile": args.compile,
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "nequip": nequip.__version__,
            "lightning": lightning.__version__,
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
