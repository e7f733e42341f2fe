"""States in human tables have one colour per meaning, through the real command: on a terminal (a tmux pane, and
rich's FORCE_COLOR), never in a pipe, never with NO_COLOR, never in --json."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest

from tests.helpers import tether, tether_json, wait_for, wait_status, write_project
from tether import vocab
from tether.cli.common import STATUS_STYLE
from tether.machines import OutcomeKind
from tether.providers.base import STATE_MEANINGS
from tether.server.registry.entries import STATUSES as AGENT_STATUSES
from tether.state import InstanceRecord, open_state

SGR = re.compile(r"\x1b\[([0-9;]*)m")
COLOURS = {"31", "32", "33", "34", "35", "36"}


def styled_words(text: str) -> dict[str, set[str]]:
    """Each word printed right after an SGR sequence -> the SGR parameters it was printed with."""
    found: dict[str, set[str]] = {}
    for m in re.finditer(r"((?:\x1b\[[0-9;]*m)+)([a-z]+)", text):
        params = {p for seq in SGR.finditer(m.group(1)) for p in seq.group(1).split(";")}
        found.setdefault(m.group(2), set()).update(params)
    return found


def test_every_state_tether_shows_has_a_style_and_the_meanings_differ() -> None:
    every = (
        set(vocab.ALL_STATUSES)
        | set(STATE_MEANINGS)
        | set(get_args(vocab.ManagedStatus))
        | set(get_args(vocab.ShardStatus))
        | set(AGENT_STATUSES)
        | set(get_args(OutcomeKind))
        | {"unreachable"}
    )
    assert sorted(every - set(STATUS_STYLE)) == []
    meanings = ("running", "starting", "completed", "stopped", "preempted", "failed", "gone")
    assert len({STATUS_STYLE[s] for s in meanings}) == len(meanings)
    assert STATUS_STYLE["dead"] == STATUS_STYLE["failed"] == STATUS_STYLE["exited"]
    assert STATUS_STYLE["cancelled"] == STATUS_STYLE["stopped"] == STATUS_STYLE["paused"]


def seed_servers() -> None:
    now = time.time()
    st = open_state()
    try:
        for n, state in enumerate(("running", "stopped", "exited", "loading")):
            st.upsert_instance(
                InstanceRecord(
                    name=f"box-{state}",
                    provider="vast",
                    instance_id=str(1000 + n),
                    address=None,
                    remote_root="/workspace/proj",
                    state=state,
                    dph_total=0.2,
                    storage_dph=0.01,
                    created=now - 600,
                    updated=now,
                    meta={},
                ),
                source="test",
            )
    finally:
        st.close()


def test_ls_colours_states_on_a_terminal_only(tmp_path: Path) -> None:
    seed_servers()
    plain = dict(os.environ)
    plain.pop("FORCE_COLOR", None)
    plain.pop("NO_COLOR", None)
    forced = tether("ls", "--no-refresh", cwd=tmp_path, env={**plain, "FORCE_COLOR": "1"})
    assert forced.returncode == 0, forced.stderr
    words = styled_words(forced.stdout)
    assert "32" in words["running"] and "33" in words["stopped"] and "31" in words["exited"]
    assert "36" in words["loading"]

    piped = subprocess.run(
        [sys.executable, "-m", "tether", "ls", "--no-refresh"], cwd=tmp_path, env=plain, capture_output=True, text=True
    )
    assert piped.returncode == 0 and "\x1b" not in piped.stdout and "exited" in piped.stdout

    no_colour = tether("ls", "--no-refresh", cwd=tmp_path, env={**plain, "FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert "exited" in no_colour.stdout
    assert not {p for m in SGR.finditer(no_colour.stdout) for p in m.group(1).split(";")} & COLOURS

    as_json = tether("ls", "--no-refresh", "--json", cwd=tmp_path, env={**plain, "FORCE_COLOR": "1"})
    assert "\x1b" not in as_json.stdout
    assert {i["state"] for i in json.loads(as_json.stdout)["instances"]} == {"running", "stopped", "exited", "loading"}


@pytest.fixture
def tmux_socket() -> Iterator[str]:
    socket = f"tc-{uuid.uuid4().hex[:10]}"
    yield socket
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False)


def test_progress_in_a_real_terminal_colours_completed_and_failed_apart(tmp_path: Path, tmux_socket: str) -> None:
    bad_experiment = '[experiments.bad]\ncommand = ["python3", "-c", "raise SystemExit(3)"]\nresults = "bad_results"\n'
    project = write_project(tmp_path / "p", items=3, extra=bad_experiment)
    good = tether("run", "exp", "--local", cwd=project)
    assert good.returncode == 0, good.stderr
    good_id = good.stdout.strip()
    wait_status(project, good_id, {"completed"})
    assert tether("run", "bad", "--local", cwd=project).returncode == 1  # it fails at once, and says so
    runs = tether_json("progress", "--local", cwd=project)["hosts"][0]["runs"]
    bad_id = next(r["id"] for r in runs if r["experiment"] == "bad" and r["status"] == "failed")

    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TMUX", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    command = f"{shlex.quote(sys.executable)} -m tether progress --local; echo TETHER-DONE; sleep 600"
    subprocess.run(
        ["tmux", "-L", tmux_socket, "new-session", "-d", "-x", "200", "-y", "50", "-c", str(project), command],
        env=env,
        check=True,
    )

    def screen() -> str | None:
        shown = subprocess.run(
            ["tmux", "-L", tmux_socket, "capture-pane", "-p", "-e", "-t", "0"], capture_output=True, text=True
        ).stdout
        return shown if "TETHER-DONE" in shown else None

    shown = wait_for(screen, 60, "progress to print in the pane")
    rows = [SGR.sub("", line).split() for line in shown.splitlines()]
    assert sorted(r[1] for r in rows if r[:1] == ["local"]) == sorted([bad_id, good_id]), shown  # ids in full
    good_words = styled_words("\n".join(line for line in shown.splitlines() if "local  exp-" in SGR.sub("", line)))
    bad_words = styled_words("\n".join(line for line in shown.splitlines() if "local  bad-" in SGR.sub("", line)))
    assert "34" in good_words.get("completed", ()) and "31" in bad_words.get("failed", ()), shown


def test_a_managed_line_colours_its_status_and_each_shards_but_not_its_reasons() -> None:
    from rich.console import Console

    from tether.cli.common import managed_line
    from tether.managed.views import ManagedView

    shard = {"server": "m1-s0-1", "own_host": False, "run": None, "completed": 4, "total": 10, "synced": 4}
    view = ManagedView(
        id="exp-m1",
        experiment="exp",
        status="running",
        reason=None,
        shards=[
            {**shard, "shard": 0, "status": "running", "reason": None, "recoveries": 0},
            {**shard, "shard": 1, "status": "restarting", "reason": "server failed: stopped", "recoveries": 1},
        ],
        completed=8,
        total=20,
        recoveries=1,
        cost_usd=0.12,
        started=0.0,
        ended=None,
        controller=True,
        results=None,
    )
    console = Console(force_terminal=True, color_system="standard", markup=False, highlight=False, width=300)
    with console.capture() as captured:
        console.print(managed_line(view))
    words = styled_words(captured.get())
    assert SGR.sub("", captured.get()).startswith("managed exp-m1 running 8/20 · s0 running m1-s0-1 4/10")
    assert "32" in words["running"] and "36" in words["restarting"]
    assert "failed" not in words and "stopped" not in words  # a reason's words stay plain
