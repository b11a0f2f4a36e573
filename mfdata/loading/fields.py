"""The label fields of a frame, and their presence flags, as nequip field names.

Guarantees: importing this module registers the presence flags with nequip as graph fields, so
every process that builds or collates frames (DataLoader workers included) knows them.
"""

from __future__ import annotations

from nequip.data import AtomicDataDict, register_fields

# label kind -> per-frame flag: True where the frame's level has that label
PRESENT_FIELDS = {
    "energy": "total_energy_present",
    "forces": "forces_present",
    "stress": "stress_present",
}
# label kind -> AtomicDataDict key; the frame's label fields, in this order
LABEL_KEYS = {
    "energy": AtomicDataDict.TOTAL_ENERGY_KEY,
    "forces": AtomicDataDict.FORCE_KEY,
    "stress": AtomicDataDict.STRESS_KEY,
}
register_fields(graph_fields=list(PRESENT_FIELDS.values()))
