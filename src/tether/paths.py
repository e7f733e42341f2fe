"""Where tether keeps its own files on this machine, and keeping them private.

``$TETHER_HOME`` is made 0700 and the files in it that may say something about you (``state.db`` and its
``-wal``/``-shm`` files, known_hosts files) 0600; a looser mode found on an existing one is tightened when tether
opens it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def tether_home() -> Path:
    """The state directory: ``$TETHER_HOME`` if set, else ``~/.local/share/tether``."""
    env = os.environ.get("TETHER_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "tether"


def local_root() -> Path:
    """The ``/workspace`` of this machine: run records, tmux socket name and the local agent registry live here."""
    return tether_home() / "local"


def _tighten(path: Path, mode: int) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
        return  # never chmod through a link, nor someone else's file
    if stat.S_IMODE(st.st_mode) & ~mode:
        path.chmod(stat.S_IMODE(st.st_mode) & mode)


def private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) a folder only its owner can enter: 0700, tightened if looser."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    _tighten(path, PRIVATE_DIR)
    return path


def private_file(path: Path, *, create: bool = True) -> Path:
    """Make ``path`` a file only its owner can read: created empty with 0600 (``create``), tightened if looser."""
    if create:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
    if path.exists() or path.is_symlink():
        _tighten(path, PRIVATE_FILE)
    return path


def private_home() -> Path:
    """``$TETHER_HOME``, created (or tightened) 0700."""
    return private_dir(tether_home())
