"""``mftrain eval``: score a checkpoint on a store, per head, on the structures with each label.

For every head (level) with samples in the store: ``n`` samples; energy MAE and RMSE per atom
(eV/atom) and per structure (eV) over the ``n_energy`` structures with an energy; force MAE and
RMSE (eV/Å, over Cartesian components) over the ``n_forces`` structures with forces
(``n_force_components`` components); and a parity plot (PNG) of energies per atom and force
components. Each sample is predicted by the head of its level: for a delta head, the composed
prediction (base + Δ), for a fidelity-embedding model the shared readout told that level.

Checkpoints are pickle-based nequip/Lightning files: load only trusted ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mfdata.progress import Echo
from mfdata.registry import open_store
from mfdata.store.manifest import StoreError
from mftrain.checkpoint import read_checkpoint


@dataclass
class EvalResult:
    store: str
    split: str | None
    levels: list[str]
    metrics: dict[str, dict]
    parity: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)


def load_model(path: str | Path):
    """The checkpoint's model (EMA weights where trained with EMA), in eval mode."""
    from nequip.model import ModelFromCheckpoint
    from nequip.utils.global_state import set_global_state

    set_global_state()
    model = ModelFromCheckpoint(str(path))
    if hasattr(model, "keys"):  # nequip's ModuleDict of models
        model = model["sole_model"]
    return model.eval()


def predict(model, dataset, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Targets and predictions of every sample: per frame and per atom arrays."""
    import torch
    from nequip.data import AtomicDataDict

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=AtomicDataDict.batched_from_list
    )
    frames: dict[str, list] = {k: [] for k in ("head", "n_atoms", "e_true", "e_pred", "e_ok")}
    atoms: dict[str, list] = {k: [] for k in ("head", "type", "f_true", "f_pred", "f_ok")}
    for batch in loader:
        out = model(batch)
        head = batch[AtomicDataDict.DATASET_KEY].view(-1)
        n = batch[AtomicDataDict.NUM_NODES_KEY].view(-1)
        e_true = batch[AtomicDataDict.TOTAL_ENERGY_KEY].view(-1)
        frames["head"].append(head.numpy())
        frames["n_atoms"].append(n.numpy())
        frames["e_true"].append(e_true.double().numpy())
        frames["e_pred"].append(
            out[AtomicDataDict.TOTAL_ENERGY_KEY].detach().view(-1).double().numpy()
        )
        flag = batch.get("total_energy_present", torch.ones_like(head, dtype=torch.bool))
        frames["e_ok"].append((flag.view(-1).bool() & torch.isfinite(e_true)).numpy())
        frame_of_atom = batch[AtomicDataDict.BATCH_KEY].view(-1)
        f_true = batch[AtomicDataDict.FORCE_KEY]
        f_flag = batch.get("forces_present", torch.ones_like(head, dtype=torch.bool)).view(-1)
        atoms["head"].append(head[frame_of_atom].numpy())
        atoms["type"].append(batch[AtomicDataDict.ATOM_TYPE_KEY].view(-1).numpy())
        atoms["f_true"].append(f_true.double().numpy())
        atoms["f_pred"].append(out[AtomicDataDict.FORCE_KEY].detach().double().numpy())
        f_ok = f_flag.bool()[frame_of_atom] & torch.isfinite(f_true).all(dim=-1)
        atoms["f_ok"].append(f_ok.numpy())
    result = {f"frame_{k}": np.concatenate(v) for k, v in frames.items()}
    result.update({f"atom_{k}": np.concatenate(v) for k, v in atoms.items()})
    return result


def level_metrics(p: dict[str, np.ndarray], h: int) -> dict | None:
    """The metrics of head ``h`` from :func:`predict`'s arrays; None without samples."""
    frames = p["frame_head"] == h
    n = int(frames.sum())
    if n == 0:
        return None
    out: dict = {"n": n}
    e = frames & p["frame_e_ok"]
    out["n_energy"] = int(e.sum())
    if e.any():
        err = p["frame_e_pred"][e] - p["frame_e_true"][e]
        per_atom = err / p["frame_n_atoms"][e]
        out["energy_mae_per_atom"] = float(np.mean(np.abs(per_atom)))
        out["energy_rmse_per_atom"] = float(np.sqrt(np.mean(per_atom**2)))
        out["energy_mean_error_per_atom"] = float(np.mean(per_atom))
        out["energy_mae_per_structure"] = float(np.mean(np.abs(err)))
        out["energy_rmse_per_structure"] = float(np.sqrt(np.mean(err**2)))
    f = (p["atom_head"] == h) & p["atom_f_ok"]
    if f.any():
        err = (p["atom_f_pred"][f] - p["atom_f_true"][f]).reshape(-1)
        frame_has = np.zeros(len(frames), dtype=bool)
        frame_has[np.repeat(np.arange(len(frames)), p["frame_n_atoms"])[f]] = True
        out["n_forces"] = int(frame_has.sum())
        out["n_force_components"] = int(err.size)
        out["forces_mae"] = float(np.mean(np.abs(err)))
        out["forces_rmse"] = float(np.sqrt(np.mean(err**2)))
        out["forces_mean_error"] = float(np.mean(err))
    return out


def _reference_per_frame(
    p: dict[str, np.ndarray], shifts: dict[str, float], type_names: list[str]
) -> np.ndarray:
    """Each frame's sum of its atoms' reference energies (eV): what the parity plot removes, so
    that its axes show what the model learns (a few eV/atom), not -468 eV/atom."""
    per_type = np.array([shifts.get(name, 0.0) for name in type_names])
    frame_of_atom = np.repeat(np.arange(len(p["frame_n_atoms"])), p["frame_n_atoms"])
    return np.bincount(
        frame_of_atom, weights=per_type[p["atom_type"]], minlength=len(p["frame_n_atoms"])
    )


def _ensure_packed(store, echo: Echo) -> None:
    if store.manifest.lmdb is None:
        from mfdata.store.lmdb_store import pack

        echo(f"{store.path}: not packed for the loader; packing it (mfdata pack)")
        pack(store.path)


def evaluate(
    ckpt: str | Path,
    store: str,
    split: str | None = None,
    batch_size: int = 32,
    echo: Echo = print,
) -> EvalResult:
    from mfdata.loading.lmdb_dataset import FidelityDataset
    from mfdata.loading.samples import frame_transforms

    checkpoint = read_checkpoint(ckpt)
    opened = open_store(store)
    _ensure_packed(opened, echo)
    levels, type_names = checkpoint.levels, checkpoint.type_names
    shared = [level for level in levels if level in opened.levels]
    if not shared:
        raise StoreError(
            f"{opened.path}: none of the model's levels ({', '.join(levels)}) is in the store "
            f"(it has {', '.join(opened.levels)})"
        )
    dataset = FidelityDataset(
        [str(opened.path)],
        levels,
        type_names=type_names,
        split=split,
        labels=("energy", "forces"),
        dtype=checkpoint.model_dtype,
        transforms=frame_transforms(checkpoint.r_max, type_names),
    )
    model = load_model(ckpt)
    p = predict(model, dataset, batch_size)
    metrics, parity = {}, {}
    references = checkpoint.provenance.get("reference_energies") or {}
    for h, level in enumerate(levels):
        found = level_metrics(p, h)
        if found is None:
            continue
        metrics[level] = found
        e = (p["frame_head"] == h) & p["frame_e_ok"]
        f = (p["atom_head"] == h) & p["atom_f_ok"]
        n_atoms = p["frame_n_atoms"][e]
        reference = _reference_per_frame(p, references.get(level, {}), type_names)[e]
        parity[level] = {
            "energy_per_atom": (
                (p["frame_e_true"][e] - reference) / n_atoms,
                (p["frame_e_pred"][e] - reference) / n_atoms,
            ),
            "forces": (p["atom_f_true"][f].reshape(-1), p["atom_f_pred"][f].reshape(-1)),
        }
    return EvalResult(str(opened.path), split, levels, metrics, parity)


# What each parity panel's title states, and how.
STATISTICS = ("mae", "rmse", "mean_error")
NAMES = ("MAE", "RMSE", "bias")


def plot_parity(result: EvalResult, directory: str | Path) -> list[Path]:
    """One PNG per head: predicted against reference energy per atom, less the head's reference
    energies (and force components), with MAE, RMSE and bias (mean error) in each title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for level, panels in result.parity.items():
        shown = [(k, v) for k, v in panels.items() if len(v[0])]
        if not shown:
            continue
        fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 4.2), squeeze=False)
        m = result.metrics[level]
        for ax, (kind, (true, pred)) in zip(axes[0], shown, strict=True):
            lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1)
            ax.scatter(true, pred, s=6, alpha=0.6)
            if kind == "energy_per_atom":
                what, unit, key = "(E - Σ reference energies) / atom", "eV/atom", "energy_"
                errors = [m.get(f"energy_{s}_per_atom", float("nan")) for s in STATISTICS]
                title = "energy per atom"
            else:
                what, unit, key = "force component", "eV/Å", "forces_"
                errors = [m[f"forces_{s}"] for s in STATISTICS]
                title = "force components"
            shown_unit = "meV/atom" if key == "energy_" else "meV/Å"
            numbers = ", ".join(
                f"{name} {value * 1000:.2f}" for name, value in zip(NAMES, errors, strict=True)
            )
            ax.set_title(f"{title}\n{numbers} {shown_unit}", fontsize=9)
            ax.set_xlabel(f"reference {what} ({unit})")
            ax.set_ylabel(f"predicted ({unit})")
            ax.set_aspect("equal", adjustable="datalim")
        fig.suptitle(
            f"{level}: {Path(result.store).name}" + (f" {result.split}" if result.split else "")
        )
        fig.tight_layout()
        path = directory / f"parity_{level}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def format_table(metrics: dict[str, dict]) -> str:
    """Per-head errors; energies per atom and per structure in columns that say which."""
    lines = [
        f"{'level':24s} {'n':>6s} {'E MAE':>10s} {'E RMSE':>10s} {'E MAE':>11s} "
        f"{'F MAE':>9s} {'F RMSE':>9s}",
        f"{'':24s} {'':>6s} {'meV/atom':>10s} {'meV/atom':>10s} {'meV/struct':>11s} "
        f"{'meV/Å':>9s} {'meV/Å':>9s}",
    ]

    def show(value) -> str:
        return "-" if value is None else f"{value * 1000:.2f}"

    for level, m in metrics.items():
        lines.append(
            f"{level:24s} {m['n']:6d} {show(m.get('energy_mae_per_atom')):>10s} "
            f"{show(m.get('energy_rmse_per_atom')):>10s} "
            f"{show(m.get('energy_mae_per_structure')):>11s} {show(m.get('forces_mae')):>9s} "
            f"{show(m.get('forces_rmse')):>9s}"
        )
    return "\n".join(lines)
