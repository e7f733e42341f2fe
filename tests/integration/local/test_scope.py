"""Lists that tell the truth: `progress`, `status` and the dashboard's data show this project's runs (`--all`: every
project's; outside a project every project's, said so), and a failed run's log tail is shown once, then a pointer.
Real runs of two projects on this machine."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import tether, tether_checked, tether_json, wait_status, write_project
from tether import config
from tether.context import Ctx
from tether.dashboard.snapshot import build
from tether.scope import Scope
from tether.state import open_state

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def run_ids(doc: dict[str, Any]) -> set[str]:
    return {r["id"] for h in doc["hosts"] for r in h["runs"]}


def snapshot_ids(doc: dict[str, Any]) -> set[str]:
    return {r["id"] for group in doc["runs"] for r in group["runs"]}


def two_projects(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """Project ``proj`` and project ``other``, each with one completed local run of its own ``exp``."""
    mine = write_project(tmp_path / "proj", items=3)
    theirs = write_project(tmp_path / "other", name="other", items=2)
    a = tether_checked("run", "exp", "--local", schema="run", cwd=mine)["run_id"]
    b = tether_checked("run", "exp", "--local", schema="run", cwd=theirs)["run_id"]
    wait_status(mine, a, {"completed"})
    wait_status(theirs, b, {"completed"})
    return mine, theirs, a, b


def test_each_view_shows_this_projects_runs_and_all_shows_every_project(tmp_path: Path) -> None:
    mine, theirs, a, b = two_projects(tmp_path)

    shown = tether_checked("progress", schema="progress", cwd=mine)
    assert run_ids(shown) == {a} and shown["scope"] == {"project": "proj", "all": False}
    every = tether_checked("progress", "--all", schema="progress", cwd=mine)
    assert run_ids(every) == {a, b} and every["scope"] == {"project": None, "all": True}
    assert run_ids(tether_checked("progress", schema="progress", cwd=theirs)) == {b}
    human = tether("progress", cwd=mine)
    assert human.returncode == 0 and a in human.stdout and b not in human.stdout

    status = tether_checked("status", schema="status", cwd=mine)
    assert {r["id"] for r in status["runs"]} == {a} and status["scope"]["project"] == "proj"
    status_all = tether_checked("status", "--all", schema="status", cwd=mine)
    assert {r["id"] for r in status_all["runs"]} == {a, b}

    project = config.load(mine / "tether.toml")
    with open_state() as st:
        board = build(Ctx(project, st))
        assert snapshot_ids(board) == {a} and board["project"] == "proj"
        board_all = build(Ctx(project, st), scope=Scope.of(project, every_project=True))
        assert snapshot_ids(board_all) == {a, b} and board_all["project"] == "all projects"

    # Outside any project: every project's runs, and the terminal says so.
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    outside = tether_checked("progress", schema="progress", cwd=nowhere)
    assert run_ids(outside) == {a, b} and outside["scope"] == {"project": None, "all": True}
    said = tether("progress", cwd=nowhere)
    assert said.returncode == 0 and "No tether.toml here: showing every project's runs." in said.stderr
    assert "every project's" in tether("status", cwd=nowhere).stderr


def test_a_run_local_state_forgot_is_attributed_by_its_folder(tmp_path: Path) -> None:
    """A run local state does not know (its record forgotten) still belongs to the project whose folder it ran in."""
    mine, theirs, a, b = two_projects(tmp_path)
    assert tether_checked("forget", a, b, schema="forget", cwd=mine)["count"] == 2
    assert run_ids(tether_checked("progress", schema="progress", cwd=mine)) == {a}
    assert run_ids(tether_checked("progress", schema="progress", cwd=theirs)) == {b}
    assert run_ids(tether_checked("progress", "--all", schema="progress", cwd=mine)) == {a, b}


def test_a_failed_runs_log_tail_is_shown_once_then_a_pointer(tmp_path: Path) -> None:
    extra = """
[experiments.boom]
command = "python3 boom.py"
kind = "api"
items = 1
item_seconds = 1
results = "results"
"""
    project = write_project(tmp_path / "proj", extra=extra)
    # Fails after the start is confirmed (the start waits a few seconds), so `progress` is the first to see it.
    (project / "boom.py").write_text(
        "import sys, time\ntime.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)\n"
        "print('boom-marker: the model file is missing')\nsys.exit(3)\n"
    )
    late = tether_json("run", "boom", "--local", "--", "5", cwd=project)["run_id"]
    failed = wait_status(project, late, {"failed"})  # --json: complete, and it does not count as shown
    assert "boom-marker" in failed["log_tail"]

    first = tether("progress", cwd=project)
    assert first.returncode == 0 and "boom-marker" in first.stderr and "log tail" in first.stderr
    second = tether("progress", cwd=project)
    assert second.returncode == 0 and "boom-marker" not in second.stderr
    assert f"(failed): its log: `tether logs {late}`." in second.stderr
    assert "boom-marker" not in tether("progress", cwd=project).stderr
    again = tether_checked("progress", schema="progress", cwd=project)
    assert "boom-marker" in next(r for h in again["hosts"] for r in h["runs"] if r["id"] == late)["log_tail"]

    # A run that fails at once shows its tail in `run`'s own error: `progress` then only points to it.
    at_once = tether("run", "boom", "--local", cwd=project)
    assert at_once.returncode != 0 and "boom-marker" in at_once.stderr
    soon = tether_checked("progress", schema="progress", cwd=project)
    quick = next(r["id"] for h in soon["hosts"] for r in h["runs"] if r["id"] != late and r["status"] == "failed")
    after = tether("progress", cwd=project)
    assert "boom-marker" not in after.stderr and f"`tether logs {quick}`" in after.stderr

    # Forgetting the record forgets that its tail was shown.
    tether_checked("forget", late, schema="forget", cwd=project)
    assert "boom-marker" in tether("progress", cwd=project).stderr


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_page_title_names_the_project_or_all_projects(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from tether.dashboard.server import Dashboard

    project_dir = write_project(tmp_path / "proj", items=2)
    project = config.load(project_dir / "tether.toml")
    boards = [
        Dashboard(project, port=0, poll_s=0.5).start(),
        Dashboard(project, port=0, poll_s=0.5, scope=Scope.of(project, every_project=True)).start(),
    ]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
            )
            try:
                page = browser.new_page()
                for board, title in zip(boards, ("tether proj", "tether all projects"), strict=True):
                    page.goto(board.url)
                    page.locator("h1", has_text=title).wait_for(timeout=60_000)
                    assert page.inner_text("h1") == title and page.title() == title
            finally:
                browser.close()
    finally:
        for board in boards:
            board.stop()
