"""The one way tether replaces a file: a temporary file in the same folder, then ``os.replace`` over the old one,
so a reader sees the old file or the new one, never a mix.

Standard library only and Python 3.8+: the server side and the checkpoint library import it on servers with a bare
``python3`` (it is one of ``provision.SERVER_PARTS``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


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


def atomic_write(path: str | Path, data: bytes | str, *, durable: bool = True, mode: int | None = None) -> None:
    """Replace ``path`` by ``data`` (a str is written as UTF-8): temp file in the same folder, fsync,
    ``os.replace``, fsync the folder.

    The file is private (0600) unless ``mode`` says otherwise. With ``durable=False`` the fsyncs are skipped, for
    files that are rewritten often or can be rebuilt (a progress file, a listing, a lock's side file).
    """
    import tempfile  # here: it costs ms to import, and most commands that import this module write nothing

    target = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=str(target.parent), prefix="." + target.name + ".", suffix=".tmp")
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            write_all(fd, raw)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, str(target))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(target.parent)


__all__ = ["atomic_write", "fsync_dir", "write_all"]
