"""A managed run's files on this machine: its folder, each shard's local copies, the controller lock, the
journals synced home, and the results merged into the project."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tether.paths import private_dir, tether_home

# ------------------------------------------------------------------------------------------ paths and locks


def run_dir(run_id: str) -> Path:
    """``$TETHER_HOME/managed/<id>``: the controller's log and each shard's local copies."""
    return tether_home() / "managed" / run_id


def shard_dir(run_id: str, shard: int) -> Path:
    """Where shard ``shard``'s results folder is copied on this machine (same layout as the project: the
    experiment's ``results`` path under it)."""
    return run_dir(run_id) / f"shard-{shard}"


def _lock_path(experiment: str) -> Path:
    return private_dir(tether_home() / "managed") / f"{experiment}.lock"


@contextlib.contextmanager
def controller_lock(experiment: str) -> Iterator[tuple[bool, str]]:
    """Hold the controller lock of ``experiment`` (non-blocking): yields ``(held, holder)``; ``holder`` is what
    the lock file says of the process holding it when ``held`` is False."""
    path = _lock_path(experiment)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            yield False, fh.read().strip()
            return
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}\n")
            fh.flush()
            yield True, ""
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def controller_alive(experiment: str) -> bool:
    """Whether a controller holds ``experiment``'s lock now."""
    with controller_lock(experiment) as (held, _holder):
        return not held


# ------------------------------------------------------------------------------------------ journals at home


def _head_sha(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except OSError:
        return ""
    return hashlib.sha256(first).hexdigest() if first.endswith(b"\n") else ""


def _record_count(path: Path) -> int:
    """Items with a result in a journal copy (``"ok": true`` records, by id)."""
    done: set[Any] = set()
    try:
        with open(path, "rb") as fh:
            fh.readline()
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("ok") is True:
                    done.add(json.dumps(rec.get("id")))
    except OSError:
        return 0
    return len(done)


def apply_sync(local_dir: Path, doc: dict[str, Any]) -> int:
    """Write what ``python3 -m tether.server journal`` sent into the local copies; returns items journaled."""
    local_dir.mkdir(parents=True, exist_ok=True)
    journals = doc.get("journals") if isinstance(doc.get("journals"), dict) else {}
    assert isinstance(journals, dict)
    for name, delta in journals.items():
        if not _plain_name(name) or not isinstance(delta, dict):
            continue
        path = local_dir / name
        data = base64.b64decode(str(delta.get("data") or ""))
        start = int(delta.get("from") or 0)
        if start == 0:
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        elif data:
            with open(path, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    shards = doc.get("shards") if isinstance(doc.get("shards"), dict) else {}
    assert isinstance(shards, dict)
    for name, b64 in shards.items():
        if _plain_name(name):
            (local_dir / name).write_bytes(base64.b64decode(str(b64)))
    return sum(_record_count(p) for p in local_dir.glob("*" + ".journal.jsonl"))


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and not name.startswith(".") and name != ".."


def have_args(local_dir: Path) -> list[str]:
    """``--have NAME=OFFSET:SHA`` for every journal copy here (what the server need not send again)."""
    out: list[str] = []
    for path in sorted(local_dir.glob("*.journal.jsonl")):
        out += ["--have", f"{path.name}={path.stat().st_size}:{_head_sha(path)}"]
    return out


def _place(path: Path, data: bytes, run_id: str) -> None:
    """Write ``data`` at ``path`` atomically; a different file already there is moved aside, never lost."""
    if path.exists():
        if path.read_bytes() == data:
            return
        aside = path.with_name(f"{path.name}.before-{run_id}")
        os.replace(path, aside)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
