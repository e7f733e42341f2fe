"""``python3 -m tether.server manifest --base DIR [--unless-digest D] PATH...``: what result files a server holds.

Prints ``{"digest": D, "files": {"<relative path>": [size, mtime, sha256], ...}}`` for the files under each PATH
(relative to ``--base``). A pull compares this with the local copy to prove the results came home whole. ``digest``
is a sha256 over the sorted (path, size, sha256) triples; with ``--unless-digest D`` and nothing changed, only
``{"digest": D, "unchanged": true}`` is printed, so checking an unchanged tree of 10,000 files moves a few bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from typing import Any

SKIP_DIRS = {".rsync-partial", "__pycache__"}


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build(base: str, paths: list[str]) -> dict[str, tuple[int, float, str]]:
    files: dict[str, tuple[int, float, str]] = {}
    for rel in paths:
        top = os.path.join(base, rel)
        if os.path.isfile(top):
            st = os.stat(top)
            files[os.path.relpath(top, base)] = (st.st_size, st.st_mtime, sha256_file(top))
            continue
        for folder, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            for name in sorted(names):
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                full = os.path.join(folder, name)
                try:
                    st = os.stat(full)
                    files[os.path.relpath(full, base)] = (st.st_size, st.st_mtime, sha256_file(full))
                except OSError:
                    continue
    return files


def digest_of(files: dict[str, Any]) -> str:
    """The manifest's digest: independent of mtimes (a copy has other mtimes but the same content)."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        size, _mtime, sha = files[rel][:3]
        digest.update(f"{rel}\0{size}\0{sha}\n".encode())
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tether.server manifest")
    p.add_argument("--base", required=True)
    p.add_argument("--unless-digest", default=None)
    p.add_argument("paths", nargs="*")
    args = p.parse_args(argv)
    files = build(args.base, args.paths or ["."])
    digest = digest_of(files)
    if args.unless_digest == digest:
        print(json.dumps({"digest": digest, "unchanged": True}))
    else:
        print(json.dumps({"digest": digest, "files": files}))
    return 0
