"""A collated batch as one byte buffer: how DataLoader workers send batches.

Guarantees: :func:`unpack_batch` of :func:`pack_batch` gives the tensors of
``AtomicDataDict.batched_from_list`` with equal keys, dtypes, shapes and values, as views into
the one buffer (every tensor starts 8-byte aligned).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from nequip.data import AtomicDataDict


class PackedBatch(NamedTuple):
    """A collated batch as one byte buffer and its layout: what a worker sends."""

    buffer: torch.Tensor
    layout: tuple[tuple[str, torch.dtype, tuple[int, ...], int], ...]


def pack_batch(frames: list[AtomicDataDict.Type]) -> PackedBatch:
    """Collate ``frames`` (``AtomicDataDict.batched_from_list``) into one buffer.

    A DataLoader worker hands every tensor of a batch to the main process through its own
    shared-memory segment and file descriptor, about 0.2 ms each here; a batch has ~15 tensors,
    so for small molecules that costs more than reading the batch. One buffer costs one.
    """
    batch = AtomicDataDict.batched_from_list(frames)
    parts, layout, offset = [], [], 0
    for key, tensor in batch.items():
        raw = tensor.detach().contiguous().numpy().reshape(-1).view(np.uint8)
        layout.append((key, tensor.dtype, tuple(tensor.shape), offset))
        parts.append(raw)
        pad = -len(raw) % 8  # every tensor starts 8-byte aligned, so it can be viewed in place
        if pad:
            parts.append(np.zeros(pad, np.uint8))
        offset += len(raw) + pad
    return PackedBatch(torch.from_numpy(np.concatenate(parts)), tuple(layout))


def unpack_batch(packed: PackedBatch) -> AtomicDataDict.Type:
    """The batch dict of :func:`pack_batch`: views into the buffer, no copies."""
    out = {}
    for key, dtype, shape, offset in packed.layout:
        size = math.prod(shape) * dtype.itemsize
        out[key] = packed.buffer[offset : offset + size].view(dtype).view(shape)
    return out
