"""Training strategies: which heads a run trains and on which levels' data.

A strategy turns the configuration and the levels found in the stores into a :class:`Plan`: the
head order (which is also the data module's level order: one ordering, two readers), how levels
are mixed, and the loss weights per level. ``mftrain.train`` builds the nequip run from the plan.

- ``single``: one level, one head (a plain NequIP potential with mfkit's data and provenance).
- ``multihead``: one head per level, all trained jointly on every level's labels; the sampler
  mixes the levels as ``data.mixing`` says (natural, explicit, balanced, temperature, schedule).
- ``delta``: multihead, where each level in ``delta.bases`` is its base level's head plus a head
  of its own for the difference (``E = E_base + Δ``); trained jointly, the base on its own level.
- ``fidelity_embedding``: one readout shared by every level, the level given to the backbone as
  an embedded input (nequip's ``categorical_graph_field_embed``); per-level shifts and scales.

- ``pretrain_finetune`` and ``multihead_finetune`` run in two stages (``mftrain.stages``): an
  ordinary ``single`` or ``multihead`` run pre-trains, and their plan here is the fine-tuning
  run's: its heads, replay mixing and loss weights, and the model it starts from (a model builder
  that loads the pre-trained checkpoint, fixed type names, optimizer parameter groups).
"""

from __future__ import annotations

from collections.abc import Callable

from mfdata.levels import UnknownLevelError, resolve_level
from mfdata.sampler import LevelMixing
from mftrain.config import ConfigError, FidelityEmbeddingConfig, TrainConfig
from mftrain.finetune_plan import finetuning_plan
from mftrain.nn import delta_order
from mftrain.plan import Plan


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


def _delta_bases(config: TrainConfig, levels: list[str], available: list[str]) -> dict[str, str]:
    """``delta.bases`` as level ids, checked: both ends heads with data, no self-reference, no
    cycle."""
    bases = {}
    for name, base_name in config.delta.bases.items():
        try:
            level, base = resolve_level(name).id, resolve_level(base_name).id
        except UnknownLevelError as exc:
            raise ConfigError(f"delta.bases.{name}: {exc}") from None
        if level == base:
            raise ConfigError(f"delta.bases.{name}: the delta head {level} refers to itself")
        for role, found in (("delta level", level), ("base level", base)):
            if found not in levels:
                where = (
                    f"the stores have no {found} data (they have {', '.join(available)})"
                    if found not in available
                    else f"it is not one of the heads (data.levels: {', '.join(levels)})"
                )
                raise ConfigError(f"delta.bases.{name}: {role} {found}: {where}")
        if level in bases:
            raise ConfigError(f"delta.bases: {level} is given two bases")
        bases[level] = base
    try:
        delta_order(levels, bases)
    except ValueError as exc:
        raise ConfigError(f"delta.bases: {exc}") from None
    return bases


def delta(config: TrainConfig, available: list[str]) -> Plan:
    levels = _requested_levels(config, available)
    bases = _delta_bases(config, levels, available)
    return Plan(
        "delta",
        levels,
        _mixing(config, levels),
        _level_coeffs(config, levels),
        bases=bases,
        model_args={"detach_base": config.delta.detach_base},
    )


def fidelity_embedding(config: TrainConfig, available: list[str]) -> Plan:
    levels = _requested_levels(config, available)
    options = config.fidelity_embedding or FidelityEmbeddingConfig()
    return Plan(
        "fidelity_embedding",
        levels,
        _mixing(config, levels),
        _level_coeffs(config, levels),
        model_args={"level_embedding_features": options.num_features},
    )


STRATEGIES: dict[str, Callable[[TrainConfig, list[str]], Plan]] = {
    "single": single,
    "multihead": multihead,
    "pretrain_finetune": finetuning_plan,
    "multihead_finetune": finetuning_plan,
    "delta": delta,
    "fidelity_embedding": fidelity_embedding,
}


def plan(config: TrainConfig, available: list[str]) -> Plan:
    if config.strategy not in STRATEGIES:
        raise ConfigError(f"strategy {config.strategy!r}: expected one of {list(STRATEGIES)}")
    return STRATEGIES[config.strategy](config, available)
