"""The plan of one training run: what a strategy (``mftrain.strategies``) decided.

One ordering, two readers: the plan's head order is written into both the data module's config
and the model's, and nothing infers it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mfdata.sampler import LevelMixing


@dataclass
class Plan:
    """What a strategy decided: heads in order, mixing, and per-level loss weight overrides."""

    strategy: str
    levels: list[str]
    mixing: LevelMixing
    level_coeffs: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bases: dict[str, str] = field(default_factory=dict)  # delta level -> base level (ids)
    model_args: dict[str, Any] = field(default_factory=dict)  # more MultiHeadNequIPModel args
    # a run that starts from a trained model (fine-tuning): its builder (which takes the
    # MultiHeadNequIPModel arguments and more), its type names (not the stores' elements), the
    # optimizer's parameter groups (a nequip `param_groups` factory) and provenance to add
    model_target: str = "mftrain.model.MultiHeadNequIPModel"
    type_names: list[str] | None = None
    param_groups: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
