"""``python3 -m tether.server journal --dir D [--have NAME=OFFSET:SHA256 ...]``: a managed run's journal sync.

Prints one JSON document: for every checkpoint journal (``*.journal.jsonl``) in ``D``, the complete lines after
``OFFSET`` (the bytes this machine already has), base64-encoded; the whole journal again (``"from": 0``) when its
first line no longer hashes to ``SHA256`` or it is shorter than ``OFFSET`` (it was rewritten). It adds the shard
files (``*.shard.json``, small) and the names of the final files present, so one round trip tells the controller
everything it syncs::

    {"journals": {"results.journal.jsonl": {"from": 0, "size": 1234, "head": "<sha256>", "data": "<base64>"}},
     "shards": {"results.shard.json": "<base64>"}, "finals": ["results.json"], "exists": true}

Journal bytes only, incremental: a journal is append-only, so the lines after the last sync are all that moves.
Standard library only (Python 3.8).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
from typing import Any

JOURNAL_SUFFIX = ".journal.jsonl"
SHARD_SUFFIX = ".shard.json"


def _have(specs: list[str]) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        offset, _, sha = rest.partition(":")
        try:
            out[name] = (max(0, int(offset)), sha)
        except ValueError:
            continue
    return out


def journal_delta(path: str, offset: int, head_sha: str) -> dict[str, Any]:
    """The complete lines of ``path`` after ``offset`` (or from 0 when its head changed), as a JSON-able dict."""
    with open(path, "rb") as fh:
        first = fh.readline()
        head = hashlib.sha256(first).hexdigest() if first.endswith(b"\n") else ""
        size = os.fstat(fh.fileno()).st_size
        start = offset if (offset and head == head_sha and offset <= size) else 0
        fh.seek(start)
        data = fh.read()
    end = data.rfind(b"\n") + 1  # complete lines only: a line being written is taken on the next sync
    return {"from": start, "size": start + end, "head": head, "data": base64.b64encode(data[:end]).decode("ascii")}


def scan(folder: str, have: dict[str, tuple[int, str]]) -> dict[str, Any]:
    doc: dict[str, Any] = {"journals": {}, "shards": {}, "finals": [], "exists": os.path.isdir(folder)}
    if not doc["exists"]:
        return doc
    names = sorted(os.listdir(folder))
    for name in names:
        path = os.path.join(folder, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue  # never follow a link (the server is a third party's machine)
        try:
            if name.endswith(JOURNAL_SUFFIX):
                offset, sha = have.get(name, (0, ""))
                doc["journals"][name] = journal_delta(path, offset, sha)
            elif name.endswith(SHARD_SUFFIX):
                with open(path, "rb") as fh:
                    doc["shards"][name] = base64.b64encode(fh.read()).decode("ascii")
            elif name.endswith(".json") and not name.startswith(".") and not name.endswith(".progress.json"):
                doc["finals"].append(name)
        except OSError:
            continue  # removed while we looked (finalize removes the journal): the next sync sees the rest
    return doc


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tether.server journal")
    p.add_argument("--dir", required=True, help="the results folder")
    p.add_argument("--have", action="append", default=[], help="NAME=OFFSET:SHA256 of what this machine has")
    args = p.parse_args(argv)
    json.dump(scan(args.dir, _have(args.have)), sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0
