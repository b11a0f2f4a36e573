"""Linking: one record per geometry when several sources label the same structures.

Two structures are the same geometry when they have the same atomic numbers in the same order
and every coordinate agrees within a tolerance (default 1e-4 Å). Candidates are found with a
sort over an exact key (the atomic-number sequence) and a 1-D projection of the positions, so
that no pair within tolerance is missed at a rounding boundary; every candidate is confirmed by
comparing positions. Conflicting labels for one structure and level are an error.
"""

from __future__ import annotations

import numpy as np

from mfdata.records import (
    DEFAULT_GEOMETRY_TOLERANCE,
    InvalidDataError,
    Label,
    LabelKey,
    Source,
    Structures,
    _ranges,
)
from mfdata.schema import LABEL_KINDS

_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93],
    dtype=np.uint64,
)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= _MIX[1]
    x ^= x >> np.uint64(27)
    x *= _MIX[2]
    x ^= x >> np.uint64(31)
    return x


def _atom_index(s: Structures) -> np.ndarray:
    """Index of each atom within its structure."""
    start = s.atom_start
    return np.arange(len(s.numbers), dtype=np.int64) - np.repeat(start[:-1], s.n_atoms)


def composition_key(s: Structures) -> np.ndarray:
    """A 64-bit hash of each structure's atomic-number sequence (order matters)."""
    atom_hash = _splitmix(s.numbers.astype(np.uint64) + _atom_index(s).astype(np.uint64) * _MIX[0])
    summed = np.add.reduceat(atom_hash, s.atom_start[:-1]) if len(atom_hash) else atom_hash
    return _splitmix(summed ^ s.n_atoms.astype(np.uint64) * _MIX[3])


def formula_key(numbers: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each structure's composition, independent of atom order (its formula)."""
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    atom_hash = _splitmix(numbers.astype(np.uint64) + _MIX[0])
    return np.add.reduceat(atom_hash, starts) if len(numbers) else atom_hash


def geometry_hash(s: Structures, tolerance: float = DEFAULT_GEOMETRY_TOLERANCE) -> np.ndarray:
    """A 64-bit hash of atomic numbers and positions rounded to ``tolerance`` (Å).

    Equal hashes are candidates, not proof: confirm by comparing positions.
    """
    q = np.floor(np.asarray(s.positions, dtype=np.float64) / tolerance + 0.5).astype(np.int64)
    q = q.view(np.uint64)
    atom_key = s.numbers.astype(np.uint64) + (_atom_index(s).astype(np.uint64) << np.uint64(8))
    atom_hash = _splitmix(
        q[:, 0] * _MIX[0] + q[:, 1] * _MIX[1] + q[:, 2] * _MIX[2] + atom_key * _MIX[3]
    )
    summed = np.add.reduceat(atom_hash, s.atom_start[:-1]) if len(atom_hash) else atom_hash
    return _splitmix(summed ^ s.n_atoms.astype(np.uint64))


def _projection(s: Structures) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum of coordinates per structure, and the bound on its change per Å of shift."""
    index = _atom_index(s)
    weights = 0.5 + 0.5 * ((index[:, None] * 3 + np.arange(3)) * 0.6180339887 % 1.0)
    weighted = (np.asarray(s.positions, dtype=np.float64) * weights).sum(axis=1)
    start = s.atom_start[:-1]
    return np.add.reduceat(weighted, start), np.add.reduceat(weights.sum(axis=1), start)


def find_matches(reference: Structures, query: Structures, tolerance: float) -> np.ndarray:
    """For each query structure, the index of the same geometry in ``reference``, or -1."""
    result = np.full(query.n_structures, -1, dtype=np.int64)
    if reference.n_structures == 0 or query.n_structures == 0:
        return result
    ref_comp, query_comp = composition_key(reference), composition_key(query)
    compositions, inverse = np.unique(np.concatenate([ref_comp, query_comp]), return_inverse=True)
    ref_group, query_group = inverse[: len(ref_comp)], inverse[len(ref_comp) :]
    ref_proj, _ = _projection(reference)
    query_proj, query_bound = _projection(query)
    low = min(ref_proj.min(), query_proj.min())
    span = max(ref_proj.max(), query_proj.max()) - low + 2 * tolerance * query_bound.max() + 1.0
    ref_key = ref_group * span + (ref_proj - low)
    query_key = query_group * span + (query_proj - low)
    order = np.argsort(ref_key, kind="stable")
    sorted_key = ref_key[order]
    bound = tolerance * query_bound * (1 + 1e-9) + 1e-9 * np.abs(query_key)
    lo = np.searchsorted(sorted_key, query_key - bound, side="left")
    hi = np.searchsorted(sorted_key, query_key + bound, side="right")
    ref_start, query_start = reference.atom_start, query.atom_start
    for q in np.flatnonzero(hi > lo):
        qa = query.positions[query_start[q] : query_start[q + 1]]
        for candidate in order[lo[q] : hi[q]]:
            if ref_comp[candidate] != query_comp[q]:
                continue
            ra = reference.positions[ref_start[candidate] : ref_start[candidate + 1]]
            if (
                ra.shape == qa.shape
                and np.array_equal(
                    reference.numbers[ref_start[candidate] : ref_start[candidate + 1]],
                    query.numbers[query_start[q] : query_start[q + 1]],
                )
                and np.abs(ra - qa).max() <= tolerance
            ):
                result[q] = candidate
                break
    return result


def _match_ids(reference_ids: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
    order = np.argsort(reference_ids, kind="stable")
    sorted_ids = reference_ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, query_ids), 0, max(len(order) - 1, 0))
    found = len(order) > 0 and sorted_ids[pos] == query_ids
    return np.where(found, order[pos], -1)


def concatenate(parts: list[Structures]) -> Structures:
    """``parts`` one after the other, in one copy (appending thousands of files one by one
    would copy the growing result each time); groups of the same name become one."""
    if len(parts) == 1:
        return parts[0]
    groups: dict[str, int] = {}
    for part in parts:
        for name in part.group_names:
            groups.setdefault(name, len(groups))

    def joined(field: str) -> np.ndarray:
        return np.concatenate([getattr(part, field) for part in parts])

    positions_dtype = np.result_type(*(part.positions.dtype for part in parts))
    merged = Structures(
        numbers=joined("numbers"),
        positions=joined("positions").astype(positions_dtype, copy=False),
        n_atoms=joined("n_atoms"),
        cell=joined("cell"),
        pbc=joined("pbc"),
        charge=joined("charge"),
        multiplicity=joined("multiplicity"),
        group=np.concatenate(
            [
                np.array([groups[name] for name in part.group_names], dtype=np.int32)[part.group]
                for part in parts
            ]
        ),
        group_names=list(groups),
        source=joined("source"),
    )
    for key in {key for part in parts for key in part.labels}:
        merged.labels[key] = Label(
            np.concatenate([_label_or_nan(part, key) for part in parts]),
            np.concatenate([_present(part, key) for part in parts]),
        )
    return merged


def _label_or_nan(s: Structures, key: LabelKey) -> np.ndarray:
    if key in s.labels:
        return s.labels[key].values
    kind = LABEL_KINDS[key[1]]
    rows = len(s.numbers) if kind.per == "atom" else s.n_structures
    return np.full((rows, *kind.shape), np.nan)


def _present(s: Structures, key: LabelKey) -> np.ndarray:
    return s.labels[key].present if key in s.labels else np.zeros(s.n_structures, dtype=bool)


def _add_labels(target: Structures, source: Source, matches: np.ndarray) -> None:
    """Copy ``source``'s labels onto the matched records of ``target``; conflicts are errors."""
    s = source.structures
    matched = np.flatnonzero(matches >= 0)
    target_rows = matches[matched]
    target_start, source_start = target.atom_start, s.atom_start
    target_atoms = _ranges(target_start[target_rows], target.n_atoms[target_rows])
    source_atoms = _ranges(source_start[matched], s.n_atoms[matched])
    for key, label in s.labels.items():
        per_atom = LABEL_KINDS[key[1]].per == "atom"
        if key not in target.labels:
            target.labels[key] = Label(
                _label_or_nan(target, key).astype(label.values.dtype, copy=False),
                np.zeros(target.n_structures, dtype=bool),
            )
        out = target.labels[key]
        both = out.present[target_rows] & label.present[matched]
        if both.any():
            old = out.values[target_atoms if per_atom else target_rows]
            new = label.values[source_atoms if per_atom else matched]
            same = np.isclose(old, new, rtol=1e-7, atol=1e-7).reshape(len(old), -1).all(axis=1)
            if per_atom:
                counts = target.n_atoms[target_rows]
                same = np.logical_and.reduceat(same, np.cumsum(counts) - counts)
            clash = np.flatnonzero(both & ~same)
            if len(clash):
                i = matched[clash[0]]
                raise InvalidDataError(
                    f"{source.path}: {source.describe(int(i))}: {key[0]} {key[1]} conflicts with "
                    "the value an earlier source gives for the same structure "
                    f"(record {target_rows[clash[0]]} of the merged data)"
                )
        take = label.present[matched]
        out.present[target_rows[take]] = True
        if per_atom:
            take_atoms = np.repeat(take, s.n_atoms[matched])
            out.values[target_atoms[take_atoms]] = label.values[source_atoms[take_atoms]]
        else:
            out.values[target_rows[take]] = label.values[matched[take]]


def _check_unique_ids(source: Source, link_by: str) -> None:
    """An id that names two records of one source would link labels to either: an error."""
    if source.ids is None:
        raise InvalidDataError(f"{source.path}: no ids to link by ({link_by})")
    order = np.argsort(source.ids, kind="stable")
    ids = source.ids[order]
    same = np.flatnonzero(ids[1:] == ids[:-1])
    if len(same):
        first, second = sorted((int(order[same[0]]), int(order[same[0] + 1])))
        raise InvalidDataError(
            f"{source.path}: {source.describe(second)}: id {ids[same[0]]} ({link_by}) is also the "
            f"id of {source.describe(first)}; ids must be unique within a file to link by them"
        )


def _add_labels_in_passes(target: Structures, source: Source, matches: np.ndarray) -> None:
    """Like :func:`_add_labels`, but records of one source that match the same structure are
    added one pass each, so that they are checked against each other too."""
    pending = matches.copy()
    while (pending >= 0).any():
        rows = np.flatnonzero(pending >= 0)
        _, first = np.unique(pending[rows], return_index=True)
        now = np.full_like(pending, -1)
        now[rows[first]] = pending[rows[first]]
        _add_labels(target, source, now)
        pending[rows[first]] = -1


def link_sources(
    sources: list[Source],
    link_by: str | None,
    tolerance: float = DEFAULT_GEOMETRY_TOLERANCE,
) -> Structures:
    """Combine sources into one set of structures.

    ``link_by`` None appends the sources; ``"geometry"`` merges records with the same geometry;
    ``"id:KEY"`` merges records whose id (read by the readers from KEY) agrees. Each structure's
    ``source`` is the position in ``sources`` of the first source that has its geometry.
    """
    for k, source in enumerate(sources):
        source.structures.source[:] = k
    sources = [source for source in sources if source.structures.n_structures]
    if not sources:
        raise InvalidDataError("no structures in any source (only isolated atoms)")
    if link_by is not None and link_by != "geometry":
        for source in sources:
            _check_unique_ids(source, link_by)
    if link_by is None:
        return concatenate([source.structures for source in sources])
    result = sources[0].structures
    result_ids = sources[0].ids
    for source in sources[1:]:
        s = source.structures
        if link_by == "geometry":
            matches = find_matches(result, s, tolerance)
        else:
            if result_ids is None or source.ids is None:
                raise InvalidDataError(f"{source.path}: no ids to link by ({link_by})")
            matches = _match_ids(result_ids, source.ids)
            other_size = result.n_atoms[np.maximum(matches, 0)]
            bad = np.flatnonzero((matches >= 0) & (other_size != s.n_atoms))
            if len(bad):
                raise InvalidDataError(
                    f"{source.path}: {source.describe(int(bad[0]))}: id {source.ids[bad[0]]} "
                    "names a structure with a different number of atoms"
                )
        _add_labels_in_passes(result, source, matches)
        new = np.flatnonzero(matches < 0)
        if len(new):
            result = concatenate([result, s.select(new)])
            if result_ids is not None and source.ids is not None:
                result_ids = np.concatenate([result_ids, source.ids[new]])
    return result
