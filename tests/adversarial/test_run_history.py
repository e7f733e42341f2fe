"""`tether runs` lists past runs with the figures each ended with (frozen), scoped to this project; `tether forget`
deletes records only (never results), never a live run."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import tether, tether_checked, tether_json, wait_status, write_project


def test_runs_show_each_run_as_it_ended_and_forget_keeps_every_result(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj", items=4)
    other = write_project(tmp_path / "other", name="other", items=2)
    first = tether_checked("run", "exp", "--local", schema="run", cwd=project)["run_id"]
    wait_status(project, first, {"completed"})
    tether_checked("progress", "--local", schema="progress", cwd=project)  # tether sees it end: it is frozen
    elsewhere = tether_checked("run", "exp", "--local", schema="run", cwd=other)["run_id"]
    wait_status(other, elsewhere, {"completed"})

    mine = tether_checked("runs", schema="runs", cwd=project)
    listed = mine["runs"]
    assert [r["id"] for r in listed] == [first]  # this project's runs only
    assert mine["scope"]["all"] is False and mine["scope"]["project"]  # and the document says so
    assert (listed[0]["status"], listed[0]["completed"], listed[0]["total"], listed[0]["frozen"]) == (
        "completed",
        4,
        4,
        True,
    )
    every_doc = tether_checked("runs", "--all", schema="runs", cwd=project)
    every = every_doc["runs"]
    assert {r["id"] for r in every} == {first, elsewhere} and every_doc["scope"]["all"] is True
    shown = tether("runs", cwd=project)
    assert shown.returncode == 0 and first in shown.stdout and "4/4" in shown.stdout

    results = project / "results" / "results.json"
    before = results.read_bytes()
    forgot = tether_checked("forget", first, schema="forget", cwd=project)
    assert forgot == {"forgotten": [first], "count": 1}
    assert results.read_bytes() == before  # never a result
    assert tether_checked("runs", schema="runs", cwd=project)["runs"] == []
    again = tether("forget", first, cwd=project)
    assert again.returncode == 2  # no such run any more: one sentence, exit 2
    nothing = tether("forget", cwd=project)
    assert nothing.returncode == 2 and "--finished-before" in nothing.stderr
    bad = tether("forget", "--finished-before", "last tuesday", cwd=project)
    assert bad.returncode == 2 and "is not a date" in bad.stderr


def test_a_live_run_is_never_forgotten_and_a_date_forgets_the_old_ones(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj", items=10_000)
    done = write_project(tmp_path / "done", name="done", items=2)
    old = tether_checked("run", "exp", "--local", schema="run", cwd=done)["run_id"]
    wait_status(done, old, {"completed"})
    tether_checked("progress", "--local", schema="progress", cwd=done)
    running = tether_json("run", "exp", "--local", "--", "--delay", "0.05", cwd=project)["run_id"]
    wait_status(project, running, {"running"})
    refused = tether("forget", running, cwd=project)
    assert refused.returncode == 3 and "still running; nothing was forgotten" in refused.stderr
    by_date = tether_checked("forget", "--finished-before", "2999-01-01", schema="forget", cwd=project)
    assert by_date["forgotten"] == [old]  # the live run is not among them
    assert [r["id"] for r in tether_checked("runs", "--all", schema="runs", cwd=project)["runs"]] == [running]
    assert tether("cancel", running, cwd=project).returncode == 0
