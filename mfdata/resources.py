"""Paths of the data that ships with the package: catalogs, schemas and the example dataset.

In a wheel, ``catalogs/`` and ``schemas/`` are packed inside ``mfdata/`` (pyproject's package-dir);
in a source checkout or an editable install they sit beside it, at the top of the repository.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path


def _data_dir(name: str) -> Traversable:
    packaged = files("mfdata").joinpath(name)
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / name


def catalog_file(name: str) -> Traversable:
    return _data_dir("catalogs").joinpath(name)


def catalog_dir() -> Traversable:
    return _data_dir("catalogs")


def schema_file(name: str) -> Traversable:
    return _data_dir("schemas").joinpath(name)


def example_file(name: str) -> Traversable:
    return files("mfdata.examples").joinpath(name)
