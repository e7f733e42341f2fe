"""Small file-system helpers of the checkpoint library: locked publish and UTC times; the atomic replace and the
folder fsync are tether.atomic's."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tether.atomic import fsync_dir, write_all


def utc_iso(t: float | None = None) -> str:
    """``t`` (unix seconds, default now) as an ISO-8601 UTC string, e.g. ``2026-02-11T10:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def publish_locked(path: Path, data: bytes, *, replace: bool, lock: Callable[[int], None]) -> int | None:
    """Put a file holding ``data`` at ``path`` and return an append descriptor on it, locked by ``lock`` before
    the file appears, so no other process can ever lock the new file first.

    With ``replace=False`` an existing ``path`` is kept (a no-replace hard link) and None is returned; with
    ``replace=True`` it is replaced (``os.replace``). Durable: the data and the folder are fsynced.
    """
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix="." + path.name + ".", suffix=".tmp")
    keep: int | None = None
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        keep = os.open(tmp, os.O_RDWR | os.O_APPEND)
        lock(keep)  # a fresh file nobody else has opened: always granted
        if replace:
            os.replace(tmp, str(path))
        else:
            try:
                os.link(tmp, str(path))
            except FileExistsError:
                os.close(keep)
                keep = None
            except OSError:
                # No hard links on this file system: an exclusive create, then the content (a reader that
                # meets it empty treats it as a journal torn at creation).
                os.close(keep)
                keep = None
                try:
                    excl = os.open(str(path), os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return None
                try:
                    lock(excl)
                    write_all(excl, data)
                    os.fsync(excl)
                except BaseException:
                    os.close(excl)
                    raise
                keep = excl
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except BaseException:
        if keep is not None:
            os.close(keep)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if keep is not None:
        fsync_dir(path.parent)
    return keep
