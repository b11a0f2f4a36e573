"""The shape of the code: no import cycles (imports inside functions count too), mfdata never
imports mftrain, and a wheel built from the tree installs and runs in a fresh virtual env."""

from __future__ import annotations

import ast
import graphlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mfdata", "mftrain")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path) -> set[str]:
    """Every module name an import statement anywhere in the file names (absolute)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 packages
                package = module.split(".")
                if path.name != "__init__.py":
                    package.pop()
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a package's own submodules excluded, since
    importing them runs the package's ``__init__`` first by design)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        targets = {resolve(name) for name in _imported(module, path)}
        graph[module] = {
            t
            for t in targets
            if t and t != module and t not in PACKAGES and not module.startswith(f"{t}.")
        }
    return graph


def test_no_import_cycles():
    sorter = graphlib.TopologicalSorter(import_graph())
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_graph_sees_imports_inside_functions(tmp_path):
    """The walker is not blind to the function-level imports that once hid cycles."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from mfdata.store import store\n    import mftrain.nn\n")
    assert {"mfdata.store", "mfdata.store.store", "mftrain.nn"} <= _imported("mfdata.x", source)


def test_mfdata_never_imports_mftrain():
    offenders = {
        module: sorted(t for t in targets if t.startswith("mftrain"))
        for module, targets in import_graph().items()
        if module.startswith("mfdata")
    }
    assert not {m: t for m, t in offenders.items() if t}


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    """A non-editable install has every subpackage and the data (catalogs, schemas, examples):
    the wheel is built from the tree, installed without dependencies into a new venv that sees
    this environment's packages (torch, nequip...) only behind its own site-packages, and its
    ``mfdata demo`` and ``mftrain --help`` run from outside the checkout."""
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("mfkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in _modules().values():
        assert module.relative_to(ROOT).as_posix() in names, f"{module} missing from the wheel"
    assert "mfdata/catalogs/levels.yaml" in names and "mfdata/schemas/" in "".join(names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    outer = [p for p in sys.path if p.endswith("site-packages")]
    (site / "outer_env.pth").write_text("\n".join(outer) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    subprocess.run([*install, "install", "-q", "--no-deps", str(wheel)], check=True)

    env = {**os.environ, "MFKIT_HOME": str(tmp_path / "home")}
    env.pop("PYTHONPATH", None)
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import mfdata, mftrain; print(mfdata.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(site)), where.stdout
    demo = subprocess.run(
        [venv / "bin" / "mfdata", "demo"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert demo.returncode == 0, demo.stderr
    assert "6-31G(d) energies (eV)" in demo.stdout, demo.stdout
    helped = subprocess.run(
        [venv / "bin" / "mftrain", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert helped.returncode == 0, helped.stderr
    assert "fit" in helped.stdout and "study" in helped.stdout
