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
from typing import Any, Tuple

from tether import vocab
from tether.atomic import atomic_write
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


def _mtime(path: str) -> float | None:
    try:
        return os.path.getmtime(path)
    except OSError:
        return None


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
                pid = doc.get("pid")
                found[name] = {
                    "_mtime": _mtime(path),
                    "_pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
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
        mtime = _mtime(path)
        failed = doc.get("failed", 0)
        found[name] = {
            "_mtime": mtime,
            "_pid": None,
            "name": name,
            "source": "runbook_partial" if partial else "final",
            "completed": doc.get("completed"),
            "failed": failed if isinstance(failed, int) and not isinstance(failed, bool) and failed >= 0 else 0,
            "total": doc.get("total"),
            "rate_per_s": None,
            "eta_s": None,
            "updated": mtime,
            "finished": not partial,
        }
    return list(found.values())


def _alive(pid: int | None, start: int | None, boot: str) -> bool:
    return pid is not None and procinfo.is_alive(pid, start, boot)


Window = Tuple[float, float]


def _read(root: str, run_id: str) -> vocab.RunRecordFile | dict[str, Any] | None:
    """A run's record; its broken entry when run.json is not a record; None when there is no run.json yet."""
    path = vocab.run_record_path(root, run_id)
    if not os.path.exists(path):
        return None
    raw = _load(path)
    try:
        return vocab.RunRecordFile.from_json(raw, run_id)
    except ValueError as exc:
        problem = "run.json is not valid JSON" if raw is None else str(exc)
        return vocab.RunInfo(id=run_id, experiment=None, status=vocab.BROKEN, problem=problem).to_json()


def _liveness(record: vocab.RunRecordFile) -> tuple[str, bool, bool]:
    """(status as seen now, wrapper alive, experiment alive): a live record whose processes are gone is dead."""
    status = record.status
    wrapper = experiment = False
    if vocab.is_live(status):
        wrapper = _alive(record.pid, record.pid_start, record.boot_id)
        experiment = _alive(record.child_pid, record.child_start, record.boot_id)
        if not wrapper and not experiment:
            status = vocab.DEAD
    return status, wrapper, experiment


def windows(records: list[vocab.RunRecordFile]) -> dict[str, Window]:
    """When each run could have written into its results folder: from its start to its end; a run that is not
    alive and recorded no end, until the next run of that folder started. Runs of one experiment share a folder."""
    out: dict[str, Window] = {}
    folders: dict[str, list[vocab.RunRecordFile]] = {}
    for rec in records:
        folders.setdefault(rec.results_dir or "", []).append(rec)
    for group in folders.values():
        group.sort(key=lambda r: r.started or 0.0)
        for i, rec in enumerate(group):
            start = rec.started or 0.0
            if rec.ended is not None:
                end = rec.ended
            elif vocab.is_live(_liveness(rec)[0]):
                end = float("inf")
            else:
                later = [r.started for r in group[i + 1 :] if r.started is not None]
                end = later[0] if later else float("inf")
            out[rec.id] = (start, max(start, end))
    return out


def owned(
    record: vocab.RunRecordFile,
    checkpoints: list[dict[str, Any]],
    folder_runs: list[vocab.RunRecordFile],
    spans: dict[str, Window],
) -> list[dict[str, Any]]:
    """The checkpoints of a shared results folder that ``record``'s run wrote: a progress file by the experiment's
    pid (while that run could write), anything else by time: the latest run of the folder that could write then."""
    out = []
    for c in checkpoints:
        when = c.get("_mtime")
        if not isinstance(when, (int, float)):
            continue
        could = [r for r in folder_runs if spans[r.id][0] <= when <= spans[r.id][1]]
        by_pid = [r for r in could if c.get("_pid") is not None and r.child_pid == c.get("_pid")]
        chosen = by_pid or could[-1:]
        if chosen and chosen[0].id == record.id:
            out.append({k: v for k, v in c.items() if not k.startswith("_")})
    return out


def counts(checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's counts from its own checkpoints: completed, failed, total and failed by kind."""
    totals = [c["total"] for c in checkpoints if isinstance(c.get("total"), int)]
    failed_by: dict[str, int] = {}
    for c in checkpoints:
        for kind, n in c.get("failed_by", {}).items():
            failed_by[kind] = failed_by.get(kind, 0) + n
    return {
        "completed": sum(int(c["completed"] or 0) for c in checkpoints if isinstance(c.get("completed"), int)),
        "failed": sum(int(c.get("failed") or 0) for c in checkpoints if isinstance(c.get("failed"), int)),
        "total": sum(totals) if totals else None,
        "failed_by": failed_by,
    }


def run_counts(root: str, record: vocab.RunRecordFile) -> dict[str, Any]:
    """What the run wrapper freezes into run.json when its run ends: the counts of the checkpoints it wrote."""
    others = [r for r in (_read(root, i) for i in _run_ids(root)) if isinstance(r, vocab.RunRecordFile)]
    folder_runs = [r for r in others if r.results_dir == record.results_dir and r.id != record.id] + [record]
    folder_runs.sort(key=lambda r: r.started or 0.0)
    spans = windows(folder_runs)
    return counts(owned(record, scan_results(record.results_dir or ""), folder_runs, spans))


def freeze_killed(root: str, results_dir: str, starting: str) -> list[str]:
    """Before run ``starting`` writes into ``results_dir``: every other run of that folder that was killed (no
    process left, no end recorded) gets its counts frozen into its run.json now, while its checkpoints are still
    its own. Returns the ids frozen."""
    frozen = []
    for run_id in _run_ids(root):
        if run_id == starting:
            continue
        rec = _read(root, run_id)
        if not isinstance(rec, vocab.RunRecordFile) or rec.results_dir != results_dir or rec.counts is not None:
            continue
        if rec.ended is not None or _liveness(rec)[0] != vocab.DEAD:
            continue
        path = vocab.run_record_path(root, run_id)
        raw = _load(path)
        if not isinstance(raw, dict):
            continue
        raw["counts"] = run_counts(root, rec)
        atomic_write(path, json.dumps(raw, indent=2) + "\n")
        frozen.append(run_id)
    return frozen


def _entry(
    record: vocab.RunRecordFile,
    folder_runs: list[vocab.RunRecordFile],
    spans: dict[str, Window],
    checkpoints: list[dict[str, Any]],
    tail_lines: int,
) -> dict[str, Any]:
    status, wrapper, experiment = _liveness(record)
    mine = owned(record, checkpoints, folder_runs, spans)
    got = counts(mine)
    frozen = record.counts if vocab.is_final(status) and record.counts is not None else None
    if frozen is not None:
        got = frozen
    failed_by = got.get("failed_by") if isinstance(got.get("failed_by"), dict) else {}
    live = vocab.is_live(status)
    return vocab.RunInfo(
        id=record.id,
        experiment=record.experiment,
        status=status,
        alive=wrapper or experiment,
        exit_code=record.exit_code,
        started=record.started,
        ended=record.ended,
        log=record.log,
        results_dir=record.results_dir,
        completed=got["completed"] if isinstance(got.get("completed"), int) else 0,
        failed=got["failed"] if isinstance(got.get("failed"), int) else 0,
        total=got["total"] if isinstance(got.get("total"), int) else None,
        rate_per_s=(sum(c["rate_per_s"] for c in mine if _is_num(c.get("rate_per_s"))) or None) if live else None,
        eta_s=max((c["eta_s"] for c in mine if _is_num(c.get("eta_s"))), default=None) if live else None,
        checkpoints=mine,
        log_tail=tail(record.log, tail_lines) if status in vocab.TROUBLE_STATUSES and record.log else None,
        failed_by=dict(failed_by or {}),
        wrapper_alive=wrapper if live else None,
        announced_by=record.announced_by if vocab.is_final(status) else None,
    ).to_json()


def _run_ids(root: str) -> list[str]:
    try:
        return sorted(os.listdir(vocab.runs_dir(root)))
    except OSError:
        return []


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def scan(root: str, tail_lines: int = 20) -> dict[str, Any]:
    """Every run under ``root`` with its progress. Runs that share a results folder each get only the checkpoints
    they wrote (:func:`owned`); an ended run whose wrapper froze its counts into run.json reports those."""
    found = [(run_id, _read(root, run_id)) for run_id in _run_ids(root)]
    records = [r for _i, r in found if isinstance(r, vocab.RunRecordFile)]
    spans = windows(records)
    folders: dict[str, list[vocab.RunRecordFile]] = {}
    for rec in sorted(records, key=lambda r: r.started or 0.0):
        folders.setdefault(rec.results_dir or "", []).append(rec)
    contents = {folder: scan_results(folder) for folder in folders}
    runs: list[dict[str, Any]] = []
    for _run_id, entry in found:
        if isinstance(entry, vocab.RunRecordFile):
            folder = entry.results_dir or ""
            runs.append(_entry(entry, folders[folder], spans, contents[folder], tail_lines))
        elif entry is not None:
            runs.append(entry)
    return {"host": os.uname().nodename, "time": time.time(), "attributed": True, "runs": runs}


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
