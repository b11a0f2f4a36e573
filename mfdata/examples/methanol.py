"""The bundled methanol store's ``default`` split and licence (``python -m
mfdata.examples.methanol STORE``, the last step of ``build_methanol.sh``).

Held-out structures must carry the high levels, or nothing can be scored there: the test and
validation parts are drawn from the structures labelled at the highest levels, in equal numbers
from each tier (CCSD(T) and ωB97X; the ωB97X tier, structures with ωB97X but no CCSD(T)), and
no held-out geometry is trained on at any level. The training part's subset order lists the
CCSD(T) tier first, then the ωB97X tier, then the GFN2-xTB-only structures, so that a prefix of
N <= 70 structures has all three levels and one of N <= 140 has ωB97X energies and forces.
"""

from __future__ import annotations

import sys

import numpy as np

from mfdata.registry import open_store
from mfdata.schema import SplitInfo
from mfdata.split import save_split
from mfdata.store.manifest import write_manifest
from mfdata.store.store import Store

TIERS = ("ccsdt-ccpvdz-pyscf", "wb97x-631gd-pyscf")  # highest first
HELD_OUT = {"test": 20, "val": 10}  # structures per tier


def tier_split(store: Store, name: str = "default", seed: int = 0) -> SplitInfo:
    """Save a train/val/test split whose held-out parts come from every high-level tier."""
    structures, _ = store.read()
    rng = np.random.default_rng(seed)
    taken = np.zeros(structures.n_structures, dtype=bool)
    tiers = []
    for level in TIERS:
        members = np.flatnonzero(structures.labels[(level, "energy")].present & ~taken)
        taken[members] = True
        tiers.append(rng.permutation(members))
    tiers.append(rng.permutation(np.flatnonzero(~taken)))
    part = np.zeros(structures.n_structures, dtype=np.int8)
    n_held = sum(HELD_OUT.values())
    for tier in tiers[:-1]:
        if len(tier) < n_held:
            raise ValueError(f"{store.path}: a tier has {len(tier)} structures, need {n_held}")
        part[tier[: HELD_OUT["test"]]] = 2
        part[tier[HELD_OUT["test"] : n_held]] = 1
    subset_order = np.concatenate([tier[n_held:] for tier in tiers[:-1]] + [tiers[-1]])
    counts = np.bincount(part, minlength=3)
    info = SplitInfo(
        name=name,
        by="structure",
        fractions=(counts / counts.sum()).tolist(),
        parts=["train", "val", "test"],
        sizes={"train": int(counts[0]), "val": int(counts[1]), "test": int(counts[2])},
        seed=seed,
    )
    save_split(store, info, part, subset_order)
    return info


def describe(store: Store) -> None:
    """Licence and description in the manifest (not checksummed: the arrays stay as merged)."""
    store.manifest = store.manifest.model_copy(
        update={
            "licence": "MIT (computed for mfkit)",
            "source": "methanol (ase.build CH3OH) from GFN2-xTB MD at 500 K, labelled with "
            "mfdata label; see mfdata/examples/README.md",
        }
    )
    write_manifest(store.path, store.manifest)


if __name__ == "__main__":
    target = open_store(sys.argv[1])
    describe(target)
    if "default" in target.manifest.splits:
        print(f"{target.path}: split default exists")
    else:
        print(tier_split(target).model_dump_json())
