"""Torch modules of mftrain's models: head selection and per-head energy readouts.

This file imports only ``torch``, ``nequip.nn`` and ``nequip.data`` (importing ``nequip.model``
here would make a circular import when nequip loads the extension, and break ``nequip-package``).

A multi-head model is a NequIP backbone followed by :class:`MultiHeadEnergy`: one readout MLP and
one per-type scale/shift per level of theory, kept in a ``ModuleDict`` keyed by level id, so the
checkpoint's parameter names carry the level (``heads.wb97x-631gd.per_type_energy_scale_shift``).
The head of each frame is the frame's ``dataset`` index, in the head order fixed when training
started; :class:`HeadIndex` spreads it to the frame's atoms. Two variants use the same modules:

- delta heads (``bases``): head ``L`` with base ``B`` predicts ``E_L = E_B + Δ_L``, where
  ``Δ_L`` is ``L``'s own readout and scale/shift (initialised from the level difference);
- a fidelity embedding (``shared_readout``): one readout for every level, the level given to the
  backbone as an input (nequip's ``categorical_graph_field_embed`` of ``dataset``), and only the
  per-type scale/shift kept per level (levels differ by hundreds of eV).
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
    only when there is one head, or when a head was fixed (``fixed``, set by the ``select_head``
    modifier: every frame then uses that head, whatever its ``dataset`` says). The frame index it
    used is written back to ``dataset``, which a level embedding further on reads.
    """

    num_heads: int
    fixed: int

    def __init__(self, num_heads: int, irreps_in=None):
        super().__init__()
        self.num_heads = int(num_heads)
        self.fixed = -1  # -1: each frame's head is its `dataset` field
        irreps_in = dict(irreps_in or {})
        irreps_in[AtomicDataDict.DATASET_KEY] = None
        self._init_irreps(
            irreps_in=irreps_in, irreps_out={HEAD_KEY: None, AtomicDataDict.DATASET_KEY: None}
        )

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        batched = AtomicDataDict.BATCH_KEY in data
        if self.fixed >= 0:
            frames = AtomicDataDict.num_frames(data) if batched else 1
            per_frame = torch.full((frames,), self.fixed, dtype=torch.long, device=types.device)
        elif AtomicDataDict.DATASET_KEY in data:
            per_frame = data[AtomicDataDict.DATASET_KEY].view(-1).to(torch.long)
            # not while nequip's compile mode traces the model (symbolic shapes): a check of the
            # values cannot be traced, and the batches it trains on come from mfkit's loader
            traced = isinstance(per_frame.shape[0], torch.SymInt)
            if not traced and bool(((per_frame < 0) | (per_frame >= self.num_heads)).any()):
                raise ValueError(
                    f"a frame's `dataset` (head index) is outside the model's {self.num_heads} "
                    f"head(s): {sorted(set(per_frame.tolist()))}"
                )
        else:
            if self.num_heads != 1:
                raise RuntimeError(
                    "a multi-head model needs the `dataset` field (the head index of each frame)"
                )
            per_frame = torch.zeros(1, dtype=torch.long, device=types.device)
        if batched:
            head = torch.index_select(per_frame, 0, data[AtomicDataDict.BATCH_KEY].view(-1))
        else:
            head = per_frame[:1].expand(types.size(0))
        data[AtomicDataDict.DATASET_KEY] = per_frame.view(-1, 1)
        data[HEAD_KEY] = head
        return data


def energy_readout(
    hidden_layers_depth: int,
    hidden_layers_width: int | None,
    nonlinearity: str | None,
    irreps_in,
) -> ScalarMLP:
    """nequip's per-atom energy readout: an MLP from the node features' scalars, no bias."""
    return ScalarMLP(
        output_dim=1,
        hidden_layers_depth=hidden_layers_depth,
        hidden_layers_width=hidden_layers_width,
        nonlinearity=nonlinearity,
        bias=False,
        forward_weight_init=True,
        field=AtomicDataDict.NODE_FEATURES_KEY,
        out_field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        irreps_in=irreps_in,
    )


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
    readout: bool = True,
) -> SequentialGraphNetwork:
    """One head: nequip's per-atom energy readout and per-type scale/shift, with nequip's names.

    Without ``readout`` the head is the scale/shift alone, of a readout computed elsewhere.
    """
    modules = {}
    if readout:
        modules["per_atom_energy_readout"] = energy_readout(
            readout_hidden_layers_depth,
            readout_hidden_layers_width,
            readout_nonlinearity,
            irreps_in,
        )
        irreps_in = modules["per_atom_energy_readout"].irreps_out
    modules["per_type_energy_scale_shift"] = PerTypeScaleShift(
        type_names=type_names,
        field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        out_field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        scales=scales,
        shifts=shifts,
        scales_trainable=scales_trainable,
        shifts_trainable=shifts_trainable,
        irreps_in=irreps_in,
    )
    return SequentialGraphNetwork(modules)


def delta_order(levels: list[str], bases: dict[str, str]) -> list[int]:
    """Head indices with every base before the heads built on it; ValueError on a bad mapping."""
    for level, base in bases.items():
        if level == base:
            raise ValueError(f"delta head {level} refers to itself")
        for name in (level, base):
            if name not in levels:
                raise ValueError(f"delta {level} -> {base}: {name} is not a head ({levels})")
    order: list[int] = []
    for level in levels:
        chain = [level]
        while chain[-1] in bases:
            chain.append(bases[chain[-1]])
            if chain[-1] in chain[:-1]:
                raise ValueError(f"delta heads form a cycle: {' -> '.join(chain)}")
        for name in reversed(chain):
            if levels.index(name) not in order:
                order.append(levels.index(name))
    return order


def _zero_output_layer(readout: torch.nn.Module) -> None:
    """Set the last weight matrix of a readout MLP to zero: it outputs 0 and still learns (its
    gradient is the hidden features), so a delta head starts as its base alone."""
    last = [p for name, p in readout.named_parameters() if name.endswith("weight")][-1]
    with torch.no_grad():
        last.zero_()


class MultiHeadEnergy(GraphModuleMixin, torch.nn.Module):
    """Per-atom energies from one head per level, each atom through its frame's head.

    Every head reads the shared node features; an atom's energy is taken from its own head, so a
    head gets gradients only from the frames of its level. ``scales`` and ``shifts`` map level id to
    what :class:`~nequip.nn.PerTypeScaleShift` accepts (a number or a dict by type name).

    ``bases`` maps a delta level to its base level: that head's energy is the base head's energy
    (itself a delta head or not) plus its own output, which starts at zero (the last layer of its
    readout is zero-initialised), so a delta level first predicts its base. With ``detach_base``
    (the default) the delta level's frames send no gradient into the base heads' own parameters
    during training (the base head is evaluated with detached readout and scale/shift
    parameters), so high-level labels do not pull the low-level head; positions keep their
    gradient (the delta level's forces are those of base + Δ) and the shared backbone learns from
    every frame. Without it the base heads learn from the delta frames too.

    ``shared_readout``: one readout for every level (a fidelity-embedding model, whose backbone is
    told the level); each level keeps only its per-type scale/shift.
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
        bases: dict[str, str] | None = None,
        detach_base: bool = True,
        shared_readout: bool = False,
        irreps_in=None,
    ):
        super().__init__()
        irreps_in = dict(irreps_in or {})
        irreps_in.setdefault(HEAD_KEY, None)
        self.levels = list(levels)
        self.bases = dict(bases or {})
        if self.bases and shared_readout:
            raise ValueError("delta heads need their own readouts (not a shared readout)")
        self.order = delta_order(self.levels, self.bases)
        self.base_index = [
            self.levels.index(self.bases[level]) if level in self.bases else -1
            for level in self.levels
        ]
        self.detach_base = bool(detach_base)
        self.readout = None
        if shared_readout:
            self.readout = energy_readout(
                readout_hidden_layers_depth,
                readout_hidden_layers_width,
                readout_nonlinearity,
                irreps_in,
            )
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
                    irreps_in if self.readout is None else self.readout.irreps_out,
                    readout=self.readout is None,
                )
                for level in self.levels
            }
        )
        for level in self.bases:
            _zero_output_layer(self.heads[level].per_atom_energy_readout)
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
        """Serve only ``level``: every frame goes through that head, ``dataset`` field or not.

        nequip's ASE calculator and ``nequip-package`` then use the model as a standard one-level
        model. The other heads' modules stay in the model: a delta head needs its bases, and a
        fidelity-embedding model embeds the level by its index in the training order.
        """
        level = str(level)
        found = [m for m in model.modules() if isinstance(m, MultiHeadEnergy)]
        if not found:
            raise ValueError("select_head: not a multi-head mftrain model")
        for module in found:
            if level not in module.levels:
                raise ValueError(
                    f"select_head: no head {level!r}; the model's heads are "
                    f"{', '.join(module.levels)}"
                )
        for module in model.modules():
            if isinstance(module, HeadIndex):
                module.fixed = found[0].levels.index(level)
        return model

    def _own(self, h: int, inputs: AtomicDataDict.Type, detached: bool = False) -> torch.Tensor:
        """Head ``h``'s own per-atom output (its readout and scale/shift, no base)."""
        module = self.heads[self.levels[h]]
        if detached:
            params = {name: p.detach() for name, p in module.named_parameters()}
            out = torch.func.functional_call(module, params, (dict(inputs),))
        else:
            out = module(dict(inputs))
        return out[AtomicDataDict.PER_ATOM_ENERGY_KEY]

    def _detached_total(self, h: int, inputs: AtomicDataDict.Type) -> torch.Tensor:
        """Head ``h``'s energy (with its bases) through parameters cut from the graph."""
        out = self._own(h, inputs, detached=True)
        base = self.base_index[h]
        return out if base < 0 else out + self._detached_total(base, inputs)

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        inputs = {
            AtomicDataDict.NODE_FEATURES_KEY: data[AtomicDataDict.NODE_FEATURES_KEY],
            AtomicDataDict.ATOM_TYPE_KEY: data[AtomicDataDict.ATOM_TYPE_KEY],
        }
        if self.readout is not None:
            inputs = self.readout(inputs)
        totals: dict[int, torch.Tensor] = {}
        for h in self.order:
            total = self._own(h, inputs)
            base = self.base_index[h]
            if base >= 0:
                if self.training and self.detach_base:
                    total = total + self._detached_total(base, inputs)
                else:
                    total = total + totals[base]
            totals[h] = total
        head = data[HEAD_KEY].view(-1, 1)
        energy = totals[0]
        for h in range(1, len(self.levels)):
            energy = torch.where(head == h, totals[h], energy)
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
