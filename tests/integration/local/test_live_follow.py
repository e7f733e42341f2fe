"""`tether run --follow` on this machine: in a real terminal (tmux) the run's state, items, rate and ETA are drawn
live from its own progress; without a terminal plain lines (each step, and a heartbeat with the run's items, rate
and ETA while it runs), with no terminal control codes."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import tether, wait_status, write_project
from tests.terminal import ENDED, Terminal
from tether.progress import HEARTBEAT_S


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    yield term
    term.close()


def test_follow_draws_the_runs_items_rate_and_eta(tmp_path: Path, terminal: Terminal) -> None:
    project = write_project(tmp_path / "p", items=2000)
    terminal.run("run", "exp", "--local", "--follow", "--", "--delay", "0.05", cwd=project)

    def drawn(screen: str) -> bool:
        return any(
            "running on local" in ln and "/2000 items" in ln and "items/" in ln and "ETA" in ln
            for ln in screen.splitlines()
        )

    screen = terminal.wait(drawn, "the run's row with items, rate and ETA")
    row = next(ln for ln in screen.splitlines() if "running on local" in ln)
    run_id = row.split()[0]
    assert "tether run --follow" in screen
    assert re.search(r"\d+/2000 items  [\d.]+ items/(s|min)  ETA ", row), row
    wait_status(project, run_id, {"running"})
    assert tether("cancel", run_id, cwd=project).returncode == 0
    done = terminal.ended()
    assert f"Run {run_id} cancelled" in done
    assert "running on local" not in done  # the display is gone; the sentences stay
    assert ENDED in done


def test_without_a_terminal_follow_prints_plain_steps_and_heartbeats(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", items=300)
    # At least 15 s of work (300 items, 0.1 s each, two at a time): longer than a heartbeat's interval.
    started = time.monotonic()
    result = tether("run", "exp", "--local", "--follow", "--", "--delay", "0.1", cwd=project)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr and "\r" not in result.stderr
    assert "completed (300/300 items, exit code 0)" in result.stderr
    lines = result.stderr.splitlines()
    run_id = next(ln.split(":")[0] for ln in lines if ln.endswith(": running on local"))  # the step, once
    assert sum(ln == f"{run_id}: running on local" for ln in lines) == 1
    beats = [ln for ln in lines if re.fullmatch(rf"{run_id}: running on local, for \d+:\d\d, \d+/300 items.*", ln)]
    assert beats, result.stderr
    assert len(beats) <= took / HEARTBEAT_S + 1  # never a flood: one heartbeat an interval at most
    assert any("items/" in b and "ETA" in b for b in beats), beats
