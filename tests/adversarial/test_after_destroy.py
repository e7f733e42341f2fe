"""A destroyed server is history: `pull` and `sync` without a host skip it, and say nothing twice."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Cloud, vast_project
from tests.helpers import tether, tether_json, wait_status


def test_pull_and_sync_without_a_host_skip_destroyed_servers(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=3)
    env = cloud.env
    tether_json("up", "box", "--profile", "api", cwd=project, env=env)
    run_id = tether_json("run", "exp", "--on", "box", cwd=project, env=env)["run_id"]
    wait_status(project, run_id, {"completed"}, host="box")
    assert tether_json("pull", "box", cwd=project, env=env)["pulls"][0]["verified"] is True
    results = (project / "results" / "results.json").read_bytes()
    assert tether_json("destroy", "box", cwd=project, env=env)["state"] == "gone"

    pulled = tether("pull", cwd=project, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "box" not in pulled.stdout + pulled.stderr
    synced = tether("sync", "--once", cwd=project, env=env)
    assert synced.returncode == 0, synced.stderr
    assert "box" not in synced.stdout + synced.stderr
    assert (project / "results" / "results.json").read_bytes() == results  # nothing lost or changed

    named = tether("pull", "box", cwd=project, env=env)  # asked by name: one clear sentence, not a traceback
    assert named.returncode != 0 and "Traceback" not in named.stderr
    assert named.stderr.strip().splitlines()[0] == "error: box was destroyed: nothing is left on it to pull."
