"""The Zarr v3 group of a store: columnar, chunked, compressed; the canonical archival form.

Layout inside ``STORE/data.zarr``::

    structures/n_atoms       int32   (n_structures,)
    structures/cell          float64 (n_structures, 3, 3)   Å; zeros for molecules
    structures/pbc           bool    (n_structures, 3)
    structures/charge        int16   (n_structures,)
    structures/multiplicity  int16   (n_structures,)         0 where the source does not say
    structures/group         int32   (n_structures,)         attribute ``names``: group names
    structures/source        int16   (n_structures,)         index into the manifest's inputs
    structures/hash          uint64  (n_structures,)         geometry hash (see mfdata.linking)
    atoms/numbers            uint8   (n_atoms_total,)
    atoms/positions          float   (n_atoms_total, 3)      Å
    labels/LEVEL/LABEL/values  float (rows, *shape)  canonical unit; NaN where absent
    labels/LEVEL/LABEL/present bool  (n_structures,)

Per-atom arrays hold the atoms of all structures back to back; structure i owns the atoms from
``cumsum(n_atoms)[i - 1]``. Everything above is immutable once written and covered by the store's
checksum; splits and statistics live elsewhere and do not change it.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import zarr
from numcodecs import BitRound
from zarr.codecs import BloscCodec

from mfdata.records import Label, Structures
from mfdata.schema import LABEL_KINDS

ZARR_DIR = "data.zarr"  # the group's directory inside a store
STRUCTURE_CHUNK = 1 << 16
ATOM_CHUNK = 1 << 18

Precision = Literal["lossless", "compact"]
# With ``compact``, per-atom float labels (forces, charges) keep this many mantissa bits:
# a relative error of at most 2**-(COMPACT_KEEPBITS + 1), about 1e-4 (0.01 %).
COMPACT_KEEPBITS = 12


def _compressor(dtype: np.dtype) -> BloscCodec:
    """zstd with byte shuffle; floats in 512 KiB Blosc blocks.

    The low mantissa bits of QM floats are noise: byte shuffle (sign and exponent bytes
    together) compresses them better than bitshuffle, and larger blocks give zstd a longer
    window; on ANI-like data 3 % smaller lossless, 4 % smaller compact (benchmarks/README.md).
    """
    if np.dtype(dtype).kind == "f":
        return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", blocksize=1 << 19)
    return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


def array_checksum(array: np.ndarray) -> str:
    """sha256 of an array's values in C order, little-endian, with its dtype and shape."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def combined_checksum(checksums: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(checksums):
        digest.update(f"{path}={checksums[path]}\n".encode())
    return digest.hexdigest()


def structure_arrays(s: Structures, hashes: np.ndarray) -> dict[str, np.ndarray]:
    """Every immutable array of the store, by its path in the group."""
    arrays = {
        "structures/n_atoms": s.n_atoms.astype(np.int32),
        "structures/cell": s.cell.astype(np.float64),
        "structures/pbc": s.pbc.astype(bool),
        "structures/charge": s.charge.astype(np.int16),
        "structures/multiplicity": s.multiplicity.astype(np.int16),
        "structures/group": s.group.astype(np.int32),
        "structures/source": s.source.astype(np.int16),
        "structures/hash": hashes.astype(np.uint64),
        "atoms/numbers": s.numbers.astype(np.uint8),
        "atoms/positions": s.positions,
    }
    for (level, kind), label in sorted(s.labels.items()):
        values = label.values
        if kind == "energy":
            values = values.astype(np.float64)
        arrays[f"labels/{level}/{kind}/values"] = values
        arrays[f"labels/{level}/{kind}/present"] = label.present.astype(bool)
    return arrays


def is_per_atom(name: str) -> bool:
    """Whether the array at ``name`` in the group has one row per atom (else per structure)."""
    if name.startswith("atoms/"):
        return True
    parts = name.split("/")
    return parts[0] == "labels" and parts[3] == "values" and LABEL_KINDS[parts[2]].per == "atom"


def write_group(
    path: str, s: Structures, hashes: np.ndarray, precision: Precision = "lossless"
) -> dict[str, str]:
    """Write the arrays of ``s`` as a Zarr v3 group at ``path``; return their checksums.

    With ``precision="compact"`` per-atom float labels are bit-rounded before writing (see
    ``COMPACT_KEEPBITS``); checksums cover the values as stored.
    """
    root = zarr.open_group(path, mode="w-", zarr_format=3)
    checksums = {}
    for name, array in structure_arrays(s, hashes).items():
        per_atom = is_per_atom(name)
        if precision == "compact" and per_atom and name.startswith("labels/"):
            array = BitRound(COMPACT_KEEPBITS).encode(array).view(array.dtype).reshape(array.shape)
        chunk_rows = ATOM_CHUNK if per_atom else STRUCTURE_CHUNK
        z = root.create_array(
            name,
            shape=array.shape,
            dtype=array.dtype,
            chunks=(max(1, min(chunk_rows, array.shape[0])), *array.shape[1:]),
            compressors=_compressor(array.dtype),
            fill_value=np.nan if array.dtype.kind == "f" else 0,
        )
        z[...] = array
        checksums[name] = array_checksum(array)
    root["structures/group"].attrs["names"] = list(s.group_names)
    return checksums


def read_group(path: str) -> tuple[Structures, np.ndarray]:
    """All structures and labels of the group at ``path``, and their geometry hashes."""
    root = zarr.open_group(path, mode="r", zarr_format=3)
    group = root["structures/group"]
    s = Structures(
        numbers=root["atoms/numbers"][...],
        positions=root["atoms/positions"][...],
        n_atoms=root["structures/n_atoms"][...],
        cell=root["structures/cell"][...],
        pbc=root["structures/pbc"][...],
        charge=root["structures/charge"][...],
        multiplicity=root["structures/multiplicity"][...],
        group=group[...],
        group_names=list(group.attrs["names"]),
        source=root["structures/source"][...],
    )
    if "labels" in root:
        for level, level_group in root["labels"].groups():
            for kind, label_group in level_group.groups():
                s.labels[(level, kind)] = Label(
                    label_group["values"][...], label_group["present"][...]
                )
    return s, root["structures/hash"][...]


def read_checksums(path: str, paths: list[str]) -> dict[str, str]:
    """Recompute the checksums of the arrays at ``paths`` from what is on disk."""
    root = zarr.open_group(path, mode="r", zarr_format=3)
    return {name: array_checksum(root[name][...]) for name in paths}
