"""``python3 -m tether.server manifest --base DIR [--unless-digest D] PATH...``: what result files a server holds.

Prints ``{"digest": D, "files": {"<relative path>": [size, mtime, sha256], ...}, "links": {"<path>": "<target>"}}``
for the regular files under each PATH (relative to ``--base``). A pull compares this with the local copy to prove the
results came home whole. ``digest`` is a sha256 over the sorted (path, size, sha256) triples; with
``--unless-digest D`` and nothing changed, only ``{"digest": D, "unchanged": true, "links": {...}}`` is printed, so
checking an unchanged tree of 10,000 files moves a few bytes.

Symbolic links are never followed: a link (to a file or a folder, inside PATH or on the way to it) is reported under
``links`` with its target and nothing behind it is read or hashed, so a link cannot make the manifest (or a pull)
reach outside the results folders. Other things that are not regular files (FIFOs, sockets, devices) are skipped.
A file name that is not UTF-8 is carried as Python's ``surrogateescape`` string (``\\udcXX`` in the JSON), which
names the same bytes on the other side.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import stat
from typing import Any

from tether.vocab import ManifestFiles as Files

SKIP_DIRS = {".rsync-partial", "__pycache__"}
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def sha256_file(path: str) -> str:
    """The sha256 of the regular file at ``path``; OSError if it is a link, a FIFO or anything else."""
    fd = os.open(path, _OPEN_FLAGS)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def link_on_the_way(base: str, rel: str) -> str | None:
    """The first part of ``rel`` (``a``, ``a/b``, ...) that is a symbolic link under ``base``, or None."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if os.path.islink(os.path.join(base, prefix)):
            return prefix
    return None


def build_with_links(base: str, paths: list[str]) -> tuple[Files, dict[str, str]]:
    """The regular files under ``paths`` (relative to ``base``) and the links met there, never following one."""
    files: Files = {}
    links: dict[str, str] = {}

    def add(full: str) -> None:
        rel = os.path.relpath(full, base)
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                links[rel] = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                files[rel] = (st.st_size, st.st_mtime, sha256_file(full))
        except OSError:
            return  # gone while we looked, or replaced by something that is not a regular file

    for rel in paths:
        link = link_on_the_way(base, rel)
        if link is not None:
            add(os.path.join(base, link))
            continue
        top = os.path.join(base, rel)
        if not os.path.isdir(top):
            add(top)
            continue
        for folder, dirs, names in os.walk(top, followlinks=False):
            kept = []
            for d in sorted(dirs):
                if os.path.islink(os.path.join(folder, d)):
                    add(os.path.join(folder, d))
                elif d not in SKIP_DIRS:
                    kept.append(d)
            dirs[:] = kept
            for name in sorted(names):
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                add(os.path.join(folder, name))
    return files, links


def build(base: str, paths: list[str]) -> Files:
    """The regular files under ``paths`` (relative to ``base``): path -> (size, mtime, sha256)."""
    return build_with_links(base, paths)[0]


def digest_of(files: dict[str, Any]) -> str:
    """The manifest's digest: independent of mtimes (a copy has other mtimes but the same content)."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        size, _mtime, sha = files[rel][:3]
        digest.update(f"{rel}\0{size}\0{sha}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tether.server manifest")
    p.add_argument("--base", required=True)
    p.add_argument("--unless-digest", default=None)
    p.add_argument("paths", nargs="*")
    args = p.parse_args(argv)
    files, links = build_with_links(args.base, args.paths or ["."])
    digest = digest_of(files)
    if args.unless_digest == digest:
        print(json.dumps({"digest": digest, "unchanged": True, "links": links}))
    else:
        print(json.dumps({"digest": digest, "files": files, "links": links}))
    return 0
