"""Example data shipped with mfkit, and :func:`bundled_store`: the multi-level methanol store."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from mfdata.registry import home
from mfdata.resources import example_file
from mfdata.store.manifest import MANIFEST
from mfdata.store.store import Store

BUNDLED = "methanol-store"  # the store directory inside this package


def bundled_store() -> Path:
    """A writable copy of the bundled methanol store (GFN2-xTB, ωB97X, CCSD(T); see README.md).

    Training writes LMDB shards, statistics and splits into a store, and the installed package
    must stay untouched, so the first call copies the store to ``$MFKIT_HOME/examples/`` under a
    name that carries its checksum; later calls return that copy.
    """
    packaged = Path(str(example_file(BUNDLED)))
    checksum = Store(packaged).manifest.checksum
    target = home() / "examples" / f"methanol-{checksum[:16]}"
    if (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.copy-{uuid.uuid4().hex[:8]}"
    shutil.copytree(packaged, tmp, copy_function=shutil.copyfile)
    for directory, _, _ in os.walk(tmp):  # writable even where the package files are not
        os.chmod(directory, 0o755)
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target / MANIFEST).is_file():  # not a copy made meanwhile by another process
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
