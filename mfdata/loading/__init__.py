"""Feeding nequip: torch datasets over stores, one sample per (structure, level) label set.

One module per job, imported in this order (each imports only those before it):
``fields`` (the frame keys), ``sources`` (where a store is read from), ``samples`` (the sample
table and frame finish both readers share), ``batches`` (a batch as one buffer),
``lmdb_dataset`` and ``zarr_dataset`` (the two readers), ``datamodule`` (nequip's DataModule and
the DataLoader). ``mfdata.loader`` and ``mfdata.zarr_loader`` re-export the names that saved
nequip configs name.
"""
