"""Torch modules of mftrain's models: head selection and per-head energy readouts.

This file imports only ``torch``, ``nequip.nn`` and ``nequip.data`` (importing ``nequip.model``
here would make a circular import when nequip loads the extension, and break ``nequip-package``).

A multi-head model is a NequIP backbone followed by :class:`MultiHeadEnergy`: one readout MLP and
one per-type scale/shift per level of theory, kept in a ``ModuleDict`` keyed by level id, so the
checkpoint's parameter names carry the level (``heads.wb97x-631gd.per_type_energy_scale_shift``).
The head of each frame is the frame's ``dataset`` index, in the head order fixed when training
started; :class:`HeadIndex` spreads it to the frame's atoms.
"""

from __future__ import annotations

import torch
from nequip.data import AtomicDataDict
from nequip.data._key_registry import register_fields  # keeps nequip.data out of packages
from nequip.nn import (
    GraphModuleMixin,
    PerTypeScaleShift,
    ScalarMLP,
    SequentialGraphNetwork,
)
from nequip.nn.model_modifier_utils import model_modifier

HEAD_KEY = "mfkit_head"
"""Per-atom head index (int64, shape ``(num_atoms,)``), set by :class:`HeadIndex`."""

register_fields(node_fields=[HEAD_KEY])


class HeadIndex(GraphModuleMixin, torch.nn.Module):
    """The first module of a multi-head model: each atom's head index, from its frame's ``dataset``.

    Declaring ``dataset`` in ``irreps_in`` is what makes nequip's ``GraphModel`` pass the field
    through to the model. A frame without ``dataset`` (e.g. from an ASE calculator) is allowed
    only when there is one head.
    """

    num_heads: int

    def __init__(self, num_heads: int, irreps_in=None):
        super().__init__()
        self.num_heads = int(num_heads)
        irreps_in = dict(irreps_in or {})
        irreps_in[AtomicDataDict.DATASET_KEY] = None
        self._init_irreps(irreps_in=irreps_in, irreps_out={HEAD_KEY: None})

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        if AtomicDataDict.DATASET_KEY in data:
            per_frame = data[AtomicDataDict.DATASET_KEY].view(-1).to(torch.long)
        else:
            if self.num_heads != 1:
                raise RuntimeError(
                    "a multi-head model needs the `dataset` field (the head index of each frame)"
                )
            per_frame = torch.zeros(1, dtype=torch.long, device=types.device)
        if AtomicDataDict.BATCH_KEY in data:
            head = torch.index_select(per_frame, 0, data[AtomicDataDict.BATCH_KEY].view(-1))
        else:
            head = per_frame[:1].expand(types.size(0))
        data[HEAD_KEY] = head
        return data


def energy_head(
    type_names: list[str],
    scales,
    shifts,
    scales_trainable: bool,
    shifts_trainable: bool,
    readout_hidden_layers_depth: int,
    readout_hidden_layers_width: int | None,
    readout_nonlinearity: str | None,
    irreps_in,
) -> SequentialGraphNetwork:
    """One head: nequip's per-atom energy readout and per-type scale/shift, with nequip's names."""
    readout = ScalarMLP(
        output_dim=1,
        hidden_layers_depth=readout_hidden_layers_depth,
        hidden_layers_width=readout_hidden_layers_width,
        nonlinearity=readout_nonlinearity,
        bias=False,
        forward_weight_init=True,
        field=AtomicDataDict.NODE_FEATURES_KEY,
        out_field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        irreps_in=irreps_in,
    )
    scale_shift = PerTypeScaleShift(
        type_names=type_names,
        field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        out_field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        scales=scales,
        shifts=shifts,
        scales_trainable=scales_trainable,
        shifts_trainable=shifts_trainable,
        irreps_in=readout.irreps_out,
    )
    return SequentialGraphNetwork(
        {"per_atom_energy_readout": readout, "per_type_energy_scale_shift": scale_shift}
    )


class MultiHeadEnergy(GraphModuleMixin, torch.nn.Module):
    """Per-atom energies from one head per level, each atom through its frame's head.

    Every head reads the shared node features; an atom's energy is taken from its own head, so a
    head gets gradients only from the frames of its level. ``scales`` and ``shifts`` map level id to
    what :class:`~nequip.nn.PerTypeScaleShift` accepts (a number or a dict by type name).
    """

    def __init__(
        self,
        levels: list[str],
        type_names: list[str],
        scales: dict,
        shifts: dict,
        scales_trainable: bool = False,
        shifts_trainable: bool = False,
        readout_hidden_layers_depth: int = 0,
        readout_hidden_layers_width: int | None = None,
        readout_nonlinearity: str | None = "silu",
        irreps_in=None,
    ):
        super().__init__()
        irreps_in = dict(irreps_in or {})
        irreps_in.setdefault(HEAD_KEY, None)
        self.levels = list(levels)
        self.heads = torch.nn.ModuleDict(
            {
                level: energy_head(
                    list(type_names),
                    scales[level],
                    shifts[level],
                    scales_trainable,
                    shifts_trainable,
                    readout_hidden_layers_depth,
                    readout_hidden_layers_width,
                    readout_nonlinearity,
                    irreps_in,
                )
                for level in self.levels
            }
        )
        first = next(iter(self.heads.values()))
        self._init_irreps(
            irreps_in=irreps_in,
            required_irreps_in=[AtomicDataDict.NODE_FEATURES_KEY, HEAD_KEY],
            irreps_out={
                AtomicDataDict.PER_ATOM_ENERGY_KEY: first.irreps_out[
                    AtomicDataDict.PER_ATOM_ENERGY_KEY
                ]
            },
        )

    @model_modifier(persistent=True)
    @classmethod
    def select_head(cls, model: torch.nn.Module, level: str) -> torch.nn.Module:
        """Keep only the head of ``level``: the model becomes a one-head model of that level.

        Every frame then goes through that head, with or without a ``dataset`` field (which is
        ignored), so nequip's ASE calculator and ``nequip-package`` use it as a standard model.
        """
        level = str(level)
        found = [m for m in model.modules() if isinstance(m, MultiHeadEnergy)]
        if not found:
            raise ValueError("select_head: not a multi-head mftrain model")
        for module in found:
            if level not in module.heads:
                raise ValueError(
                    f"select_head: no head {level!r}; the model's heads are "
                    f"{', '.join(module.levels)}"
                )
        for module in found:
            module.heads = torch.nn.ModuleDict({level: module.heads[level]})
            module.levels = [level]
        for module in model.modules():
            if isinstance(module, HeadIndex):
                module.num_heads = 1
        return model

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        head = data[HEAD_KEY].view(-1, 1)
        energy = torch.empty(0)
        for h, module in enumerate(self.heads.values()):
            out = module(
                {
                    AtomicDataDict.NODE_FEATURES_KEY: data[AtomicDataDict.NODE_FEATURES_KEY],
                    AtomicDataDict.ATOM_TYPE_KEY: data[AtomicDataDict.ATOM_TYPE_KEY],
                }
            )[AtomicDataDict.PER_ATOM_ENERGY_KEY]
            energy = out if h == 0 else torch.where(head == h, out, energy)
        data[AtomicDataDict.PER_ATOM_ENERGY_KEY] = energy
        return data


def set_derivatives(model: torch.nn.Module, enabled: bool) -> bool:
    """Switch the autograd force/stress pass of every ``ForceStressOutput`` in ``model``.

    Returns the previous setting (of the first one found). Used to skip the force pass for a
    batch with no force or stress label.
    """
    previous = None
    for module in model.modules():
        if hasattr(module, "do_derivatives") and hasattr(module, "func"):
            if previous is None:
                previous = bool(module.do_derivatives)
            module.do_derivatives = bool(enabled)
    return True if previous is None else previous
