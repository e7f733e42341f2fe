"""One server shared by two projects (real sshd, rsync and tmux): each project's `progress` and `status` show its own
runs there, `--all` every project's; a run local state does not know (started from another machine) belongs to the
project whose code folder on the server it ran in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.helpers import tether, tether_checked, tether_json, wait_status, write_project
from tether.testing.sshd import SshdHost


def host_block(host: SshdHost, name: str = "lab1") -> str:
    return (
        f'[hosts.{name}]\naddress = "{host.address}"\nidentity_file = "{host.identity_file}"\n'
        f'remote_root = "{host.root_dir}"\n'
    )


def run_ids(doc: dict[str, Any]) -> set[str]:
    return {r["id"] for h in doc["hosts"] for r in h["runs"]}


def test_a_shared_server_lists_each_projects_runs_to_it(tmp_path: Path, sshd_hosts: tuple[SshdHost, SshdHost]) -> None:
    shared, own = sshd_hosts
    mine = write_project(tmp_path / "proj", items=3, extra=host_block(shared))
    theirs = write_project(
        tmp_path / "other", name="other", items=2, extra=host_block(shared) + host_block(own, "lab2")
    )
    for project, host in ((mine, "lab1"), (theirs, "lab1"), (theirs, "lab2")):
        assert tether("up", host, cwd=project).returncode == 0
    a = tether_json("run", "exp", "--on", "lab1", cwd=mine)["run_id"]
    b = tether_json("run", "exp", "--on", "lab1", cwd=theirs)["run_id"]
    b_own = tether_json("run", "exp", "--on", "lab2", cwd=theirs)["run_id"]  # a server only `other` names
    wait_status(mine, a, {"completed"}, host="lab1")
    wait_status(theirs, b, {"completed"}, host="lab1")
    wait_status(theirs, b_own, {"completed"}, host="lab2")

    assert run_ids(tether_checked("progress", schema="progress", cwd=mine)) == {a}
    assert run_ids(tether_checked("progress", "lab1", schema="progress", cwd=mine)) == {a}
    assert run_ids(tether_checked("progress", schema="progress", cwd=theirs)) == {b, b_own}
    # --all: every project's, lab2 read through the project that names it (no "Unknown host" row)
    every = tether_checked("progress", "--all", schema="progress", cwd=mine)
    assert run_ids(every) == {a, b, b_own} and all(h["error"] is None for h in every["hosts"])
    status = tether_checked("status", schema="status", cwd=mine)
    assert {r["id"] for r in status["runs"]} == {a}
    status_all = tether_checked("status", "--all", schema="status", cwd=mine)
    assert {r["id"] for r in status_all["runs"]} == {a, b, b_own} and not [
        w for w in status_all["warnings"] if "could not read" in w
    ]

    # Another machine (its own TETHER_HOME) starts a run of each project on the same server: this machine's local
    # state knows neither, so each is attributed by the code folder it ran in.
    elsewhere = {"TETHER_HOME": str(tmp_path / "other-machine")}
    os.makedirs(elsewhere["TETHER_HOME"], mode=0o700)
    for project in (mine, theirs):
        assert tether("up", "lab1", cwd=project, env=elsewhere).returncode == 0
    a2 = tether_json("run", "exp", "--on", "lab1", cwd=mine, env=elsewhere)["run_id"]
    b2 = tether_json("run", "exp", "--on", "lab1", cwd=theirs, env=elsewhere)["run_id"]
    wait_status(mine, a2, {"completed"}, host="lab1")
    wait_status(theirs, b2, {"completed"}, host="lab1")
    assert run_ids(tether_checked("progress", schema="progress", cwd=mine)) == {a, a2}
    assert run_ids(tether_checked("progress", "lab1", schema="progress", cwd=theirs)) == {b, b2}
    assert run_ids(tether_checked("progress", "lab1", "--all", schema="progress", cwd=mine)) == {a, a2, b, b2}
