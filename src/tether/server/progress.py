"""The one-round-trip progress scan: ``python3 -m tether.server progress --root R [--tail N]``.

Prints one JSON document: ``{"host", "time", "runs": [...]}``. Each run comes from
``<root>/.tether/runs/<id>/run.json`` and carries its status (``running``, ``completed``, ``failed``, ``cancelled``,
``refused``, or ``dead`` when run.json says running but the wrapper process is gone), and the checkpoints found in its
results folder:

- ``<name>.progress.json`` written by ``tether.checkpoint`` (completed, failed, total, rate, ETA);
- a finished ``<name>.json`` in the runbook's shape ``{"completed", "total", "results"}``;
- a runbook ``*partial*.json`` written by experiment code that checkpoints by hand.

Failed and dead runs also carry the last lines of their log. A run whose wrapper was killed while its experiment
still computes stays ``running`` (``wrapper_alive: false``). A ``run.json`` that is not a run record (wrong types,
unknown status) makes that run ``broken`` with the reason in ``problem``; the other runs are reported as usual.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from tether import vocab
from tether.server import procinfo


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
                failed_by = doc.get("failed_by")
                if isinstance(failed_by, dict):
                    found[name]["failed_by"] = {str(k): v for k, v in failed_by.items() if isinstance(v, int)}
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


def _alive(pid: int | None, start: int | None, boot: str) -> bool:
    return pid is not None and procinfo.is_alive(pid, start, boot)


def scan_run(root: str, run_id: str, tail_lines: int) -> dict[str, Any] | None:
    """One run's entry, or None when its folder has no record at all (a run being created)."""
    path = vocab.run_record_path(root, run_id)
    if not os.path.exists(path):
        return None
    raw = _load(path)
    try:
        record = vocab.RunRecordFile.from_json(raw, run_id)
    except ValueError as exc:
        problem = "run.json is not valid JSON" if raw is None else str(exc)
        return vocab.RunInfo(id=run_id, experiment=None, status=vocab.BROKEN, problem=problem).to_json()
    status = record.status
    wrapper = experiment = False
    if vocab.is_live(status):
        wrapper = _alive(record.pid, record.pid_start, record.boot_id)
        experiment = _alive(record.child_pid, record.child_start, record.boot_id)
        if not wrapper and not experiment:
            status = vocab.DEAD
    alive = wrapper or experiment
    checkpoints = scan_results(record.results_dir or "")
    completed = sum(int(c["completed"] or 0) for c in checkpoints if isinstance(c.get("completed"), int))
    totals = [c["total"] for c in checkpoints if isinstance(c.get("total"), int)]
    failed_by: dict[str, int] = {}
    for c in checkpoints:
        for kind, n in c.get("failed_by", {}).items():
            failed_by[kind] = failed_by.get(kind, 0) + n
    out = vocab.RunInfo(
        id=record.id,
        experiment=record.experiment,
        status=status,
        alive=alive,
        exit_code=record.exit_code,
        started=record.started,
        ended=record.ended,
        log=record.log,
        results_dir=record.results_dir,
        completed=completed,
        failed=sum(int(c.get("failed") or 0) for c in checkpoints if isinstance(c.get("failed"), int)),
        total=sum(totals) if totals else None,
        rate_per_s=sum(c["rate_per_s"] for c in checkpoints if _is_num(c.get("rate_per_s"))) or None,
        eta_s=max((c["eta_s"] for c in checkpoints if _is_num(c.get("eta_s"))), default=None),
        checkpoints=checkpoints,
        log_tail=tail(record.log, tail_lines) if status in vocab.TROUBLE_STATUSES and record.log else None,
        failed_by=failed_by,
        wrapper_alive=wrapper if vocab.is_live(status) else None,
        announced_by=record.announced_by if vocab.is_final(status) else None,
    ).to_json()
    return out


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def scan(root: str, tail_lines: int = 20) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    try:
        ids = sorted(os.listdir(vocab.runs_dir(root)))
    except OSError:
        ids = []
    for run_id in ids:
        entry = scan_run(root, run_id, tail_lines)
        if entry is not None:
            runs.append(entry)
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
