"""An ASE calculator for one head of an mftrain checkpoint, without exporting it first.

``MultiFidelityCalculator.from_checkpoint("run/best.ckpt", head="wb97x-631gd")`` loads the
checkpoint's model the way nequip's own calculator loads a saved model (nequip's
``load_saved_model``: EMA weights where trained with EMA), applies the ``select_head`` model
modifier that ``mftrain export`` packages (every frame goes through that head; a delta head gives
base + Δ, a fidelity-embedding model is fixed to that level), and is nequip's
:class:`~nequip.integrations.ase.NequIPCalculator` from there on (same transforms, results and
units: eV, Å). Every mftrain strategy's checkpoints load: single, multihead, delta,
fidelity_embedding and the fine-tuned ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
from nequip.integrations.ase import NequIPCalculator


class MultiFidelityCalculator(NequIPCalculator):
    """nequip's ASE calculator serving one head (level of theory) of an mftrain model.

    Attributes set by :meth:`from_checkpoint`: ``level`` (the head's level id) and
    ``checkpoint`` (the file it came from).
    """

    level: str | None = None
    checkpoint: str | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        head: str,
        device: str | torch.device = "cpu",
        chemical_species_to_atom_type_map: dict[str, str] | bool = True,
        **kwargs,
    ) -> MultiFidelityCalculator:
        """The calculator of head ``head`` (a level id or alias) of checkpoint ``path``.

        Checkpoints are pickle files: loading one runs code from it, so load only checkpoints you
        trust. ``chemical_species_to_atom_type_map`` is nequip's (default: mfkit's type names are
        chemical symbols); other keyword arguments go to ``NequIPCalculator`` (e.g.
        ``energy_units_to_eV``). Raises FileNotFoundError (no such file) and ValueError (a head
        the checkpoint lacks: the message names the checkpoint and its heads).
        """
        from nequip.integrations.utils import basic_transforms, handle_chemical_species_map
        from nequip.model.modify_utils import modify
        from nequip.model.saved_models.load_utils import load_saved_model
        from nequip.nn import graph_model
        from nequip.utils.global_state import set_global_state

        from mftrain.checkpoint import read_checkpoint

        level = read_checkpoint(path).head(head)
        set_global_state()
        model = load_saved_model(str(path))
        modify(model, [{"modifier": "select_head", "level": level}])
        model.eval()
        type_names = model.metadata[graph_model.TYPE_NAMES_KEY].split(" ")
        transforms = basic_transforms(
            model.metadata,
            float(model.metadata[graph_model.R_MAX_KEY]),
            type_names,
            handle_chemical_species_map(chemical_species_to_atom_type_map, type_names),
        )
        calculator = cls(model=model, device=device, transforms=transforms, **kwargs)
        calculator.level = level
        calculator.checkpoint = str(path)
        return calculator
