"""Lightning training modules: nequip's, plus the masked loss's force-pass skip and provenance.

``MultiFidelityLightningModule`` (and ``EMAMultiFidelityLightningModule``) are nequip
``NequIPLightningModule`` subclasses, so ``nequip-train`` runs them with its checkpointing,
restarts, callbacks, learning-rate schedules and EMA. On top they

- skip the autograd force/stress pass for a training batch whose frames have no force or stress
  label that the loss weighs (the loss of such a batch has no force term at all);
- keep the run's provenance (``provenance``: stores and checksums, split, selection, head order,
  type names, reference energies, mixing ratios, loss weights, versions) as a hyperparameter and
  write it under the checkpoint's ``"mfkit"`` key.

The ``loss`` should be a :class:`mftrain.loss.MultiFidelityLoss` (any nequip ``MetricsManager``
works too, without the force-pass skip).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from nequip.data import AtomicDataDict
from nequip.train import EMALightningModule, NequIPLightningModule

from mftrain.nn import set_derivatives
from mftrain.run_log import VAL_PREFIX, validation_line

CHECKPOINT_KEY = "mfkit"

# FidelityDataModule restores its samplers' position from the checkpoint itself, so resuming
# mid-epoch is exact; Lightning cannot see that (its DataLoader has no state_dict) and warns.
warnings.filterwarnings(
    "ignore", message="You're resuming from a checkpoint that ended before the epoch ended"
)


class _MultiFidelityMixin:
    def __init__(self, *args, provenance: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.provenance = dict(provenance or {})

    def training_step(self, batch: AtomicDataDict.Type, batch_idx: int, dataloader_idx: int = 0):
        """nequip's training step (its DDP loss scaling included), without the force pass for a
        batch whose loss has no force or stress term."""
        needs = getattr(self.loss, "needs_derivatives", None)
        if needs is None or needs(batch):
            return super().training_step(batch, batch_idx, dataloader_idx)
        previous = set_derivatives(self.model, False)
        try:
            return super().training_step(batch, batch_idx, dataloader_idx)
        finally:
            set_derivatives(self.model, previous)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        # Lightning calls set_epoch only on `dataloader.sampler` and `batch_sampler.sampler`, not
        # on a batch sampler itself: without this every epoch would replay epoch 0's order (and a
        # mixing schedule would never advance). Not called when resuming mid-epoch, where the
        # sampler's saved state (epoch and position) holds.
        for loader in _loaders(self.trainer.train_dataloader):
            batch_sampler = getattr(loader, "batch_sampler", None)
            if callable(getattr(batch_sampler, "set_epoch", None)):
                batch_sampler.set_epoch(self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY] = self.provenance


def _loaders(obj) -> list:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _loaders(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _loaders(v)]
    return [] if obj is None else [obj]


class MultiFidelityLightningModule(_MultiFidelityMixin, NequIPLightningModule):
    """nequip's training module with the masked multi-fidelity loss and mfkit provenance."""


class EMAMultiFidelityLightningModule(_MultiFidelityMixin, EMALightningModule):
    """The same with an exponential moving average of the weights (nequip's EMA module)."""


class FinalCheckpoint(Callback):
    """Write ``last.ckpt`` when training ends (the periodic one may be some steps behind), and
    ``best.ckpt`` from it when no validation ran to make one."""

    def __init__(self, dirpath: str):
        super().__init__()
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer, pl_module) -> None:
        last = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(last)
        best = self.dirpath / "best.ckpt"
        if trainer.is_global_zero and not best.exists():
            shutil.copyfile(last, best)


class ValidateAtLastStep(Callback):
    """Validate after the last optimiser step of a run that ``max_steps`` ends mid-epoch.

    Lightning validates at epoch ends (or every ``val_check_interval``): a run shorter than an
    epoch would never validate, leaving ``best.ckpt`` unchosen. Asking the trainer to stop at
    the last step makes Lightning validate before it stops (as it does for early stopping and
    ``max_time``); a validation already due at that step runs once.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class ValidationReport(Callback):
    """One printed line per validation (step, loss, each level's energy MAE per atom and force
    MAE), and the latest validation's metrics kept in the checkpoint (``mftrain show``)."""

    def __init__(self, levels: list[str]):
        super().__init__()
        self.levels = list(levels)
        self.latest: dict[str, Any] = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith(VAL_PREFIX)
        }
        self.latest = {"step": int(trainer.global_step), "metrics": metrics}
        if trainer.is_global_zero:
            print(validation_line(self.latest, self.levels), flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {"latest": self.latest}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.latest = dict(state_dict.get("latest") or {})


class RankReport(Callback):
    """When training ends each rank writes ``DIRPATH/rank{k}.json``: sha256 digests of its state
    dict and of its hyperparameters (the config its module was built from), and of the sample
    ids its training sampler deals it in epoch 0. Under DDP the first two agree on every rank
    and the third differs; a state digest that differs means the ranks diverged."""

    def __init__(self, dirpath: str):
        super().__init__()
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer, pl_module) -> None:
        hparams = json.dumps(dict(pl_module.hparams), sort_keys=True, default=str)
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "state_dict_sha256": state_digest(pl_module.state_dict()),
            "hyper_parameters_sha256": hashlib.sha256(hparams.encode()).hexdigest(),
            "epoch0": _epoch0_samples(trainer),
        }
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict: every tensor's name, dtype, shape and bytes, by sorted name."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def batches_digest(batches: list[list[int]]) -> dict[str, Any]:
    """Batch and sample counts and a sha256 over the sample ids of ``batches``, in order."""
    ids = np.asarray([i for batch in batches for i in batch], dtype=np.int64)
    digest = hashlib.sha256(ids.tobytes()).hexdigest()
    return {"batches": len(batches), "samples": len(ids), "sample_ids_sha256": digest}


def _epoch0_samples(trainer) -> dict[str, Any] | None:
    """This rank's epoch-0 training batches, from a copy of its sampler (the loader's own may be
    anywhere in an epoch)."""
    loaders = _loaders(trainer.train_dataloader)
    sampler = getattr(loaders[0], "batch_sampler", None) if loaders else None
    if not callable(getattr(sampler, "load_state_dict", None)):
        return None
    fresh = copy.copy(sampler)
    fresh.load_state_dict({**sampler.state_dict(), "epoch": 0, "position": 0})
    return batches_digest(list(fresh))
