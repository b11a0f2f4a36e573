"""Package discovery (the rest of the build is in pyproject.toml).

Every package under ``mfdata/`` and ``mftrain/`` is found, so a new subpackage cannot be left out
of a wheel; ``catalogs/`` and ``schemas/`` sit at the top of the repository and ship as
``mfdata.catalogs`` and ``mfdata.schemas`` (pyproject's package-dir), which discovery cannot find.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mfdata", "mfdata.*", "mftrain", "mftrain.*"])
    + ["mfdata.catalogs", "mfdata.schemas"]
)
