import json
import re

import pytest

from mfdata.levels import UnknownLevelError, registry, resolve_level
from mfdata.resources import schema_file
from mfdata.schema import (
    FORMAT_VERSION,
    LEVEL_ID_PATTERN,
    FormatVersionError,
    check_format_version,
    schema_files,
)
from tests.conftest import run_cli

REQUIRED_ALIASES = {
    "wb97x_dz": "wb97x-631gd",
    "wb97x_tz": "wb97x-def2tzvpp",
    "hf_dz": "hf-ccpvdz",
    "hf_tz": "hf-ccpvtz",
    "hf_qz": "hf-ccpvqz",
    "mp2_dz": "mp2-ccpvdz",
    "mp2_tz": "mp2-ccpvtz",
    "mp2_qz": "mp2-ccpvqz",
    "npno_ccsd(t)_dz": "npno-ccsdt-ccpvdz",
    "npno_ccsd(t)_tz": "npno-ccsdt-ccpvtz",
    "tpno_ccsd(t)_dz": "tpno-ccsdt-ccpvdz",
    "ccsd(t)_cbs": "ccsdt-star-cbs",
    "wB97M-D3(BJ)/def2-TZVPPD": "wb97md3bj-def2tzvppd",
    "GFN2-xTB": "gfn2-xtb",
    "PBE/def2-SVP": "pbe-def2svp",
    "PBE+D3/def2-SVP": "pbe-d3-def2svp",
    "PBE+vdW-TS": "pbe-vdwts",
    "CCSD(T)/cc-pVDZ": "ccsdt-ccpvdz",
    "CCSD/cc-pVDZ": "ccsd-ccpvdz",
    "MP2/aug-cc-pVDZ": "mp2-augccpvdz",
    "CCSD(T)/aug-cc-pVDZ": "ccsdt-augccpvdz",
    "MP2/aug-cc-pVTZ": "mp2-augccpvtz",
    "MP2/d-aug-cc-pVDZ": "mp2-daugccpvdz",
    "CCSD/d-aug-cc-pVDZ": "ccsd-daugccpvdz",
    "B3LYP/6-31G(2df,p)": "b3lyp-631g2dfp",
}


@pytest.mark.parametrize(("alias", "level_id"), REQUIRED_ALIASES.items())
def test_aliases_resolve(alias, level_id):
    assert resolve_level(alias).id == level_id
    assert resolve_level(level_id).id == level_id


def test_ids_are_paths_and_module_keys():
    for level_id in registry():
        assert re.match(LEVEL_ID_PATTERN, level_id)


def test_unknown_level_suggests_close_matches():
    with pytest.raises(UnknownLevelError, match="did you mean.*wb97x-631gd"):
        resolve_level("wb97x_dzz")


def test_levels_json_cli():
    levels = json.loads(run_cli("levels", "--json").stdout)
    assert len(levels) >= 25
    for entry in levels:
        assert {"id", "aliases", "name"} <= entry.keys()


def test_schemas_match_models():
    """The JSON Schema files are generated from the pydantic models: regenerate on change."""
    for name, text in schema_files().items():
        on_disk = schema_file(name).read_text(encoding="utf-8")
        assert on_disk == text, f"schemas/{name} is stale: run python -m mfdata.schema"


def test_newer_major_format_is_refused(tmp_path):
    check_format_version(FORMAT_VERSION, tmp_path)
    with pytest.raises(FormatVersionError, match="newer than this mfkit understands"):
        check_format_version("2.0", tmp_path)
