"""``mftrain fit``: from mfkit's training config to a nequip run, then run it with nequip.

The steps, all before any training (so that a bad config or store fails early):

1. open the stores; pack those without LMDB shards, compute missing statistics, and make a
   deterministic group-aware 90/5/5 split where the configured split is missing (saying so);
2. ask the strategy for the heads (one ordering, written into both the data module's and the
   model's config), measure the training data (samples per level, mixing ratios, average number
   of neighbours), and initialise every head from its level's statistics (a delta head from
   those of its level's difference from the base);
3. build the nequip/Hydra config (``FidelityDataModule``, ``MultiHeadNequIPModel``,
   ``MultiFidelityLoss``, the training module with the run's provenance, Lightning's trainer with
   ``best.ckpt``/``last.ckpt`` checkpoints) and build the model once to check it;
4. write ``mftrain.yaml`` (the resolved mfkit config), ``config.yaml`` (the nequip config) and
   ``provenance.json`` into the output directory and run ``nequip-train`` on it, in this process.
   When the directory holds a ``last.ckpt`` of the same run, training resumes from it.

Several processes (``trainer.devices`` x ``trainer.num_nodes``) train with Lightning's DDP; who
starts them, and so who prepares and writes, is :func:`launch_of`'s (docs/distributed.md).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mfdata.errors import MfkitError
from mfdata.files import atomic_write_text
from mfdata.progress import Echo, silent
from mfdata.registry import open_store
from mfdata.store.lmdb_store import pack, pack_is_current
from mfdata.store.manifest import StoreError
from mfdata.store.store import Store
from mftrain.checkpoint import MONITOR, read_checkpoint
from mftrain.config import ConfigError, ModelConfig, TrainConfig, TrainerConfig
from mftrain.heads import HeadInit, delta_initialisation, head_initialisation
from mftrain.loss import weight_table
from mftrain.plan import Plan
from mftrain.provenance import run_provenance
from mftrain.run_log import metrics_files, plot_learning_curve
from mftrain.strategies import plan

DEFAULT_OUT = "mftrain-run"
DEFAULT_FRACTIONS = (0.9, 0.05, 0.05)
NEIGHBOUR_SAMPLES = 256


class TrainingError(MfkitError, RuntimeError):
    """nequip-train, run as a child process, failed (its own output says why)."""


@dataclass
class Prepared:
    """Everything ``fit`` decided before training."""

    config: TrainConfig  # resolved: absolute store paths, head order
    out: Path
    stores: list[Store]
    plan: Plan
    type_names: list[str]
    init: HeadInit
    nequip: dict[str, Any]
    provenance: dict[str, Any]


# --------------------------------------------------------------------------- stores


def ensure_split(store: Store, name: str, seed: int, echo: Echo) -> None:
    """Make the split ``name`` where the store lacks it: group-aware 90/5/5, else by structure."""
    from mfdata.split import make_split

    if name in store.manifest.splits:
        return
    info = None
    for by in ("group", "structure"):
        try:
            info = make_split(store, name, by=by, fractions=list(DEFAULT_FRACTIONS), seed=seed)
            break
        except ValueError as exc:
            if "empty" not in str(exc):
                raise
    if info is None:
        raise ConfigError(
            f"{store.path}: no split named {name!r}, and its {store.manifest.n_structures} "
            "structures are too few for a 90/5/5 split; make one with `mfdata split "
            f"{store.path} --name {name} --fractions ...`"
        )
    sizes = ", ".join(f"{part} {n}" for part, n in info.sizes.items())
    note = "" if info.by == "group" else " (by structure: its groups are too few)"
    echo(
        f"{store.path}: no split named {name!r}; made a deterministic {info.by}-aware 90/5/5 "
        f"split{note} with seed {seed} ({sizes}) and saved it in the store"
    )


def require_prepared(store: Store, config: TrainConfig) -> None:
    """Refuse a store that fit would still pack, describe or split: processes that a launcher
    (torchrun, srun) starts together would all write it at once."""
    path = shlex.quote(str(store.path))
    needed = []
    if store.manifest.lmdb is None:
        needed.append(f"mfdata pack {path}")
    elif not pack_is_current(store.manifest):
        needed.append(f"mfdata pack --force {path}")
    if any(level not in store.manifest.statistics.levels for level in store.levels):
        needed.append(f"mfdata stats {path}")
    if config.data.split not in store.manifest.splits:
        fractions = ",".join(map(str, DEFAULT_FRACTIONS))
        needed.append(
            f"mfdata split {path} --name {config.data.split} --by group "
            f"--fractions {fractions} --seed {config.seed}"
        )
    if needed:
        raise ConfigError(
            f"{store.path}: not ready for training processes that a launcher starts together "
            f"(torchrun, srun), which must not all write it; prepare it before the launch: "
            + "; ".join(needed)
        )


def prepare_stores(config: TrainConfig, echo: Echo, modify: bool = True) -> list[Store]:
    """Open the stores, packing them, computing statistics and making the split where missing
    (with ``modify=False``, refusing a store that lacks any of them)."""
    from mfdata.stats import StatisticsWarning, all_warnings, update_statistics
    from mfdata.store.lock import store_lock

    if not config.data.stores:
        raise ConfigError("no training data: give --data STORE (or data.stores in the config)")
    stores = [open_store(name) for name in config.data.stores]
    paths = [s.path.resolve() for s in stores]
    if len(set(paths)) != len(paths):
        raise ConfigError(f"data.stores names one store twice: {config.data.stores}")
    for store in stores:
        if not modify:
            require_prepared(store, config)
            continue
        # one preparer at a time; the others wait, then find the store prepared
        with store_lock(store.path):
            store = Store(store.path)
            if store.manifest.lmdb is None:
                echo(f"{store.path}: not packed for the loader; packing it (mfdata pack)")
                pack(store.path)
            elif not pack_is_current(store.manifest):
                echo(
                    f"{store.path}: its LMDB pack is outdated (an older layout, or packed from "
                    "another version of the store); re-packing it (mfdata pack --force)"
                )
                pack(store.path, force=True)
            missing = [lvl for lvl in store.levels if lvl not in store.manifest.statistics.levels]
            if missing:
                echo(f"{store.path}: computing per-level statistics for the heads (mfdata stats)")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", StatisticsWarning)
                    stats = update_statistics(store.path)
                for message in all_warnings(stats):
                    echo(f"  warning: {message}")
            ensure_split(Store(store.path), config.data.split, config.seed, echo)
    return [Store(path) for path in paths]


def available_levels(stores: list[Store]) -> list[str]:
    """Every level of the stores, in store order (the default head order)."""
    seen: list[str] = []
    for store in stores:
        seen.extend(level for level in store.levels if level not in seen)
    return seen


# --------------------------------------------------------------------------- data


def _datasets(config: TrainConfig, paths: list[str], levels: list[str], type_names: list[str]):
    from mfdata.loading.lmdb_dataset import FidelityDataset
    from mfdata.loading.samples import frame_transforms

    d = config.data
    common = dict(
        stores=paths,
        levels=levels,
        type_names=type_names,
        selection=d.selection,
        labels=tuple(d.labels),
        dtype=config.trainer.precision,
        transforms=frame_transforms(config.model.r_max, type_names),
    )
    out = {}
    for stage, part, subset in (
        ("train", d.train_part, d.subset),
        ("val", d.val_part, None),
    ):
        try:
            out[stage] = FidelityDataset(split=f"{d.split}:{part}", subset=subset, **common)
        except StoreError as exc:
            raise ConfigError(f"{stage} data ({d.split}:{part}): {exc}") from None
    return out["train"], out["val"]


def average_neighbours(dataset, limit: int = NEIGHBOUR_SAMPLES) -> float:
    """Mean number of neighbours per atom within r_max, over up to ``limit`` training samples."""
    from nequip.data import AtomicDataDict

    n = len(dataset)
    chosen = sorted({int(i) for i in (k * n // min(n, limit) for k in range(min(n, limit)))})
    edges = atoms = 0
    for i in chosen:
        frame = dataset[i]
        edges += int(frame[AtomicDataDict.EDGE_INDEX_KEY].shape[1])
        atoms += int(frame[AtomicDataDict.POSITIONS_KEY].shape[0])
    return max(edges / max(atoms, 1), 1.0)


# --------------------------------------------------------------------------- nequip config


def _scheduler(config: TrainConfig) -> dict | None:
    s = config.lr_scheduler
    if s is None:
        return None
    if s.kind == "plateau":
        scheduler = {
            "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
            "factor": s.factor,
            "patience": s.patience,
            "min_lr": s.min_lr,
        }
        return {"scheduler": scheduler, "monitor": MONITOR, "interval": "epoch", "strict": False}
    if s.kind == "cosine":
        scheduler = {
            "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
            "T_max": config.trainer.max_steps,
            "eta_min": s.min_lr,
        }
        return {"scheduler": scheduler, "interval": "step", "frequency": 1}
    scheduler = {"_target_": "torch.optim.lr_scheduler.ExponentialLR", "gamma": s.gamma}
    return {"scheduler": scheduler, "interval": "epoch", "frequency": 1}


def _trainer(config: TrainConfig, out: Path, levels: list[str]) -> dict:
    t = config.trainer
    accelerator = {"cpu": "cpu", "cuda": "gpu", "auto": "auto"}[t.device]
    callbacks: list[dict] = [
        {
            "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
            "dirpath": str(out),
            "filename": "best",
            "monitor": MONITOR,
            "mode": "min",
            "save_top_k": 1,
            "enable_version_counter": False,
            "auto_insert_metric_name": False,
        },
        {
            "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
            "dirpath": str(out),
            "save_top_k": 0,
            "save_last": True,
            "every_n_train_steps": t.checkpoint_every_n_steps,
            "enable_version_counter": False,
        },
        {"_target_": "mftrain.training_module.FinalCheckpoint", "dirpath": str(out)},
        {"_target_": "mftrain.training_module.ValidateAtLastStep"},
        {"_target_": "mftrain.training_module.ValidationReport", "levels": levels},
        {"_target_": "lightning.pytorch.callbacks.LearningRateMonitor", "logging_interval": "step"},
    ]
    if t.early_stopping is not None:
        callbacks.append(
            {
                "_target_": "lightning.pytorch.callbacks.EarlyStopping",
                "monitor": MONITOR,
                "mode": "min",
                "patience": t.early_stopping.patience,
                "min_delta": t.early_stopping.min_delta,
            }
        )
    processes = t.devices * t.num_nodes
    if processes > 1:
        callbacks.append(
            {"_target_": "mftrain.training_module.RankReport", "dirpath": str(out / "ranks")}
        )
    trainer = {
        "_target_": "lightning.Trainer",
        "max_steps": t.max_steps,
        "max_epochs": t.max_epochs if t.max_epochs is not None else -1,
        "accelerator": accelerator,
        "devices": t.devices,
        "num_nodes": t.num_nodes,
        # DDP (gloo on the CPU, NCCL on GPUs: Lightning's defaults) for more than one process
        "strategy": "ddp" if processes > 1 else "auto",
        # FidelityBatchSampler deals each rank its own batches; Lightning must not replace it
        "use_distributed_sampler": False,
        "log_every_n_steps": t.log_every_n_steps,
        "enable_progress_bar": t.progress_bar,
        "enable_model_summary": False,
        "gradient_clip_val": t.gradient_clip_val,
        "logger": {
            "_target_": "lightning.pytorch.loggers.CSVLogger",
            "save_dir": str(out),
            "name": "logs",
        },
        "callbacks": callbacks,
    }
    if t.val_every_n_steps is not None:
        trainer.update(check_val_every_n_epoch=None, val_check_interval=t.val_every_n_steps)
    if t.max_time_minutes is not None:
        trainer["max_time"] = {"_target_": "datetime.timedelta", "minutes": t.max_time_minutes}
    return trainer


RESUME_ENV = "MFTRAIN_RESUME_CKPT"  # the checkpoint nequip-train resumes from (run_nequip)
_INTERPOLATION = re.compile(r"(\\*)\$\{")


def literal(value: Any) -> Any:
    """``value`` with every string escaped so that OmegaConf reads it as written: nequip's config
    is an OmegaConf file, and a path with ``${...}`` in it must not open another path."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {key: literal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [literal(item) for item in value]
    return value


def backbone_arguments(m: ModelConfig) -> dict[str, Any]:
    """The architecture of ``m`` as nequip model-builder arguments (``NequIPGNNModel`` and
    ``MultiHeadNequIPModel`` both take them)."""
    return {
        "r_max": m.r_max,
        "num_layers": m.num_layers,
        "l_max": m.l_max,
        "parity": m.parity,
        "num_features": m.num_features,
        "radial_mlp_depth": m.radial_mlp_depth,
        "radial_mlp_width": m.radial_mlp_width,
        "num_bessels": m.num_bessels,
        "polynomial_cutoff_p": m.polynomial_cutoff_p,
        "readout_mlp_hidden_layers_depth": m.readout_mlp_hidden_layers_depth,
        "readout_mlp_hidden_layers_width": m.readout_mlp_hidden_layers_width,
    }


def build_nequip_config(
    config: TrainConfig,
    out: Path,
    plan_: Plan,
    type_names: list[str],
    init: HeadInit,
    avg_num_neighbors: float,
    provenance: dict,
) -> dict:
    d, m, t = config.data, config.model, config.trainer
    levels = plan_.levels
    data = {
        "_target_": "mfdata.loading.datamodule.FidelityDataModule",
        "seed": config.seed,
        "stores": list(d.stores),
        "levels": levels,
        "type_names": type_names,
        "r_max": m.r_max,
        "split": d.split,
        "train_part": d.train_part,
        "val_part": d.val_part,
        "test_part": d.test_part,
        "subset": d.subset,
        "selection": d.selection,
        "labels": list(d.labels),
        "dtype": t.precision,
        "mixing": plan_.mixing.model_dump(mode="json", exclude_none=True),
        "epoch_size": d.epoch_size,
        "batch_size": d.batch_size,
        "max_atoms": d.max_atoms,
        "val_batch_size": d.val_batch_size,
        "num_workers": d.num_workers,
    }
    model = {
        "_target_": plan_.model_target,
        "seed": config.seed,
        "model_dtype": t.precision,
        "type_names": type_names,
        "levels": levels,
        **backbone_arguments(m),
        "avg_num_neighbors": avg_num_neighbors,
        "per_level_energy_shifts": init.shifts,
        "per_level_energy_scales": init.scales,
        "per_type_energy_shifts_trainable": m.shifts_trainable,
        "per_type_energy_scales_trainable": m.scales_trainable,
        **({"bases": plan_.bases} if plan_.bases else {}),
        **plan_.model_args,
        **m.extra,
    }
    loss = {
        "_target_": "mftrain.loss.MultiFidelityLoss",
        "levels": levels,
        "coeffs": config.loss.coeffs.model_dump(),
        "level_coeffs": plan_.level_coeffs,
        "per_atom_energy": config.loss.per_atom_energy,
    }
    module = "MultiFidelityLightningModule"
    training_module: dict[str, Any] = {}
    if t.ema is not None:
        module = "EMAMultiFidelityLightningModule"
        training_module["ema_decay"] = t.ema.decay
    optimizer = {
        "_target_": f"torch.optim.{config.optimizer.name}",
        "lr": config.optimizer.lr,
        "weight_decay": config.optimizer.weight_decay,
    }
    if plan_.param_groups is not None:
        optimizer["param_groups"] = plan_.param_groups
    training_module = {
        "_target_": f"mftrain.training_module.{module}",
        **training_module,
        "model": model,
        "loss": loss,
        "val_metrics": loss,
        "test_metrics": loss,
        "optimizer": optimizer,
        "provenance": provenance,
    }
    scheduler = _scheduler(config)
    if scheduler is not None:
        training_module["lr_scheduler"] = scheduler
    return literal(
        {
            "run": ["train"],
            "seed": config.seed,
            "data": data,
            "trainer": _trainer(config, out, levels),
            "training_module": training_module,
            "hydra": {
                "run": {"dir": str(out)},
                "output_subdir": ".hydra",
                "job": {"chdir": False},
            },
        }
    )


def _check_model(model_config: dict) -> None:
    """Build the model once, so that a bad model argument fails before training."""
    from hydra.utils import get_method
    from nequip.utils.global_state import set_global_state

    cfg = dict(model_config)
    builder = get_method(cfg.pop("_target_"))
    set_global_state()
    try:
        builder(**cfg)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise ConfigError(f"model: {exc}") from None


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Launch:
    """This process's place among the training processes. ``launcher`` names what started them
    all (torchrun, SLURM, LSF, MPI); None when this process was started alone (Lightning then
    starts the others, if any, from it)."""

    rank: int = 0
    world_size: int = 1
    launcher: str | None = None

    @property
    def started_together(self) -> bool:
        """Several processes, each running ``fit`` from its start."""
        return self.launcher is not None and self.world_size > 1


def launch_of(trainer: TrainerConfig) -> Launch:
    """This process as Lightning will see it: started with the others by a launcher whose
    environment Lightning detects (its cluster environments, in its order), or alone.

    Checks the process count against ``devices`` × ``num_nodes`` before any work.
    """
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    t = trainer
    expected = t.devices * t.num_nodes
    for name, kind in (
        ("torchrun", TorchElasticEnvironment),
        ("SLURM", SLURMEnvironment),
        ("LSF", LSFEnvironment),
        ("MPI", MPIEnvironment),
    ):
        if not kind.detect():
            continue
        try:
            env = kind()
            if env.world_size() != expected:
                raise ValueError(
                    f"it started {env.world_size()} process(es), but trainer.devices x "
                    f"trainer.num_nodes is {t.devices} x {t.num_nodes}: set devices to the "
                    "processes per node (one per GPU) and num_nodes to the number of nodes"
                )
            env.validate_settings(num_devices=t.devices, num_nodes=t.num_nodes)
        except (RuntimeError, ValueError) as exc:  # Lightning's own checks say what to change
            raise ConfigError(f"{name}: {exc}") from None
        return Launch(env.global_rank(), expected, name)
    if t.num_nodes > 1:
        raise ConfigError(
            f"trainer.num_nodes is {t.num_nodes}: several nodes need a launcher that starts "
            "trainer.devices processes on every node (srun under SLURM, or torchrun)"
        )
    return Launch(0, expected)


# --------------------------------------------------------------------------- prepare and run


def prepare(config: TrainConfig, echo: Echo = print, modify_stores: bool = True) -> Prepared:
    """Everything before training; raises ConfigError (or StoreError) on a bad config or store.

    ``modify_stores=False`` refuses stores that still need packing, statistics or the split
    instead of preparing them (processes started together must not all write them).
    """

    from mfdata.loading.samples import default_type_names

    out = Path(config.out or DEFAULT_OUT).resolve()
    stores = prepare_stores(config, echo, modify_stores)
    plan_ = plan(config, available_levels(stores))
    levels = plan_.levels
    type_names = default_type_names(stores)
    if plan_.type_names is not None:  # those of the model the run starts from
        untyped = [symbol for symbol in type_names if symbol not in plan_.type_names]
        if untyped:
            raise ConfigError(
                f"the stores have {' '.join(untyped)}, for which the model this run starts from "
                f"has no atom type (its types: {' '.join(plan_.type_names)})"
            )
        type_names = list(plan_.type_names)
    paths = [str(s.path.resolve()) for s in stores]
    selection = str(Path(config.data.selection).resolve()) if config.data.selection else None
    resolved = config.model_copy(deep=True)
    resolved.data.stores = paths
    # fine-tuning strategies name their levels in the finetune section
    resolved.data.levels = None if config.finetune is not None else levels
    resolved.data.selection = selection
    resolved.out = str(out)

    train, val = _datasets(resolved, paths, levels, type_names)
    sizes = {level: len(ids) for level, ids in train.pools.items()}
    val_sizes = {level: len(ids) for level, ids in val.pools.items()}
    try:
        ratios = plan_.mixing.weights(sizes, 0)
    except ValueError as exc:
        raise ConfigError(f"data.mixing: {exc}") from None
    untrained = [level for level, n in sizes.items() if n == 0 or ratios[level] == 0]
    if untrained:
        plan_.notes.append(f"heads without training samples: {', '.join(untrained)}")
    avg = config.model.avg_num_neighbors or average_neighbours(train)
    references = head_initialisation(stores, levels, type_names)
    init = delta_initialisation(stores, references, plan_.bases) if plan_.bases else references
    table = weight_table(levels, config.loss.coeffs.model_dump(), plan_.level_coeffs)
    mixing = {
        "config": plan_.mixing.model_dump(mode="json", exclude_none=True),
        "ratios_epoch0": ratios,
        "train_samples": sizes,
        "val_samples": val_sizes,
    }
    provenance = run_provenance(
        resolved, stores, plan_, type_names, references, init, mixing, table, avg
    )
    nequip_config = build_nequip_config(resolved, out, plan_, type_names, init, avg, provenance)
    _check_model(nequip_config["training_module"]["model"])
    return Prepared(resolved, out, stores, plan_, type_names, init, nequip_config, provenance)


def _fingerprint(nequip_config: dict) -> dict:
    """What must match for a rerun to resume a run: the data and the training module."""
    module = dict(nequip_config["training_module"])
    module.pop("provenance", None)
    return {"data": nequip_config["data"], "training_module": module}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [prefix.rstrip(".")]


def resume_point(prepared: Prepared) -> Path | None:
    """The checkpoint to resume from, if the directory holds one of the same run."""
    out = prepared.out
    last = out / "last.ckpt"
    resume = None
    if last.exists():
        previous = out / "config.yaml"
        if not previous.is_file():
            raise ConfigError(f"{out}: holds a last.ckpt but no config.yaml; choose another --out")
        old = yaml.safe_load(previous.read_text(encoding="utf-8"))
        diff = _differences(_fingerprint(old), _fingerprint(prepared.nequip))
        if diff:
            shown = ", ".join(diff[:4]) + (" ..." if len(diff) > 4 else "")
            raise ConfigError(
                f"{out}: holds a run with another configuration (differs in {shown}); choose "
                f"another --out, or remove {out} to start over"
            )
        resume = last
    return resume


def write_run(prepared: Prepared) -> Path | None:
    """Write the configs; returns the checkpoint to resume from, if the directory holds one."""
    resume = resume_point(prepared)
    out = prepared.out
    out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_dump(prepared.config.model_dump(mode="json"), sort_keys=False)
    atomic_write_text(out / "mftrain.yaml", config)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(prepared.nequip, sort_keys=False))
    atomic_write_text(out / "provenance.json", json.dumps(prepared.provenance, indent=2) + "\n")
    return resume


def run_nequip(config_dir: Path, resume: Path | None, launch: Launch | None = None) -> None:
    """``nequip-train -cp CONFIG_DIR -cn config [++ckpt_path=...]``, in this process.

    Except where Lightning starts the DDP processes: its launcher starts them by rerunning this
    process's command line, which must then be nequip-train's own, so nequip-train runs as a
    child (``python -m nequip.scripts.train``; its Lightning starts the other ranks from it). A
    rank above 0 writes no Hydra output files (rank 0's ``.hydra/``) and logs to its own file.
    """
    launch = launch or Launch()
    args = ["-cp", str(config_dir.resolve()), "-cn", "config"]
    if resume is not None:  # through the environment: a path is never parsed as an override
        os.environ[RESUME_ENV] = str(resume.resolve())
        args.append(f"++ckpt_path=${{oc.env:{RESUME_ENV}}}")
    if launch.rank:
        args += ["hydra.output_subdir=null", f"hydra.job.name=train_rank{launch.rank}"]
    if launch.world_size > 1 and launch.launcher is None:
        command = [sys.executable, "-m", "nequip.scripts.train", *args]
        status = subprocess.run(command).returncode
        if status:
            raise TrainingError(f"training failed (exit status {status}): {shlex.join(command)}")
        return

    from nequip.scripts.train import main as nequip_train
    from omegaconf import OmegaConf

    if OmegaConf.has_resolver("training_data_stats"):  # registered by an earlier run
        OmegaConf.clear_resolver("training_data_stats")
    argv = ["nequip-train", *args]
    saved = sys.argv
    sys.argv = argv
    try:
        nequip_train()
    finally:
        sys.argv = saved


def fit_run(config: TrainConfig, echo: Echo = print) -> Path:
    """One run: prepare, write and run; returns the output directory.

    With several processes (``trainer.devices``, ``trainer.num_nodes``) only rank 0 prints and
    writes. Lightning starts them after rank 0 has prepared everything; processes that torchrun
    or srun start together each prepare the same config, from stores prepared before the launch.
    """
    launch = launch_of(config.trainer)
    if launch.rank:
        echo = silent
    prepared = prepare(config, echo, modify_stores=not launch.started_together)
    p = prepared.plan
    mixing = prepared.provenance["mixing"]
    echo(f"strategy {p.strategy}: {len(p.levels)} head(s) in order: {', '.join(p.levels)}")
    echo(
        "training samples per level: "
        + ", ".join(
            f"{lvl} {n} (ratio {mixing['ratios_epoch0'][lvl]:.3g})"
            for lvl, n in mixing["train_samples"].items()
        )
    )
    for note in prepared.init.notes + p.notes:
        echo(f"note: {note}")
    out = prepared.out
    if launch.rank:
        resume = resume_point(prepared)
        # the same config, made here: rank 0 may still be writing OUT/config.yaml
        with tempfile.TemporaryDirectory(prefix="mftrain-") as private:
            config_text = yaml.safe_dump(prepared.nequip, sort_keys=False)
            atomic_write_text(Path(private, "config.yaml"), config_text)
            run_nequip(Path(private), resume, launch)
        return out
    resume = write_run(prepared)
    if resume is not None:
        done = read_checkpoint(resume).global_step
        echo(f"resuming from {resume} (step {done} of {prepared.config.trainer.max_steps})")
    if launch.world_size > 1:
        starter = f"started by {launch.launcher}" if launch.launcher else "started by Lightning"
        echo(f"DDP over {launch.world_size} processes ({starter}); batches are per process")
    echo(f"configs written to {out} (mftrain.yaml, config.yaml, provenance.json); training ...")
    run_nequip(out, resume, launch)
    last = read_checkpoint(out / "last.ckpt")
    best = last.best_val_loss
    shown = "n/a" if best is None or math.isnan(best) else f"{best:.6g}"
    echo(
        f"done: step {last.global_step}, best validation loss {shown}; "
        f"{out / 'best.ckpt'} and {out / 'last.ckpt'}"
    )
    curve = plot_learning_curve(out, prepared.plan.levels)
    if curve is not None:
        sources = ", ".join(str(p.relative_to(out)) for p in metrics_files(out))
        echo(f"learning curve: {curve} (from {sources})")
    return out
