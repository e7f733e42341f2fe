"""Every --json document of the rented-server commands validated against its shipped schema, on the Vast emulator
with real sshd instances; and the same server seen from a folder outside any project."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.conftest import Cloud, vast_project
from tests.helpers import tether_checked, wait_status


def test_rented_server_documents_have_their_schemas_in_and_outside_the_project(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=5)
    env = cloud.env
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def check(*args: str, schema: str, cwd: Path = project, code: int = 0) -> Any:
        return tether_checked(*args, schema=schema, cwd=cwd, env=env, code=code)

    check("offers", "--profile", "api", "--for", "exp", schema="offers")
    up = check("up", "box", "--profile", "api", schema="up")
    assert up["setup"] == "ran"
    check("push", "box", schema="push")
    run = check("run", "exp", "--on", "box", schema="run")
    wait_status(project, run["run_id"], {"completed"}, host="box")
    check("progress", "box", schema="progress")
    check("agents", "--on", "box", schema="agents")
    check("pull", "box", schema="pull")
    check("sync", "box", "--once", schema="sync")
    check("status", schema="status")
    check("cost", schema="cost")
    check("autopilot", "--once", "--dry-run", schema="autopilot")

    # Outside any project: the rented server is still there to see and to ask.
    listed = check("ls", schema="ls", cwd=elsewhere)["instances"]
    assert [(i["name"], i["state"]) for i in listed] == [("box", "running")]
    runs = check("progress", "box", schema="progress", cwd=elsewhere)["hosts"]
    assert runs[0]["runs"][0]["id"] == run["run_id"]
    registry = check("agents", "--on", "box", schema="agents", cwd=elsewhere)
    assert [e["id"] for e in registry["entries"]] == [run["run_id"]]
    assert check("status", schema="status", cwd=elsewhere)["servers"][0]["name"] == "box"
    assert check("cost", schema="cost", cwd=elsewhere)["by_instance"][0]["name"] == "box"
    assert check("destroy", "box", schema="destroy", cwd=elsewhere, code=2)["kind"] == "ConfigError"

    stopped = check("stop", "box", schema="stop")
    assert stopped["state"] == "stopped"
    check("start", "box", schema="start")
    down = check("down", "box", "--no-more-work", schema="down")
    assert down["done"] is True
    assert check("destroy", "box", schema="destroy")["already"] is True
