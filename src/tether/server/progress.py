"""The one-round-trip progress scan: ``python3 -m tether.server progress --root R [--tail N]``.

Prints one JSON document: ``{"host", "time", "runs": [...]}``. Each run comes from
``<root>/.tether/runs/<id>/run.json`` and carries its status (``running``, ``completed``, ``failed``, ``cancelled``,
``refused``, or ``dead`` when run.json says running but the wrapper process is gone), and the checkpoints found in its
results folder:

- ``<name>.progress.json`` written by ``tether.checkpoint`` (completed, failed, total, rate, ETA);
- a finished ``<name>.json`` in the runbook's shape ``{"completed", "total", "results"}``;
- a runbook ``*partial*.json`` written by experiment code that checkpoints by hand.

Failed and dead runs also carry the last lines of their log.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from tether.server import procinfo

#: Where the run wrapper keeps run records, under the workspace root (kept here so the scan imports little).
RUNS_DIR = ".tether/runs"


def _load(path: str) -> Any | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def tail(path: str, lines: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def scan_results(folder: str) -> list[dict[str, Any]]:
    """Checkpoints in one results folder, newest information first per name."""
    found: dict[str, dict[str, Any]] = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    for fname in names:
        path = os.path.join(folder, fname)
        if fname.endswith(".progress.json"):
            doc = _load(path)
            if isinstance(doc, dict):
                name = fname[: -len(".progress.json")]
                found[name] = {
                    "name": name,
                    "source": "progress",
                    "completed": doc.get("completed"),
                    "failed": doc.get("failed", 0),
                    "total": doc.get("total"),
                    "rate_per_s": doc.get("rate_per_s"),
                    "eta_s": doc.get("eta_s"),
                    "updated": doc.get("updated"),
                    "finished": bool(doc.get("finished")),
                }
    for fname in names:
        if not fname.endswith(".json") or fname.endswith(".progress.json") or fname.startswith("."):
            continue
        path = os.path.join(folder, fname)
        name = fname[: -len(".json")]
        partial = "partial" in name
        if name in found and not partial:
            continue
        doc = _load(path)
        if not isinstance(doc, dict) or "completed" not in doc:
            continue
        try:
            mtime = os.path.getmtime(path)
        except OSError:
            mtime = None
        found[name] = {
            "name": name,
            "source": "runbook_partial" if partial else "final",
            "completed": doc.get("completed"),
            "failed": 0,
            "total": doc.get("total"),
            "rate_per_s": None,
            "eta_s": None,
            "updated": mtime,
            "finished": not partial,
        }
    return list(found.values())


def scan(root: str, tail_lines: int = 20) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    runs_dir = os.path.join(root, RUNS_DIR)
    try:
        ids = sorted(os.listdir(runs_dir))
    except OSError:
        ids = []
    for run_id in ids:
        record = _load(os.path.join(runs_dir, run_id, "run.json"))
        if not isinstance(record, dict):
            continue
        status = record.get("status", "unknown")
        alive = False
        if status in ("starting", "running"):
            alive = procinfo.is_alive(int(record.get("pid", 0)), record.get("pid_start"), record.get("boot_id", ""))
            if not alive:
                status = "dead"
        checkpoints = scan_results(str(record.get("results_dir", "")))
        completed = sum(int(c["completed"] or 0) for c in checkpoints)
        totals = [c["total"] for c in checkpoints if isinstance(c.get("total"), int)]
        out = {
            "id": record.get("id", run_id),
            "experiment": record.get("experiment"),
            "status": status,
            "alive": alive,
            "exit_code": record.get("exit_code"),
            "started": record.get("started"),
            "ended": record.get("ended"),
            "log": record.get("log"),
            "results_dir": record.get("results_dir"),
            "completed": completed,
            "failed": sum(int(c.get("failed") or 0) for c in checkpoints),
            "total": sum(totals) if totals else None,
            "rate_per_s": sum(c["rate_per_s"] or 0 for c in checkpoints if c["source"] == "progress") or None,
            "eta_s": max((c["eta_s"] for c in checkpoints if c.get("eta_s") is not None), default=None),
            "checkpoints": checkpoints,
        }
        if status in ("failed", "dead", "refused") and record.get("log"):
            out["log_tail"] = tail(str(record["log"]), tail_lines)
        runs.append(out)
    return {"host": os.uname().nodename, "time": time.time(), "runs": runs}


def main(argv: list[str]) -> int:
    """``progress --root R [--tail N]`` (a hand-made parse: argparse alone would double the import time)."""
    root, tail_lines = None, 20
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag in ("--root", "--tail") and args:
            value = args.pop(0)
            if flag == "--root":
                root = value
            elif value.isdigit():
                tail_lines = int(value)
            else:
                print("tether.server progress: --tail takes a number", file=sys.stderr)
                return 2
        else:
            print("usage: python3 -m tether.server progress --root DIR [--tail N]", file=sys.stderr)
            return 2
    if root is None:
        print("usage: python3 -m tether.server progress --root DIR [--tail N]", file=sys.stderr)
        return 2
    print(json.dumps(scan(root, tail_lines)))
    return 0
