"""The masked multi-fidelity loss, and the per-level error metrics computed with it.

Each frame of a batch carries its head index (nequip's ``dataset`` field) and flags saying which
labels are real (``total_energy_present``, ``forces_present``, ``stress_present``; missing labels
are NaN). For each label kind ``k`` (energy, forces, stress) the loss term is

    term_k = sum over levels L with label k in the batch of  w[L, k] * MSE_k(L)

where ``MSE_k(L)`` is the mean of ``(pred_e - target_e)**2`` over the batch's entries of level
``L`` with label ``k``, and an entry is a frame's energy (divided by its atom count with
``per_atom_energy``), one force component, or one stress component; the loss is the sum of the
terms. Each level is averaged on its own before it is weighted, so a level's weight means the same
whatever its share of the batch (the level mixing): with one level it is the energy MSE plus the
force MSE, and a weight 0 leaves that level's label out. Missing labels contribute nothing: a batch
without forces has no force term (it is neither NaN nor connected to the force graph), and
:func:`needs_derivatives` tells the training module it can skip the force pass altogether.

:class:`MultiFidelityLoss` follows the interface of nequip's ``MetricsManager`` (called with
``(preds, target, prefix)``, ``compute``, ``reset``, ``do_weighted_sum``), so a nequip config can
use it as ``loss``, ``val_metrics`` or ``test_metrics`` of any nequip training module. Epoch
values are accumulated in a torchmetrics state (summed across ranks under DDP) and include, per
level, the MAE and RMSE of the energy per atom, the energy per structure, forces and stress.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from nequip.data import AtomicDataDict
from torchmetrics import Metric

from mfdata.loading.fields import PRESENT_FIELDS

LABELS = ("energy", "forces", "stress")
# Quantities accumulated per level; the loss uses the first or second for energy.
QUANTITIES = ("energy_per_atom", "energy", "forces", "stress")
_DEFAULT_COEFFS = {"energy": 1.0, "forces": 1.0, "stress": 1.0}


def weight_table(
    levels: Sequence[str],
    coeffs: Mapping[str, float] | None = None,
    level_coeffs: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """The resolved weights ``{level: {label: w}}``: ``coeffs`` by label, overridden per level."""
    coeffs = {**_DEFAULT_COEFFS, **dict(coeffs or {})}
    unknown = set(coeffs) - set(LABELS)
    if unknown:
        raise ValueError(f"loss coefficients for unknown labels {sorted(unknown)}; use {LABELS}")
    level_coeffs = dict(level_coeffs or {})
    extra = set(level_coeffs) - set(levels)
    if extra:
        raise ValueError(f"loss weights for levels that are not heads: {sorted(extra)}")
    table = {}
    for level in levels:
        override = dict(level_coeffs.get(level, {}))
        unknown = set(override) - set(LABELS)
        if unknown:
            raise ValueError(f"loss weights of {level}: unknown labels {sorted(unknown)}")
        row = {label: float(override.get(label, coeffs[label])) for label in LABELS}
        if any(w < 0 for w in row.values()):
            raise ValueError(f"loss weights of {level} must not be negative: {row}")
        table[level] = row
    return table


class ErrorSums(Metric):
    """Per (level, quantity): number of entries, sum of absolute and of squared errors."""

    full_state_update = False

    def __init__(self, num_levels: int, **kwargs):
        super().__init__(**kwargs)
        shape = (num_levels, len(QUANTITIES))
        for name in ("count", "abs_sum", "sq_sum"):
            self.add_state(
                name, default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(self, count: torch.Tensor, abs_sum: torch.Tensor, sq_sum: torch.Tensor) -> None:
        self.count += count.detach().to(self.count)
        self.abs_sum += abs_sum.detach().to(self.abs_sum)
        self.sq_sum += sq_sum.detach().to(self.sq_sum)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.count, self.abs_sum, self.sq_sum


def _frame_of_atom(data: AtomicDataDict.Type, num_atoms: int) -> torch.Tensor:
    if AtomicDataDict.BATCH_KEY in data:
        return data[AtomicDataDict.BATCH_KEY].view(-1)
    return torch.zeros(
        num_atoms, dtype=torch.long, device=data[AtomicDataDict.POSITIONS_KEY].device
    )


def _present(target: AtomicDataDict.Type, label: str, values: torch.Tensor) -> torch.Tensor:
    """Per-frame (energy, stress) or per-atom (forces) mask of real labels: flag and finite."""
    finite = torch.isfinite(values)
    while finite.dim() > 1:
        finite = finite.all(dim=-1)
    flag = target.get(PRESENT_FIELDS[label])
    if flag is None:
        return finite
    flag = flag.view(-1).bool()
    if label == "forces":
        flag = flag[_frame_of_atom(target, values.shape[0])]
    return flag & finite


def needs_derivatives(target: AtomicDataDict.Type, weights: torch.Tensor) -> bool:
    """Whether any frame of ``target`` has a force or stress label its level weighs (> 0)."""
    head = target[AtomicDataDict.DATASET_KEY].view(-1)
    for column, label in ((1, "forces"), (2, "stress")):
        key = PRESENT_FIELDS[label]
        if key not in target:
            continue
        used = target[key].view(-1).bool() & (weights[head, column] > 0)
        if bool(used.any()):
            return True
    return False


class MultiFidelityLoss(torch.nn.Module):
    """Masked loss over heads and labels, with nequip ``MetricsManager``'s calling convention.

    Args:
        levels: level ids in head order (the ``dataset`` index of a frame indexes it)
        coeffs: weight per label kind (``energy``, ``forces``, ``stress``; default 1 each)
        level_coeffs: per-level overrides, ``{level: {label: weight}}``
        per_atom_energy: energy errors divided by the frame's atom count (in the loss)
        type_names: accepted (and ignored) for nequip's training modules, which pass it
    """

    do_weighted_sum = True

    def __init__(
        self,
        levels: Sequence[str],
        coeffs: Mapping[str, float] | None = None,
        level_coeffs: Mapping[str, Mapping[str, float]] | None = None,
        per_atom_energy: bool = True,
        type_names: Sequence[str] | None = None,
    ):
        super().__init__()
        self.levels = list(levels)
        self.table = weight_table(self.levels, coeffs, level_coeffs)
        self.per_atom_energy = bool(per_atom_energy)
        weights = torch.tensor(
            [[self.table[level][label] for label in LABELS] for level in self.levels],
            dtype=torch.float64,
        )
        self.register_buffer("weights", weights, persistent=False)
        self.sums = ErrorSums(len(self.levels))

    # --- MetricsManager protocol -------------------------------------------------------------
    def values(self):
        return [self.sums]

    def reset(self) -> None:
        self.sums.reset()

    def needs_derivatives(self, target: AtomicDataDict.Type) -> bool:
        return needs_derivatives(target, self.weights)

    def forward(
        self,
        preds: AtomicDataDict.Type,
        target: AtomicDataDict.Type,
        prefix: str = "",
        suffix: str = "",
    ) -> dict[str, torch.Tensor]:
        """Accumulate this batch's errors and return its loss terms and ``weighted_sum``."""
        count, abs_sum, sq_sum, weighted = self._batch(preds, target)
        self.sums.update(count, abs_sum, sq_sum)
        energy = preds[AtomicDataDict.TOTAL_ENERGY_KEY]
        total = energy.sum() * 0.0  # stays connected to the graph: backward works, grads are 0
        out = {}
        for label, term in weighted.items():
            out[f"{prefix}{label}{suffix}"] = term
            total = total + term
        out[f"{prefix}weighted_sum{suffix}"] = total
        return out

    def compute(self, prefix: str = "", suffix: str = "") -> dict[str, torch.Tensor]:
        """Epoch values from the accumulated sums: the loss, its terms, per-level MAE/RMSE."""
        count, abs_sum, sq_sum = self.sums.compute()
        weights = self.weights.to(count.device)
        out = {}
        total = torch.zeros((), dtype=torch.float64, device=count.device)
        energy_q = 0 if self.per_atom_energy else 1
        for column, (label, q) in enumerate(zip(LABELS, (energy_q, 2, 3), strict=True)):
            used = (weights[:, column] > 0) & (count[:, q] > 0)
            if bool(used.any()):
                mse = sq_sum[used, q] / count[used, q]
                term = (weights[used, column] * mse).sum()
                out[f"{prefix}{label}{suffix}"] = term
                total = total + term
        out[f"{prefix}weighted_sum{suffix}"] = total
        for h, level in enumerate(self.levels):
            for q, quantity in enumerate(QUANTITIES):
                n = count[h, q]
                if n > 0:
                    out[f"{prefix}{level}/{quantity}_mae{suffix}"] = abs_sum[h, q] / n
                    out[f"{prefix}{level}/{quantity}_rmse{suffix}"] = torch.sqrt(sq_sum[h, q] / n)
        return out

    # --- the masked errors -------------------------------------------------------------------
    def _batch(self, preds: AtomicDataDict.Type, target: AtomicDataDict.Type):
        """Per (level, quantity) count/|e|/e² sums, and per label the weighted loss num/den."""
        num_levels = len(self.levels)
        head = target[AtomicDataDict.DATASET_KEY].view(-1)
        device = head.device
        weights = self.weights.to(device)
        shape = (num_levels, len(QUANTITIES))
        count = torch.zeros(shape, dtype=torch.float64, device=device)
        abs_sum = torch.zeros(shape, dtype=torch.float64, device=device)
        sq_sum = torch.zeros(shape, dtype=torch.float64, device=device)
        weighted: dict[str, torch.Tensor] = {}
        n_atoms = target[AtomicDataDict.NUM_NODES_KEY].view(-1)

        # == energy ==
        key = AtomicDataDict.TOTAL_ENERGY_KEY
        if key in target and key in preds:
            true = target[key].view(-1)
            mask = _present(target, "energy", true)
            pred = preds[key].view(-1)
            err = torch.where(mask, pred - torch.where(mask, true, 0.0).to(pred.dtype), 0.0)
            per_atom = err / n_atoms.to(err.dtype)
            for q, e in ((0, per_atom), (1, err)):
                self._add(count, abs_sum, sq_sum, q, head, mask, e.unsqueeze(-1))
            loss_err = per_atom if self.per_atom_energy else err
            self._weighted(weighted, "energy", 0, weights, head, mask, loss_err.unsqueeze(-1))

        # == forces ==
        key = AtomicDataDict.FORCE_KEY
        if key in target and key in preds:
            true = target[key]
            mask = _present(target, "forces", true)
            atom_head = head[_frame_of_atom(target, true.shape[0])]
            pred = preds[key]
            err = torch.where(
                mask.unsqueeze(-1), pred - torch.where(mask.unsqueeze(-1), true, 0.0), 0.0
            )
            self._add(count, abs_sum, sq_sum, 2, atom_head, mask, err)
            self._weighted(weighted, "forces", 1, weights, atom_head, mask, err)

        # == stress ==
        key = AtomicDataDict.STRESS_KEY
        if key in target and key in preds:
            true = target[key].reshape(-1, 9)
            mask = _present(target, "stress", true)
            pred = preds[key].reshape(-1, 9)
            err = torch.where(
                mask.unsqueeze(-1), pred - torch.where(mask.unsqueeze(-1), true, 0.0), 0.0
            )
            self._add(count, abs_sum, sq_sum, 3, head, mask, err)
            self._weighted(weighted, "stress", 2, weights, head, mask, err)
        return count, abs_sum, sq_sum, weighted

    @staticmethod
    def _add(count, abs_sum, sq_sum, q, owner, mask, err) -> None:
        m = mask.to(torch.float64) * err.shape[-1]
        e = err.detach().to(torch.float64)
        count[:, q].index_add_(0, owner, m)
        abs_sum[:, q].index_add_(0, owner, e.abs().sum(dim=-1))
        sq_sum[:, q].index_add_(0, owner, e.square().sum(dim=-1))

    @staticmethod
    def _weighted(weighted, label, column, weights, owner, mask, err) -> None:
        """``weighted[label]``: the sum over levels of weight x that level's mean squared error."""
        w = weights[owner, column]
        used = mask & (w > 0)
        if not bool(used.any()):
            return
        num_levels = weights.shape[0]
        per_entry = (err.square() * used.unsqueeze(-1)).sum(dim=-1)
        sums = torch.zeros(num_levels, dtype=err.dtype, device=err.device)
        sums = sums.index_add(0, owner, per_entry)
        counts = torch.zeros(num_levels, dtype=torch.float64, device=err.device)
        counts.index_add_(0, owner, used.to(torch.float64) * err.shape[-1])
        present = counts > 0
        level_w = weights[:, column].to(err.dtype)
        weighted[label] = (level_w[present] * sums[present] / counts[present].to(err.dtype)).sum()
