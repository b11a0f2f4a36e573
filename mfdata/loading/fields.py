"""The label fields of a frame, and their presence flags, as nequip field names.

Guarantees: importing this module registers the presence flags and ``total_dipole`` with nequip
as graph fields, so every process that builds or collates frames (DataLoader workers included)
knows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from nequip.data import AtomicDataDict, register_fields

from mfdata.schema import LABEL_KINDS

# A molecule's dipole is one vector per frame; nequip's own ``dipole`` is a node field.
TOTAL_DIPOLE_KEY = "total_dipole"

# label kind -> AtomicDataDict key; the frame's label fields, in this order
LABEL_KEYS = {
    "energy": AtomicDataDict.TOTAL_ENERGY_KEY,
    "forces": AtomicDataDict.FORCE_KEY,
    "stress": AtomicDataDict.STRESS_KEY,
    "dipole": TOTAL_DIPOLE_KEY,
    "charges": AtomicDataDict.CHARGE_KEY,
}
# label kind -> shape of one row of its field: (1, ...) per frame, (atoms, ...) per atom
FRAME_SHAPES = {
    "energy": (1,),
    "forces": (3,),
    "stress": (3, 3),
    "dipole": (3,),
    "charges": (1,),
}
# every frame has these fields; the others only where a store has them at a wanted level
ALWAYS_IN_FRAMES = ("energy", "forces")
OPTIONAL_IN_FRAMES = ("stress", "dipole", "charges")
# label kind -> per-frame flag: True where the frame's level has that label
PRESENT_FIELDS = {kind: f"{key}_present" for kind, key in LABEL_KEYS.items()}

register_fields(graph_fields=[*PRESENT_FIELDS.values(), TOTAL_DIPOLE_KEY])


class FrameLabel(NamedTuple):
    """One label field of a frame: its label kind, its key, the shape of one row, and whether
    it has a row per atom (else one per frame)."""

    kind: str
    key: str
    shape: tuple[int, ...]
    per_atom: bool


def frame_labels(optional: Sequence[str]) -> list[FrameLabel]:
    """The label fields of a frame that carries the ``optional`` kinds too, in frame order."""
    return [
        FrameLabel(kind, LABEL_KEYS[kind], FRAME_SHAPES[kind], LABEL_KINDS[kind].per == "atom")
        for kind in (*ALWAYS_IN_FRAMES, *optional)
    ]
