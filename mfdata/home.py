"""Where mfkit keeps a user's own files: ``$MFKIT_HOME`` (default ``$XDG_DATA_HOME/mfkit``, else
``~/.local/share/mfkit``): the store registry (``stores.json``) and the user's levels of theory
(``levels.yaml``). Its own module because both the level registry and the store registry need it,
and the store registry imports the stores, which import the levels."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    if "MFKIT_HOME" in os.environ:
        return Path(os.environ["MFKIT_HOME"])
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "mfkit"
