"""`tether attach` on a server: ssh -t into the run's tmux window, from a real terminal (a tmux pane)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.helpers import tether, tether_json, wait_for, wait_status
from tests.integration.remote.test_remote_cli import make_project
from tether.testing.sshd import SshdHost


def test_attach_over_ssh_shows_the_run_and_detaching_keeps_it(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = make_project(tmp_path, ("lab1", sshd_host), items=5000)
    assert tether("up", "lab1", cwd=project).returncode == 0
    run_id = tether_json("run", "exp", "--on", "lab1", "--", "--delay", "0.05", cwd=project)["run_id"]
    wait_status(project, run_id, {"running"}, host="lab1")
    socket = f"tether-test-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(
            [
                "tmux",
                "-L",
                socket,
                "new-session",
                "-d",
                "-x",
                "160",
                "-y",
                "40",
                "-c",
                str(project),
                f"{sys.executable} -m tether attach {run_id}",
            ],
            env=dict(os.environ),
            check=True,
            capture_output=True,
        )

        def screen() -> str:
            out = subprocess.run(
                ["tmux", "-L", socket, "capture-pane", "-p", "-t", "0"], capture_output=True, text=True, check=False
            )
            return out.stdout if "[tether] run" in out.stdout or "results:" in out.stdout else ""

        wait_for(screen, 30, "the remote run's window")
        subprocess.run(["tmux", "-L", socket, "send-keys", "-t", "0", "C-b", "d"], check=True)
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)
    assert wait_status(project, run_id, {"running"}, host="lab1")["alive"] is True
    assert tether_json("cancel", run_id, cwd=project)["status"] == "cancelled"
