"""A real terminal for tests: the real ``tether`` command in a tmux pane of the test's own tmux server (a private
socket), and what the pane shows (``tmux capture-pane -p``)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from tests.helpers import wait_for

#: What the pane prints when the command has ended (the pane stays, so its last screen can be read).
ENDED = "[tether exited "


class Terminal:
    """One tmux server of a test (socket ``-L`` unique per test), one pane at a time, 200x50."""

    def __init__(self) -> None:
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed")
        self.socket = f"tether-live-{uuid.uuid4().hex[:10]}"

    def run(self, *args: str, cwd: Path, env: Mapping[str, str] | None = None) -> None:
        """Start ``tether ARGS`` in a new pane; when it ends, the pane says ``[tether exited N]`` and stays."""
        command = shlex.join([sys.executable, "-m", "tether", *args])
        script = f'{command}; echo "{ENDED}$?]"; sleep 3600'
        full = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in ("COLUMNS", "LINES")}
        subprocess.run(  # the pane's own size, not one a test runner left in COLUMNS
            ["tmux", "-L", self.socket, "new-session", "-d", "-x", "200", "-y", "50", "-c", str(cwd), script],
            env=full,
            check=True,
            capture_output=True,
        )

    def screen(self) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, "capture-pane", "-p", "-t", "0"], capture_output=True, text=True, check=False
        )
        return out.stdout

    def wait(self, predicate: Callable[[str], bool], what: str, timeout: float = 60.0) -> str:
        """The first screen ``predicate`` accepts (polled; the test fails after ``timeout`` seconds)."""

        def accepted() -> str | None:
            screen = self.screen()
            return screen if predicate(screen) else None

        try:
            return str(wait_for(accepted, timeout, what))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{self.screen()}") from None

    def ended(self, timeout: float = 120.0) -> str:
        """The screen once the command has ended."""
        return self.wait(lambda s: ENDED in s, "the command to end", timeout)

    def pid(self) -> int:
        """The pid of the ``tether`` process the pane runs (a child of the pane's shell)."""
        out = subprocess.run(
            ["tmux", "-L", self.socket, "list-panes", "-F", "#{pane_pid}"], capture_output=True, text=True, check=True
        )
        shell = int(out.stdout.split()[0])
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        (child,) = [int(c) for c in children if b"tether" in Path(f"/proc/{c}/cmdline").read_bytes()]
        return child

    def cursor_shown(self) -> bool:
        """Whether the pane shows its cursor (a live display hides it while it draws)."""
        out = subprocess.run(
            ["tmux", "-L", self.socket, "display-message", "-p", "-t", "0", "#{cursor_flag}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() == "1"

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)
