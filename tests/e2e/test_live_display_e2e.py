"""The live display of long work, read from a real terminal (tmux) while the work happens: `up` against the Vast
emulator (real sshd hosts), a managed run; and without a terminal, plain lines (each step, a heartbeat while a step
lasts) with no control codes, and nothing but the sentences beside a --json document."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cloud, vast_project
from tests.e2e.managed_helpers import FAST
from tests.helpers import tether, tether_json, wait_for, wait_status
from tests.terminal import ENDED, Terminal
from tether.progress import HEARTBEAT_S
from tether.state import open_state

CLOCK = re.compile(r"(\d+:\d\d)\s*$")


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    yield term
    term.close()


def step_clock(screen: str, step: str) -> str | None:
    """The elapsed time the display shows beside ``step`` (None when that step is not on the screen)."""
    for line in screen.splitlines():
        if step in line and (found := CLOCK.search(line)):
            return found.group(1)
    return None


def test_up_shows_each_step_with_its_clock_while_it_waits(tmp_path: Path, cloud: Cloud, terminal: Terminal) -> None:
    project = vast_project(tmp_path, cloud, items=5)
    cloud.emulator.loading_s = 10.0  # a server that takes a while to start: `up` waits for it
    terminal.run("up", "box", "--profile", "api", cwd=project, env=cloud.env)
    waiting = "to run: loading"
    first = terminal.wait(lambda s: step_clock(s, waiting) is not None, "the wait for the server on the display")
    assert "tether up box" in first  # the display's title
    shown = step_clock(first, waiting)
    # Nothing is said while the server loads, yet the display moves: its clock ticks.
    later = terminal.wait(
        lambda s: step_clock(s, waiting) not in (None, shown) or ENDED in s, "the step's clock to tick"
    )
    assert ENDED not in later, later
    done = terminal.ended()
    assert "box is ready" in done and f"{ENDED}0]" in done
    assert waiting not in done  # the display is gone once the work is done; the sentences stay
    assert "Renting box (api)" in done
    assert tether_json("destroy", "box", cwd=project, env=cloud.env)["state"] == "gone"


def test_sigterm_while_the_display_draws_gives_the_terminal_back_and_says_what_bills(
    tmp_path: Path, cloud: Cloud, terminal: Terminal
) -> None:
    """`kill PID` (a harness's timeout) while `up` waits to log in to the server it rented: the display is taken
    down as for Ctrl-C (the cursor shows again), the report names the server that bills, and the exit is 143."""
    project = vast_project(tmp_path, cloud, items=5, ssh_wait_seconds=300)
    cloud.emulator.faults.refuse_keys(600)  # the fresh instance refuses the key: `up` keeps trying to log in
    terminal.run("up", "box", "--profile", "api", cwd=project, env=cloud.env)
    with open_state() as st:
        wait_for(lambda: (r := st.instance("box")) is not None and r.state == "running", 120, "the rental to run")
    assert not terminal.cursor_shown()  # the display hides it while it draws
    os.kill(terminal.pid(), signal.SIGTERM)
    done = terminal.ended()
    assert f"{ENDED}143]" in done and "Traceback" not in done, done
    assert "server box" in done and "keeps billing" in done and "`tether destroy box`" in done, done
    assert terminal.cursor_shown()
    assert len(cloud.emulator.billing_instances()) == 1  # it really bills on, as the report says


def test_a_managed_run_shows_its_shards_items_money_and_eta(tmp_path: Path, cloud: Cloud, terminal: Terminal) -> None:
    project = vast_project(tmp_path, cloud, items=120)
    terminal.run("run", "exp", "--managed", "--shards", "2", *FAST, "--", "--delay", "0.2", cwd=project, env=cloud.env)

    def counting(screen: str) -> bool:
        lines = screen.splitlines()
        shards = [ln for ln in lines if ln.strip().startswith("shard ") and "running" in ln and "items" in ln]
        header = any("tether run exp --managed" in ln and "/120 items" in ln for ln in lines)
        return header and len(shards) == 2 and any("items/s" in ln and "ETA" in ln for ln in shards)

    screen = terminal.wait(counting, "both shards running with items, rate and ETA", timeout=120)
    header = next(ln for ln in screen.splitlines() if "tether run exp --managed" in ln)
    assert "spent $" in header and "burn $" in header and "/120 items" in header and "ETA" in header
    done = terminal.ended(timeout=240)
    assert f"{ENDED}0]" in done and "completed" in done
    assert "burn $" not in done  # the display is gone; the sentences stay
    assert cloud.emulator.billing_instances() == []


def test_without_a_terminal_up_prints_its_steps_and_a_heartbeat_while_it_waits(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=5)
    cloud.emulator.loading_s = 20.0  # a server that takes a while to start: longer than a heartbeat's interval
    started = time.monotonic()
    result = tether("up", "box", "--profile", "api", cwd=project, env=cloud.env)  # stderr a pipe
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr and "\r" not in result.stderr  # no terminal control codes
    assert "Renting box (api)" in result.stderr and "box is ready" in result.stderr  # the sentences, as ever
    lines = result.stderr.splitlines()
    waiting = re.compile(r"box: waiting for instance \d+ to run: loading")
    assert sum(bool(waiting.fullmatch(ln)) for ln in lines) == 1, result.stderr  # the step, once, when it changed
    assert "box: preflight (GPUs, CUDA, disk, network)" in lines and "box: starting the watchdog" in lines
    beats = [ln for ln in lines if re.fullmatch(waiting.pattern + r", for \d+:\d\d", ln)]
    assert beats, result.stderr  # no long silence while the server loads
    every = [ln for ln in lines if re.search(r", for \d+:\d\d", ln)]
    assert len(every) <= took / HEARTBEAT_S + 1  # and no flood: one heartbeat an interval at most
    assert tether_json("destroy", "box", cwd=project, env=cloud.env)["state"] == "gone"


def test_with_json_up_prints_one_document_and_no_progress_lines(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=5)
    cloud.emulator.loading_s = 3.0
    result = tether("up", "box", "--profile", "api", "--json", cwd=project, env=cloud.env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["setup"] == "ran"  # stdout is one document
    assert "waiting for instance" not in result.stderr  # stderr: the sentences alone, no step or heartbeat lines
    assert not re.search(r", for \d+:\d\d", result.stderr)
    assert tether_json("destroy", "box", cwd=project, env=cloud.env)["state"] == "gone"


def test_sync_shows_what_it_pulled_and_when_it_pulls_next(tmp_path: Path, cloud: Cloud, terminal: Terminal) -> None:
    project = vast_project(tmp_path, cloud, items=5)
    assert tether_json("up", "box", "--profile", "api", cwd=project, env=cloud.env)["setup"] == "ran"
    run_id = tether_json("run", "exp", "--on", "box", cwd=project, env=cloud.env)["run_id"]
    wait_status(project, run_id, {"completed"}, host="box")
    terminal.run("sync", "box", "--every", "1h", cwd=project, env=cloud.env)
    screen = terminal.wait(
        lambda s: "box: " in s and step_clock(s, "next pull  at ") is not None, "the pull's line and the next pull"
    )
    assert "tether sync" in screen and "changed" in screen
    assert (project / "results" / "results.json").is_file()
    assert tether_json("destroy", "box", cwd=project, env=cloud.env)["state"] == "gone"
