"""Small file-system helpers of the checkpoint library: atomic replace, folder fsync, UTC timestamps."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path


def utc_iso(t: float | None = None) -> str:
    """``t`` (unix seconds, default now) as an ISO-8601 UTC string, e.g. ``2026-02-11T10:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return  # Windows cannot open a folder; renames there are durable without it
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself already happened
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written (a regular file may take a short write)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` by ``data``: temp file in the same folder, fsync, ``os.replace``, fsync the folder.

    A reader sees either the old file or the new one, never a mix. With ``durable=False`` the fsyncs are
    skipped (for files that are rewritten often and can be rebuilt, like the progress file).
    """
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix="." + path.name + ".", suffix=".tmp")
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, str(path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
