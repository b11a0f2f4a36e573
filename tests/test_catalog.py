"""The public dataset catalog: every entry validates, filters work, and convert --catalog needs
no further flags on real files of catalogued datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mfdata.catalog import CatalogError, filter_entries, find_entry, load_catalog
from mfdata.levels import registry
from mfdata.readers import FORMATS
from mfdata.resources import catalog_dir, schema_file
from mfdata.schema import UNKNOWN, CatalogEntry
from tests.conftest import run_cli

REQUIRED = [
    "ani-1x",
    "ani-1ccx",
    "ani-2x",
    "spice-1",
    "spice-2",
    "md17",
    "rmd17",
    "md17-ccsdt",
    "md22",
    "qm7-x",
    "qm9",
    "transition1x",
    "3bpa",
    "acac",
    "omol25",
    "multi-fidelity-training-mlff",
]


def _entry_files() -> list[str]:
    return sorted(
        f.name
        for f in catalog_dir().iterdir()
        if f.name.endswith(".yaml") and f.name != "levels.yaml"
    )


@pytest.mark.parametrize("filename", _entry_files())
def test_every_catalog_file_validates(filename):
    """Each file passes the pydantic model (the source of the JSON Schema) and the loader's
    checks: level ids in the registry, a known reader or a format description."""
    data = yaml.safe_load(catalog_dir().joinpath(filename).read_text(encoding="utf-8"))
    entry = CatalogEntry.model_validate(data)
    assert f"{entry.name}.yaml" == filename
    assert set(entry.levels) <= set(registry())
    if entry.reader is None:
        assert entry.format
    else:
        assert entry.reader.format in FORMATS


def test_catalog_has_the_required_datasets():
    catalog = load_catalog()
    assert set(REQUIRED) <= set(catalog)
    for entry in catalog.values():
        assert entry.citation and entry.url and entry.licence


def test_catalog_schema_file_is_generated():
    """The drift test in test_levels_and_schema covers the text; here: the file exists and is
    the catalog entry's schema."""
    schema = json.loads(schema_file("catalog.schema.json").read_text(encoding="utf-8"))
    assert schema["title"] == "CatalogEntry"
    assert {"name", "levels", "reader", "licence", "citation"} <= set(schema["required"])


def test_list_json_has_entries_with_name_and_levels():
    rows = json.loads(run_cli("catalog", "list", "--json").stdout)
    assert len(rows) >= 14
    for row in rows:
        assert row["name"] and row["levels"]


def _names(*args: str) -> set[str]:
    return {row["name"] for row in json.loads(run_cli("catalog", "list", "--json", *args).stdout)}


def test_filter_by_level_alias_finds_ani_1ccx():
    found = _names("--level", "ccsd(t)_cbs")
    assert "ani-1ccx" in found
    assert "ani-1x" not in found and "spice-1" not in found


def test_filter_by_elements_keeps_subsets_only():
    found = _names("--elements", "H,C,N,O")
    assert {"ani-1x", "ani-1ccx", "3bpa", "acac", "md17", "rmd17"} <= found
    assert not found & {"ani-2x", "spice-1", "spice-2", "qm9", "qm7-x"}
    assert "omol25" not in found  # elements unknown: not known to be a subset


def test_filter_by_label_at_level():
    catalog = list(load_catalog().values())
    with_forces = {e.name for e in filter_entries(catalog, level="wb97x-631gd", label="forces")}
    assert {"ani-1x", "ani-2x", "3bpa"} <= with_forces
    cc_forces = {e.name for e in filter_entries(catalog, level="ccsdt-star-cbs", label="forces")}
    assert cc_forces == set()  # CCSD(T)*/CBS has energies only
    assert "qm9" not in _names("--label", "forces")
    assert "qm9" in _names("--label", "energy")


def test_filters_reject_unknown_names():
    bad_level = run_cli("catalog", "list", "--level", "nonsense-level", check=False)
    assert bad_level.returncode == 2 and "unknown level of theory" in bad_level.stderr
    bad_element = run_cli("catalog", "list", "--elements", "H,Xq", check=False)
    assert bad_element.returncode == 2 and "Xq" in bad_element.stderr


def test_show_text_and_json():
    text = run_cli("catalog", "show", "ANI-1ccx").stdout
    assert "ccsdt-star-cbs" in text and "10.1038/s41597-020-0473-z" in text
    entry = json.loads(run_cli("catalog", "show", "acac", "--json").stdout)
    assert entry["levels"]["pbe-d3-def2svp"]["labels"] == {"energy": 2360, "forces": 2300}
    missing = run_cli("catalog", "show", "ani-1xx", check=False)
    assert (
        missing.returncode == 2 and "did you mean" in missing.stderr and "ani-1x" in missing.stderr
    )


def _manifest(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text(encoding="utf-8"))


def test_convert_3bpa_with_catalog_alone(shared, tmp_path):
    out = tmp_path / "bpa"
    run_cli("convert", shared / "botnet_3BPA" / "train_300K.xyz", "--catalog", "3bpa", "--out", out)
    manifest = _manifest(out)
    level = manifest["levels"]["wb97x-631gd"]
    assert list(manifest["levels"]) == ["wb97x-631gd"]
    assert level["labels"]["energy"]["count"] == 500 and level["labels"]["forces"]["count"] == 500
    assert set(level["atom_energies"]) == {"H", "C", "N", "O"}  # iso_atoms.xyz beside the data
    assert manifest["licence"] == "MIT"
    assert "10.1021/acs.jctc.1c00647" in manifest["citation"]


def test_convert_acac_with_catalog_alone(shared, tmp_path):
    out = tmp_path / "acac"
    run_cli("convert", shared / "botnet_acac" / "train_300K.xyz", "--catalog", "acac", "--out", out)
    manifest = _manifest(out)
    assert list(manifest["levels"]) == ["pbe-d3-def2svp"]
    level = manifest["levels"]["pbe-d3-def2svp"]
    assert level["labels"]["forces"]["count"] == 500
    assert set(level["atom_energies"]) == {"H", "C", "O"}
    assert manifest["licence"] == "MIT"


def test_convert_ani_1ccx_with_catalog_alone(shared, tmp_path):
    out = tmp_path / "ani"
    run_cli(
        "convert",
        shared / "modelforge_testdata" / "ani1_n5.hdf5",
        "--catalog",
        "ani-1ccx",
        "--out",
        out,
    )
    manifest = _manifest(out)
    levels = manifest["levels"]
    assert levels["ccsdt-star-cbs"]["labels"]["energy"]["count"] == 6
    assert levels["wb97x-631gd"]["labels"]["forces"]["count"] == 8
    assert set(levels) == set(find_entry("ani-1ccx").levels)
    assert "10.1038/s41467-019-10827-4" in manifest["citation"]
    assert manifest["licence"] is None  # unknown in the catalog: not written as a fact


def test_explicit_flags_override_the_catalog(shared, tmp_path):
    out = tmp_path / "acac_pbe"
    run_cli(
        "convert",
        shared / "botnet_acac" / "train_300K.xyz",
        "--catalog",
        "acac",
        "--level",
        "pbe-def2svp",
        "--licence",
        "CC0-1.0",
        "--out",
        out,
    )
    manifest = _manifest(out)
    assert list(manifest["levels"]) == ["pbe-def2svp"]
    assert manifest["licence"] == "CC0-1.0"


def test_convert_with_a_catalog_entry_that_has_no_reader(shared, tmp_path):
    out = tmp_path / "mf-mlff"
    proc = run_cli(
        "convert",
        shared / "botnet_acac" / "train_300K.xyz",
        "--catalog",
        "multi-fidelity-training-mlff",
        "--out",
        out,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no reader for Multi-fidelity MLFF training set" in proc.stderr
    assert not out.exists()


def _broken_catalog(tmp_path: Path, old: str, new: str) -> Path:
    folder = tmp_path / "catalogs"
    folder.mkdir()
    for name in ("acac.yaml", "3bpa.yaml"):
        text = catalog_dir().joinpath(name).read_text(encoding="utf-8")
        (folder / name).write_text(text, encoding="utf-8")
    text = (folder / "acac.yaml").read_text(encoding="utf-8")
    assert old in text
    (folder / "acac.yaml").write_text(text.replace(old, new), encoding="utf-8")
    return folder


def test_an_invalid_entry_names_the_file_and_the_field(tmp_path):
    folder = _broken_catalog(tmp_path, "size: 2360", "size: about two thousand")
    with pytest.raises(CatalogError, match=r"acac\.yaml: invalid catalog entry: size: "):
        load_catalog(folder)


def test_an_unknown_level_id_names_the_file_and_the_field(tmp_path):
    folder = _broken_catalog(tmp_path, "  pbe-d3-def2svp:\n", "  ani-1x:\n")
    with pytest.raises(CatalogError, match=r"acac\.yaml: levels\.ani-1x: .*wb97x-631gd"):
        load_catalog(folder)


def test_a_reader_without_a_format_name_is_refused(tmp_path):
    folder = _broken_catalog(tmp_path, "  format: extxyz\n", "  format: xyz\n")
    with pytest.raises(CatalogError, match=r"acac\.yaml: reader\.format: 'xyz' is not a reader"):
        load_catalog(folder)


def test_a_valid_directory_loads(tmp_path):
    folder = _broken_catalog(tmp_path, "licence: MIT", "licence: MIT")
    assert list(load_catalog(folder)) == ["3bpa", "acac"]
    assert load_catalog(folder)["acac"].size == 2360
    assert load_catalog(folder)["3bpa"].size == UNKNOWN
