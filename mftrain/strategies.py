"""Training strategies: which heads a run trains and on which levels' data.

A strategy turns the configuration and the levels found in the stores into a :class:`Plan`: the
head order (which is also the data module's level order: one ordering, two readers), how levels
are mixed, and the loss weights per level. ``mftrain.train`` builds the nequip run from the plan.

- ``single``: one level, one head (a plain NequIP potential with mfkit's data and provenance).
- ``multihead``: one head per level, all trained jointly on every level's labels; the sampler
  mixes the levels as ``data.mixing`` says (natural, explicit, balanced, temperature, schedule).

The fine-tuning strategies (pre-train then fine-tune, frozen or partial backbones) register here
too: a strategy may also name a starting checkpoint and parameter groups, through the ``Plan``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mfdata.levels import resolve_level
from mfdata.sampler import LevelMixing
from mftrain.config import ConfigError, TrainConfig


@dataclass
class Plan:
    """What a strategy decided: heads in order, mixing, and per-level loss weight overrides."""

    strategy: str
    levels: list[str]
    mixing: LevelMixing
    level_coeffs: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _requested_levels(config: TrainConfig, available: list[str]) -> list[str]:
    if config.data.levels is None:
        return list(available)
    levels = [resolve_level(level).id for level in config.data.levels]
    if len(set(levels)) != len(levels):
        raise ConfigError(f"data.levels {config.data.levels} names one level twice")
    missing = [level for level in levels if level not in available]
    if missing:
        raise ConfigError(
            f"data.levels: {', '.join(missing)} not in the stores (they have "
            f"{', '.join(available)})"
        )
    return levels


def _level_coeffs(config: TrainConfig, levels: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for name, weights in config.loss.levels.items():
        level = resolve_level(name).id
        if level not in levels:
            raise ConfigError(f"loss.levels.{name}: {level} is not one of the heads {levels}")
        out[level] = {k: v for k, v in weights.model_dump().items() if v is not None}
    return out


def _mixing(config: TrainConfig, levels: list[str]) -> LevelMixing:
    mixing = config.data.mixing
    ratios = [mixing.ratios or {}] + [step.ratios for step in mixing.schedule or []]
    for table in ratios:
        unknown = [name for name in table if resolve_level(name).id not in levels]
        if unknown:
            raise ConfigError(f"data.mixing: ratios for levels that are not heads: {unknown}")
    if not any(ratios):
        return mixing
    data = mixing.model_dump()
    if data.get("ratios"):
        data["ratios"] = {resolve_level(k).id: v for k, v in data["ratios"].items()}
    for step in data.get("schedule") or []:
        step["ratios"] = {resolve_level(k).id: v for k, v in step["ratios"].items()}
    return LevelMixing.model_validate(data)


def single(config: TrainConfig, available: list[str]) -> Plan:
    levels = _requested_levels(config, available)
    if len(levels) != 1:
        raise ConfigError(
            f"strategy single trains one level, but {len(levels)} are selected "
            f"({', '.join(levels)}): choose one with --levels (data.levels)"
        )
    return Plan("single", levels, LevelMixing(), _level_coeffs(config, levels))


def multihead(config: TrainConfig, available: list[str]) -> Plan:
    levels = _requested_levels(config, available)
    return Plan("multihead", levels, _mixing(config, levels), _level_coeffs(config, levels))


STRATEGIES: dict[str, Callable[[TrainConfig, list[str]], Plan]] = {
    "single": single,
    "multihead": multihead,
}


def plan(config: TrainConfig, available: list[str]) -> Plan:
    if config.strategy not in STRATEGIES:
        raise ConfigError(f"strategy {config.strategy!r}: expected one of {list(STRATEGIES)}")
    return STRATEGIES[config.strategy](config, available)
