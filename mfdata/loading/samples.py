"""The sample table and frame finish that the LMDB and Zarr readers share.

Guarantees: a sample is one (store, structure, level) label set with at least one of the wanted
labels; every frame has the same keys: ``total_energy``, ``forces`` (and ``stress``,
``total_dipole``, ``charges`` where any store has that label at a wanted level) NaN-filled where
the level lacks them, per-frame flags ``total_energy_present``, ``forces_present``, ... saying
which labels are real,
the head index in nequip's ``dataset`` field, and ``atom_types`` from the chemical species. The
order of levels (heads) and of type names is fixed when the table is made and is what the model
reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from ase.data import atomic_numbers
from nequip.data import AtomicDataDict
from nequip.data.dataset import AtomicDataset
from nequip.data.transforms import NeighborListTransform, NonPeriodicCellTransform

from mfdata.errors import UsageError
from mfdata.levels import resolve_level
from mfdata.loading.fields import LABEL_KEYS, OPTIONAL_IN_FRAMES, PRESENT_FIELDS
from mfdata.loading.sources import StoreSource, split_part, verified_root
from mfdata.query import load_selection, selected_indices
from mfdata.store.manifest import StoreError

# Neighbour-list backend of frame_transforms (see benchmarks/README.md, "Loader").
NEIGHBORLIST_BACKEND = "matscipy"


def default_type_names(stores: Sequence[StoreSource]) -> list[str]:
    """Every element of the stores, by atomic number."""
    elements = {symbol for store in stores for symbol in store.manifest.elements}
    return sorted(elements, key=lambda symbol: atomic_numbers[symbol])


def structures_for(
    source: StoreSource, split: str | None, subset: int | None, selection: str | None
) -> np.ndarray:
    """Structure indices of a store restricted to a split part (``NAME:PART``) and a selection."""
    chosen = np.arange(source.manifest.n_structures)
    if split is not None:
        name, sep, part = split.partition(":")
        if not sep:
            raise UsageError(f"split {split!r}: expected NAME:PART, e.g. default:train")
        chosen = split_part(source, name, part, subset)
    if selection is not None:
        chosen = np.intersect1d(
            chosen, selected_indices(load_selection(selection), source, selection)
        )
    return chosen


def frame_transforms(
    r_max: float, type_names: Sequence[str], backend: str = NEIGHBORLIST_BACKEND
) -> list[Callable]:
    """Molecules get a bounding cell (nequip needs one before the neighbour list), then edges.

    ``backend`` is nequip's neighbour-list backend: ``matscipy`` (default, fastest measured
    here for small molecules), ``ase`` or ``vesin`` (no mixed periodicity).
    """
    return [
        NonPeriodicCellTransform(override_cell=True),
        NeighborListTransform(r_max=r_max, type_names=list(type_names), backend=backend),
    ]


def _sample_arrays(
    source: StoreSource, chosen: np.ndarray, levels: list[str], labels: Sequence[str]
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Atom counts of every structure of the store, and per head which of ``chosen`` have any
    of ``labels`` at that level."""
    names = ["structures/n_atoms"] + [
        f"labels/{level}/{kind}/present" for level in levels for kind in labels
    ]
    root = verified_root(source, names)
    out = {}
    for head, level in enumerate(levels):
        if level not in source.manifest.levels:
            continue
        mask = np.zeros(len(chosen), dtype=bool)
        for kind in labels:
            path = f"labels/{level}/{kind}/present"
            if path in root:
                mask |= root[path][...][chosen]
        out[head] = mask
    return root["structures/n_atoms"][...], out


class FidelitySamples(AtomicDataset):
    """The sample table and frame finish shared by the LMDB and Zarr datasets.

    A sample is a (store, structure, head) triple; subclasses read the raw frame (geometry and
    the labels of one level, NaN where absent) in :meth:`_frame`, and this class adds atom
    types, the head index and the presence flags, so both readers give identical frames.
    """

    def __init__(
        self,
        sources: Sequence[StoreSource],
        levels: Sequence[str],
        type_names: Sequence[str] | None,
        split: str | None,
        subset: int | None,
        selection: str | None,
        labels: Sequence[str],
        dtype: str,
        transforms: Sequence[Callable],
    ):
        super().__init__(transforms=list(transforms))
        self.levels = [resolve_level(level).id for level in levels]
        if len(set(self.levels)) != len(self.levels):
            raise UsageError(f"levels {list(levels)} name one level twice")
        self.type_names = list(type_names or default_type_names(sources))
        self.dtype = dtype
        self._np_dtype = np.dtype(str(dtype).removeprefix("torch."))
        if self._np_dtype not in (np.float32, np.float64):
            raise UsageError(f"dtype {dtype!r}: expected float32 or float64")
        self._type_of = np.full(119, -1, dtype=np.int64)
        for t, name in enumerate(self.type_names):
            self._type_of[atomic_numbers[name]] = t
        missing = sorted({e for s in sources for e in s.manifest.elements} - set(self.type_names))
        if missing:
            raise UsageError(f"elements {missing} in the data have no type in {self.type_names}")
        columns: dict[str, list[np.ndarray]] = {
            "store": [],
            "structure": [],
            "head": [],
            "n_atoms": [],
        }
        # atom count of every structure, per store (int32, as stored)
        self.store_n_atoms: list[np.ndarray] = []
        for k, source in enumerate(sources):
            chosen = structures_for(source, split, subset, selection)
            n_atoms, present = _sample_arrays(source, chosen, self.levels, labels)
            self.store_n_atoms.append(n_atoms)
            for head, mask in present.items():
                columns["store"].append(np.full(int(mask.sum()), k, dtype=np.int16))
                columns["structure"].append(chosen[mask])
                columns["head"].append(np.full(int(mask.sum()), head, dtype=np.int16))
                columns["n_atoms"].append(n_atoms[chosen[mask]])
        if not columns["head"] or not sum(len(h) for h in columns["head"]):
            where = [str(s.path) for s in sources]
            raise StoreError(f"no samples at levels {self.levels} in {where}")
        self.sample_store = np.concatenate(columns["store"])
        self.sample_structure = np.concatenate(columns["structure"])
        self.sample_head = np.concatenate(columns["head"])
        self.n_atoms = np.concatenate(columns["n_atoms"]).astype(np.int64)
        # the optional label kinds in every frame: those any store has at a wanted level
        self.optional_kinds = tuple(
            kind
            for kind in OPTIONAL_IN_FRAMES
            if any(
                level in s.manifest.levels and kind in s.manifest.levels[level].labels
                for s in sources
                for level in self.levels
            )
        )

    @property
    def pools(self) -> dict[str, np.ndarray]:
        """Sample ids per level, in head order (what the sampler mixes)."""
        return {level: np.flatnonzero(self.sample_head == h) for h, level in enumerate(self.levels)}

    def __len__(self) -> int:
        return len(self.sample_head)

    def num_atoms(self, indices) -> list[int]:
        return self.n_atoms[np.asarray(indices)].tolist()

    def _get_data_list(self, indices) -> list[AtomicDataDict.Type]:
        if isinstance(indices, slice):
            indices = range(*indices.indices(len(self)))
        return [self._sample(int(i)) for i in indices]

    def _frame(self, store: int, structure: int, level: str) -> AtomicDataDict.Type:
        """Geometry and the labels of ``level`` (``LmdbStore.torch_dict``'s keys and dtypes)."""
        raise NotImplementedError

    def _sample(self, i: int) -> AtomicDataDict.Type:
        head = int(self.sample_head[i])
        data = self._frame(
            int(self.sample_store[i]), int(self.sample_structure[i]), self.levels[head]
        )
        data[AtomicDataDict.ATOM_TYPE_KEY] = torch.from_numpy(
            self._type_of[data[AtomicDataDict.ATOMIC_NUMBERS_KEY].numpy()]
        )
        data[AtomicDataDict.DATASET_KEY] = torch.tensor([[head]], dtype=torch.long)
        for kind, field in PRESENT_FIELDS.items():
            key = LABEL_KEYS[kind]
            if key in data:
                data[field] = torch.tensor([not bool(torch.isnan(data[key]).all())])
        return data
