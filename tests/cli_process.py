"""Run ``mfdata`` and ``mftrain`` in processes of their own, without paying their imports each time.

A test that calls a command line gets a new process that runs the command's ``main()`` with its
arguments, environment and working directory, and hands back its exit status, stdout and stderr
like ``subprocess.run``. The process is forked from multiprocessing's fork server, which imported
the command lines (torch and nequip included) once per test worker: starting ``mftrain`` in a
fresh interpreter takes ~8 s on 2 cores, forking it well under one. Nothing has run in the server
but imports, so each command starts as clean as from a new interpreter. The installed console
scripts are exercised by ``tests/test_architecture.py``'s wheel test; tests that kill or signal a
command (or that need a launcher's environment) still start a new interpreter themselves.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mftrain.studies.runner import FORKSERVER, RUN_MODULES

COMMANDS = ("mfdata.cli", "mftrain.cli")
# The studies' runs fork from the same server (one per process): it preloads what both need.
FORKSERVER.set_forkserver_preload([__name__, *COMMANDS, *RUN_MODULES])


def run_command(
    module: str, args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS...`` in a forked process: its exit status and captured output."""
    if module not in COMMANDS:
        raise ValueError(f"{module}: not one of {COMMANDS}")
    args = [str(a) for a in args]
    with tempfile.TemporaryDirectory(prefix="mfkit-cli-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        process = FORKSERVER.Process(
            target=_main,
            args=(
                module,
                args,
                out,
                err,
                dict(os.environ if env is None else env),
                cwd or Path.cwd(),
            ),
        )
        process.start()
        process.join()
        return subprocess.CompletedProcess(
            [sys.executable, "-m", module, *args],
            process.exitcode,
            out.read_text(encoding="utf-8", errors="replace"),
            err.read_text(encoding="utf-8", errors="replace"),
        )


def _main(
    module: str, args: list[str], out: Path, err: Path, env: dict[str, str], cwd: Path
) -> None:
    """The forked process: the caller's environment and directory, stdout and stderr to files,
    then the command's ``main()`` (its ``SystemExit`` is the exit status)."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        with open(path, "w", encoding="utf-8") as file:
            os.dup2(file.fileno(), fd)
    sys.argv = [module, *args]
    importlib.import_module(module).main()
