"""mftrain: NequIP potentials with one head per level of theory, trained on mfkit stores.

Kept trivial on purpose: nequip imports this package at start-up as an extension.
"""
