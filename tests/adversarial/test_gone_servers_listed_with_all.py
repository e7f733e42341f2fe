"""A destroyed server is history: `tether ls` and the "Known:" lists of errors name live servers only; `ls --all`
shows the gone ones too (the Vast emulator with real sshd hosts)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Cloud, vast_project
from tests.helpers import tether, tether_checked, tether_json


def test_ls_and_known_lists_hide_a_destroyed_server_unless_all(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=3)
    env = cloud.env
    tether_json("up", "box", "--profile", "api", cwd=project, env=env)
    tether_json("up", "keep", "--profile", "api", cwd=project, env=env)
    assert tether_json("destroy", "box", cwd=project, env=env)["state"] == "gone"

    listed = tether_checked("ls", schema="ls", cwd=project, env=env)["instances"]
    assert [r["name"] for r in listed] == ["keep"]
    every = tether_checked("ls", "--all", schema="ls", cwd=project, env=env)["instances"]
    assert {r["name"]: r["state"] for r in every} == {"box": "gone", "keep": "running"}
    human = tether("ls", cwd=project, env=env)
    assert human.returncode == 0 and "keep" in human.stdout and "box" not in human.stdout
    assert "1 gone server(s) not shown: `tether ls --all`." in human.stderr
    assert "box" in tether("ls", "--all", cwd=project, env=env).stdout

    unknown = tether("push", "nosuch", cwd=project, env=env)  # a host neither configured nor rented
    assert unknown.returncode == 2 and "Known: keep." in unknown.stderr and "box" not in unknown.stderr
    not_rented = tether("stop", "nosuch", cwd=project, env=env)
    assert not_rented.returncode == 2 and "Rented servers: keep." in not_rented.stderr
    assert "box" not in not_rented.stderr
    assert tether_json("destroy", "keep", cwd=project, env=env)["state"] == "gone"
