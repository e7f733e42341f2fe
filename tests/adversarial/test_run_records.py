"""Run records tell the truth off the happy path: a SIGKILLed wrapper does not make a computing run `dead` (and
cancel still reaches it), a run whose wrapper never started is recorded failed with why, and a damaged run.json
on a server makes only that run `broken`."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.helpers import tether, tether_json, wait_for, wait_status, write_project
from tether import config, runs
from tether.context import Ctx
from tether.errors import CommandFailed
from tether.hosts import local_target
from tether.paths import local_root
from tether.server import procinfo
from tether.state import open_state


def _record(run_id: str) -> dict[str, object]:
    return dict(json.loads((local_root() / ".tether" / "runs" / run_id / "run.json").read_text()))


def test_a_killed_wrapper_leaves_a_computing_run_running_and_cancel_reaches_it(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj", items=100_000)
    run_id = tether_json("run", "exp", "--local", "--", "--delay", "0.02", cwd=project)["run_id"]
    wait_status(project, run_id, {"running"})
    record = _record(run_id)
    child = int(str(record["child_pid"]))
    os.kill(int(str(record["pid"])), signal.SIGKILL)
    wait_for(lambda: not procinfo.is_alive(int(str(record["pid"])), None, None), 10, "the wrapper to die")

    first = wait_status(project, run_id, {"running", "dead"})
    assert first["status"] == "running" and first["wrapper_alive"] is False, first
    later = wait_for(
        lambda: (r := wait_status(project, run_id, {"running"}))["completed"] > first["completed"] and r,
        30,
        "progress to move on while the wrapper is gone",
    )
    assert later["status"] == "running"

    cancelled = tether_json("cancel", run_id, cwd=project)
    assert cancelled["cancelled"] is True and cancelled["status"] == "cancelled", cancelled

    def experiment_gone() -> bool:
        stat = procinfo.proc_stat(child)
        return stat is None or stat[1] == "Z"

    wait_for(experiment_gone, 10, "the experiment to stop")
    assert wait_status(project, run_id, {"cancelled"})["status"] == "cancelled"
    # Every item it finished is kept in the journal.
    journal = project / "results" / "results.journal.jsonl"
    assert journal.exists() and journal.stat().st_size > 0


def test_a_run_whose_wrapper_never_starts_is_recorded_failed(tmp_path: Path) -> None:
    project_dir = write_project(tmp_path / "proj", items=3)
    project = config.load(project_dir / "tether.toml")
    target = local_target(project)
    # The wrapper refuses its arguments and exits before writing run.json.
    target.server_argv = [sys.executable, "-c", "import sys; sys.exit(2)"]
    with open_state() as st:
        with pytest.raises(CommandFailed, match="never started"):
            runs.start(Ctx(project, st), target, "exp")
        (rec,) = st.runs()
        assert rec.status == "failed" and rec.ended is not None
    shown = tether_json("progress", "--local", cwd=project_dir)
    assert all(r["status"] != "starting" for h in shown["hosts"] for r in h["runs"])


def test_a_damaged_run_json_breaks_only_its_own_run(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj", items=3)
    good = tether_json("run", "exp", "--local", cwd=project)["run_id"]
    wait_status(project, good, {"completed"})
    runs_dir = local_root() / ".tether" / "runs"
    for name, text in [
        ("bad-types", json.dumps({"id": "bad-types", "status": "running", "pid": "12x", "results_dir": 7})),
        ("bad-status", json.dumps({"id": "bad-status", "status": ["running"]})),
        ("not-json", "{ this is not json"),
        ("not-object", "[1, 2, 3]"),
    ]:
        (runs_dir / name).mkdir()
        (runs_dir / name / "run.json").write_text(text)
    doc = tether_json("progress", "--local", cwd=project)
    by_id = {r["id"]: r for h in doc["hosts"] for r in h["runs"]}
    assert by_id[good]["status"] == "completed" and by_id[good]["completed"] == 3
    for name in ("bad-types", "bad-status", "not-json", "not-object"):
        assert by_id[name]["status"] == "broken" and by_id[name]["problem"], by_id[name]
    table = tether("progress", "--local", cwd=project)
    assert table.returncode == 0 and "broken" in table.stdout and good in table.stdout
