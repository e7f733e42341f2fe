"""Where tether keeps its own files on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def tether_home() -> Path:
    """The state directory: ``$TETHER_HOME`` if set, else ``~/.local/share/tether``."""
    env = os.environ.get("TETHER_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "tether"


def local_root() -> Path:
    """The ``/workspace`` of this machine: run records, tmux socket name and the local agent registry live here."""
    return tether_home() / "local"
