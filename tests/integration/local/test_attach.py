"""`tether attach` in a real terminal: a tmux pane of the test's own runs the command, and the pane then shows the
run's own window (its live output)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import tether, tether_json, wait_for, wait_status, write_project


@pytest.fixture
def terminal() -> Iterator[str]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    socket = f"tether-test-{uuid.uuid4().hex[:8]}"
    yield socket
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)


def test_attach_shows_the_runs_window_and_detaching_leaves_it_running(tmp_path: Path, terminal: str) -> None:
    project = write_project(tmp_path / "p", items=2000)
    run_id = tether_json("run", "exp", "--local", "--", "--delay", "0.05", cwd=project)["run_id"]
    wait_status(project, run_id, {"running"})
    command = f"{sys.executable} -m tether attach {run_id}"
    env = {**os.environ, "TMUX": "/tmp/pretend-we-are-inside-tmux,1,0"}  # as when a user runs it inside tmux
    subprocess.run(
        ["tmux", "-L", terminal, "new-session", "-d", "-x", "160", "-y", "40", "-c", str(project), command],
        env=env,
        check=True,
        capture_output=True,
    )

    def screen() -> str:
        out = subprocess.run(
            ["tmux", "-L", terminal, "capture-pane", "-p", "-t", "0"], capture_output=True, text=True, check=False
        )
        return out.stdout

    shown = wait_for(lambda: (s := screen()) and ("[tether] run" in s or "results:" in s) and s, 30, "the run window")
    assert "sessions should be nested" not in shown
    # Ctrl-B D in the inner tmux detaches: the run goes on.
    subprocess.run(["tmux", "-L", terminal, "send-keys", "-t", "0", "C-b", "d"], check=True)
    run = wait_status(project, run_id, {"running"})
    assert run["alive"] is True
    assert tether("cancel", run_id, cwd=project).returncode == 0


def test_attach_without_a_terminal_points_to_logs(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=2000)
    run_id = tether_json("run", "exp", "--local", "--", "--delay", "0.05", cwd=project)["run_id"]
    wait_status(project, run_id, {"running"})
    result = tether("attach", run_id, cwd=project)
    assert result.returncode == 1 and f"tether logs {run_id} -f" in result.stderr
    tether("cancel", run_id, cwd=project)
