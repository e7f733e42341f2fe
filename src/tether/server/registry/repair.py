"""Repair: rebuild a damaged registry file from the entries still readable in it and from the live processes that
carry an agent's identity in their environment (stdlib only, Python 3.8+).

A process is adopted only when its environment names an agent (``TETHER_AGENT_ID``) *and* this registry
(``TETHER_AGENT_STATUS``, the absolute path :func:`~tether.server.registry.entries.agent_env` gives every admitted
job; a relative one is read against the process's working folder): a process of another registry, or one that
merely has an agent id in its environment or its arguments, is left alone."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from tether.server.procinfo import boot_id, have_proc, proc_stat
from tether.server.registry.entries import (
    ENV_EXPERIMENT,
    ENV_GPU_GB,
    ENV_ID,
    ENV_PATH,
    Entry,
    iso,
    read_gpu_gb,
)
from tether.server.registry.store import Doc, Store


@dataclass
class RepairReport:
    path: str
    kept_aside: str | None
    salvaged: int
    discovered: int
    entries: list[Entry]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kept_aside": self.kept_aside,
            "salvaged": self.salvaged,
            "discovered": self.discovered,
            "entries": [e.to_dict() for e in self.entries],
        }


class SalvageLoad:
    """A loader for :meth:`Store.transaction` that never refuses: a file that is not a JSON list is kept aside and
    the objects still readable in it are salvaged. After the call, ``kept_aside`` and ``salvaged`` tell what
    happened."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.kept_aside: str | None = None
        self.salvaged = 0

    def __call__(self) -> Doc:
        data = self.store.read_bytes()
        items: list[Any]
        try:
            loaded = json.loads(data.decode("utf-8")) if data and data.strip() else []
            ok = isinstance(loaded, list)
        except (UnicodeDecodeError, ValueError):
            ok = False
        if ok:
            items = loaded
        else:
            assert data is not None
            self.kept_aside = self.store.keep_aside(data)
            items = salvage(data.decode("utf-8", "replace"))
            self.salvaged = len(items)
        doc = Doc(items=items, changed=not ok)
        doc.reparse(full=True)
        return doc


def adopt(doc: Doc, processes: list[dict[str, Any]], host: str) -> int:
    """Add a running entry for each tagged process whose agent the file does not hold live; returns how many."""
    known = {(e.id, e.pid) for _, e in doc.live()}
    live_ids = {e.id for _, e in doc.live()}
    discovered = 0
    for proc in processes:
        if proc["id"] in live_ids or (proc["id"], proc["pid"]) in known:
            continue
        doc.append(
            Entry(
                id=proc["id"],
                experiment=proc["experiment"],
                gpu_gb=proc["gpu_gb"],
                status="running",
                started=iso(doc.now),
                pid=proc["pid"],
                pid_start=proc["pid_start"],
                boot_id=boot_id(),
                host=host,
                heartbeat=iso(doc.now),
                gpus=proc["gpus"],
                note="rebuilt by repair from a live process",
            )
        )
        live_ids.add(proc["id"])
        discovered += 1
    return discovered


def salvage(text: str) -> list[Any]:
    """Every JSON object with an ``id`` that can still be read out of a damaged file, in order."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    pos = text.find("{")
    while pos != -1:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except ValueError:
            pos = text.find("{", pos + 1)
            continue
        if isinstance(obj, dict) and "id" in obj:
            found.append(obj)
            pos = text.find("{", end)
        else:
            pos = text.find("{", pos + 1)
    return found


_TAG_KEYS = (
    ENV_ID.encode(),
    ENV_EXPERIMENT.encode(),
    ENV_GPU_GB.encode(),
    ENV_PATH.encode(),
    b"CUDA_VISIBLE_DEVICES",
)


def same_registry(value: str | None, pid: int, mine: str) -> bool:
    """Whether a process's ``TETHER_AGENT_STATUS`` (relative: to its working folder) names the file ``mine``
    (a real path)."""
    if not value:
        return False
    if not os.path.isabs(value):
        try:
            value = os.path.join(os.readlink(f"/proc/{pid}/cwd"), value)
        except OSError:
            return False
    return os.path.realpath(value) == mine


def tagged_processes(path: str) -> list[dict[str, Any]]:
    """Live processes whose environment names a registry agent (``TETHER_AGENT_ID``) of the registry ``path``
    (``TETHER_AGENT_STATUS``), one per agent: the top-most process of each agent's tree."""
    if not have_proc():
        return []
    mine = os.path.realpath(os.path.abspath(path))
    tagged: dict[int, dict[str, Any]] = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        env = {}
        for chunk in raw.split(b"\0"):
            key, sep, value = chunk.partition(b"=")
            if sep and key in _TAG_KEYS:
                env[key.decode()] = value.decode("utf-8", "replace")
        ident = env.get(ENV_ID)
        if not ident or not same_registry(env.get(ENV_PATH), pid, mine):
            continue
        stat = proc_stat(pid)
        if stat is None or stat[1] in ("Z", "X"):
            continue
        gb, _ = read_gpu_gb(_float_or_none(env.get(ENV_GPU_GB)))
        devices = env.get("CUDA_VISIBLE_DEVICES", "")
        gpus = [int(d) for d in devices.split(",") if d.strip().isdigit()]
        tagged[pid] = {
            "id": ident,
            "experiment": env.get(ENV_EXPERIMENT, ""),
            "gpu_gb": gb,
            "pid": pid,
            "pid_start": stat[0],
            "ppid": stat[2],
            "gpus": gpus,
        }
    roots: dict[str, dict[str, Any]] = {}
    for proc in tagged.values():
        parent = tagged.get(proc["ppid"])
        if parent is not None and parent["id"] == proc["id"]:
            continue
        best = roots.get(proc["id"])
        if best is None or proc["pid_start"] < best["pid_start"]:
            roots[proc["id"]] = proc
    return sorted(roots.values(), key=lambda p: (p["pid_start"], p["pid"]))


def _float_or_none(text: str | None) -> float | None:
    """A number from the environment; None (which counts as the whole GPU) when it is missing or not one."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def repair(store: Store) -> RepairReport:
    """Rebuild the file: keep a bad file aside, salvage readable entries, add live tagged processes."""
    loader = SalvageLoad(store)
    with store.transaction(load=loader) as doc:
        discovered = adopt(doc, tagged_processes(store.path), store.host)
        doc.reparse(full=True)
        doc.changed = True  # repair always writes the file it rebuilt
    return RepairReport(
        path=store.path,
        kept_aside=loader.kept_aside,
        salvaged=loader.salvaged,
        discovered=discovered,
        entries=[e for _, e in doc.parsed],
    )
