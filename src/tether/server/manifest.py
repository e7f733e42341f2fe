"""``python3 -m tether.server manifest --base DIR PATH...``: path, size, mtime and sha256 of every file.

Prints ``{"files": {"<relative path>": [size, mtime, sha256], ...}}`` for the files under each PATH (relative to
``--base``). A pull compares this with the local copy to prove the results came home whole.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

SKIP_DIRS = {".tether-partial", "__pycache__"}


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


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tether.server manifest")
    p.add_argument("--base", required=True)
    p.add_argument("paths", nargs="*")
    args = p.parse_args(argv)
    print(json.dumps({"files": build(args.base, args.paths or ["."])}))
    return 0
