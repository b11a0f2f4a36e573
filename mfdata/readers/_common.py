"""What every reader shares: key mappings and the conversion of a source quantity to a label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mfdata.levels import resolve_level
from mfdata.schema import LabelKind, label_kind
from mfdata.units import conversion_factor


@dataclass(frozen=True)
class KeyMapping:
    """A source key stored as ``label`` (energy, forces, gradient...) at level ``level``."""

    key: str
    level: str  # level id
    label: str
    unit: str
    optional: bool = False  # True: a key no record has is skipped, not an error

    @property
    def kind(self) -> LabelKind:
        return label_kind(self.label)[0]

    def convert(self, values: np.ndarray) -> np.ndarray:
        """Values in the canonical unit of the label kind (gradients become forces)."""
        kind, sign = label_kind(self.label)
        factor = sign * conversion_factor(self.unit, kind.dimension)
        values = np.asarray(values)
        keep = values.dtype.kind == "f" and kind.name != "energy"
        out = values.astype(values.dtype if keep else np.float64, copy=True)
        out *= factor
        return out


def parse_mapping(text: str) -> tuple[str, str, str]:
    """``KEY=LEVEL:LABEL`` -> (key, level id, label)."""
    key, sep, target = text.partition("=")
    level, sep2, label = target.rpartition(":")
    if not (sep and sep2 and key and level and label):
        raise ValueError(
            f"--map {text!r}: expected KEY=LEVEL:LABEL, e.g. Emp2=mp2-augccpvdz:energy"
        )
    label_kind(label)
    return key, resolve_level(level).id, label
