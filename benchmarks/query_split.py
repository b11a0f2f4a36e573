"""Query and split speed over a synthetic per-structure index the size of ANI-1x (5 million).

Run: ``python benchmarks/query_split.py [--n 5000000] [--quick]``. The index is synthetic and in
memory (no peers: no other tool has this index); the figures are the time of one query or one
split over all structures, and the index's memory. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mfdata.index import StructureIndex, element_masks
from mfdata.query import query_mask
from mfdata.schema import QuerySpec
from mfdata.split import assign_parts


def synthetic_index(n: int, seed: int = 0) -> StructureIndex:
    """ANI-like: 3-30 atoms of H, C, N, O; two levels with energy+forces, a third on 10 %."""
    rng = np.random.default_rng(seed)
    n_atoms = rng.integers(3, 31, n).astype(np.int32)
    numbers = rng.choice(
        np.array([1, 6, 7, 8], dtype=np.uint8), int(n_atoms.sum()), p=[0.5, 0.3, 0.1, 0.1]
    )
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    columns = [
        ("ccsdt-star-cbs", "energy"),
        ("wb97x-631gd", "energy"),
        ("wb97x-631gd", "forces"),
        ("wb97x-def2tzvpp", "energy"),
        ("wb97x-def2tzvpp", "forces"),
    ]
    labels = np.full(n, 0b11110, dtype=np.uint64)
    labels[rng.random(n) < 0.1] |= np.uint64(1)
    return StructureIndex(
        n_atoms=n_atoms,
        elements=element_masks(numbers, starts),
        labels=labels,
        label_columns=columns,
        charge=np.zeros(n, np.int16),
        multiplicity=np.zeros(n, np.int16),
        group=np.sort(rng.integers(0, n // 1500 + 1, n)).astype(np.int32),
        hash=rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64),
        source=np.zeros(n, np.int16),
    )


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5_000_000)
    parser.add_argument("--quick", action="store_true", help="500,000 structures")
    args = parser.parse_args()
    n = 500_000 if args.quick else args.n
    index = synthetic_index(n)
    index_bytes = sum(
        a.nbytes
        for a in (
            index.n_atoms,
            index.elements,
            index.labels,
            index.charge,
            index.multiplicity,
            index.group,
            index.hash,
            index.source,
        )
    )
    spec = QuerySpec(
        has=[("ccsdt-star-cbs", "energy"), ("wb97x-631gd", "forces")],
        elements=["H", "C", "N", "O"],
        max_atoms=20,
    )
    selected = int(query_mask(index, spec).sum())
    results = {
        "n_structures": n,
        "index_bytes_per_structure": index_bytes / n,
        "query_seconds": best_of(lambda: query_mask(index, spec)),
        "query_selected": selected,
        "split_by_structure_seconds": best_of(lambda: assign_parts(None, [0.8, 0.1, 0.1], 0, n)),
        "split_by_group_seconds": best_of(
            lambda: assign_parts(index.group.astype(np.int64), [0.8, 0.1, 0.1], 0, n)
        ),
    }
    for key, value in results.items():
        print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
