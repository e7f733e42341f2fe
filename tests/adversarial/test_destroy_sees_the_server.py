"""Destroy, down, stop and the autopilot see what lives on the server, not only what this controller recorded:
agents registered by hand, runs of another controller, results in folders tether.toml no longer names; and a run
recorded live on a server that is stopped is said to be last seen, never counted alive forever.

The Vast emulator on real time with real sshd hosts, driven through the CLI."""

from __future__ import annotations

import os
from pathlib import Path

from tests.e2e.conftest import Cloud, vast_project
from tests.helpers import tether, tether_json, wait_status


def _completed_and_pulled(project: Path, env: dict[str, str]) -> None:
    run_id = tether_json("run", "exp", "--on", "box", cwd=project, env=env)["run_id"]
    wait_status(project, run_id, {"completed"}, host="box")
    assert tether_json("pull", "box", cwd=project, env=env)["pulls"][0]["verified"] is True


def test_an_agent_registered_by_hand_blocks_destroy_down_stop_and_the_autopilot(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=5, policy='idle_stop_minutes = 0.01\nidle_stop = "never"\n')
    env = cloud.env
    instance_id = tether_json("up", "box", "--profile", "api", cwd=project, env=env)["rented"]["instance_id"]
    _completed_and_pulled(project, env)
    # A colleague's agent registers by hand, owned by a process that is alive (this test's own).
    reg = tether(
        "agents",
        "box",
        "register",
        "--id",
        "human-1",
        "--experiment",
        "notebook",
        "--gpu-gb",
        "0",
        "--pid",
        str(os.getpid()),
        cwd=project,
        env=env,
    )
    assert reg.returncode == 0, reg.stderr
    for command in (["destroy", "box"], ["down", "box", "--no-more-work"], ["stop", "box"]):
        refused = tether(*command, cwd=project, env=env)
        assert refused.returncode == 3, (command, refused.stderr)
        assert "1 agent(s)" in refused.stderr, (command, refused.stderr)
    decisions = tether_json("autopilot", "--once", cwd=project, env=env)["decisions"]
    assert [(d["action"], d["done"]) for d in decisions] == [("none", False)], decisions
    assert "alive" in decisions[0]["reason"]
    assert (cloud.emulator.instance_json(int(instance_id)) or {}).get("actual_status") == "running"  # unchanged
    assert tether("agents", "box", "done", "human-1", cwd=project, env=env).returncode == 0
    assert tether_json("destroy", "box", cwd=project, env=env)["state"] == "gone"
    assert cloud.emulator.billing_instances() == []


def test_a_run_of_another_controller_blocks_destroy(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=5)
    env = cloud.env
    instance_id = int(tether_json("up", "box", "--profile", "api", cwd=project, env=env)["rented"]["instance_id"])
    _completed_and_pulled(project, env)
    # A colleague's laptop: another TETHER_HOME and another project that knows the server as a host of its own.
    host = cloud.hosts[instance_id]
    other = tmp_path / "colleague"
    other.mkdir()
    (other / "exp.py").write_text((project / "exp.py").read_text())
    (other / "tether.toml").write_text(
        f"""[project]
name = "theirs"
setup_packages = []
apt_packages = []

[experiments.long]
command = "python3 exp.py --items 100000 --delay 0.05"
kind = "api"
results = "results"

[hosts.shared]
address = "{host.address}"
identity_file = "{cloud.key}"
remote_root = "{cloud.root_of(instance_id)}"
"""
    )
    their_env = {"TETHER_HOME": str(tmp_path / "colleague-home")}
    assert tether("up", "shared", cwd=other, env=their_env).returncode == 0
    their_run = tether_json("run", "long", "--on", "shared", cwd=other, env=their_env)["run_id"]
    wait_status(other, their_run, {"running"}, host="shared")

    refused = tether("destroy", "box", cwd=project, env=env)
    assert refused.returncode == 3 and "still alive" in refused.stderr, refused.stderr
    down = tether("down", "box", "--no-more-work", cwd=project, env=env)
    assert down.returncode == 3 and "still alive" in down.stderr
    assert (cloud.emulator.instance_json(instance_id) or {}).get("actual_status") == "running"
    tether_json("cancel", their_run, cwd=other, env=their_env)


def test_results_in_a_folder_no_longer_in_the_config_are_unsynced(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=5)
    env = cloud.env
    instance_id = int(tether_json("up", "box", "--profile", "api", cwd=project, env=env)["rented"]["instance_id"])
    _completed_and_pulled(project, env)
    # The experiment is renamed and writes elsewhere now: the old folder on the server is nobody's to pull.
    text = (project / "tether.toml").read_text()
    text = text.replace("[experiments.exp]", "[experiments.exp2]").replace('results = "results"', 'results = "out2"')
    (project / "tether.toml").write_text(text)
    (project / "results").rename(project / "results.moved-away")
    refused = tether("destroy", "box", cwd=project, env=env)
    assert refused.returncode == 3 and "not yet brought home" in refused.stderr, refused.stderr
    assert cloud.emulator.instance_json(instance_id) is not None
    assert (cloud.root_of(instance_id) / "proj" / "results" / "results.json").is_file()
    forced = tether_json("destroy", "box", "--discard-unsynced", cwd=project, env=env)
    assert forced["state"] == "gone"
    assert any(f.endswith("results/results.json") for f in forced["unsynced_files"]), forced


def test_a_run_recorded_running_on_a_stopped_server_is_last_seen_not_alive(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=100_000)
    env = cloud.env
    instance_id = int(tether_json("up", "box", "--profile", "api", cwd=project, env=env)["rented"]["instance_id"])
    run_id = tether_json("run", "exp", "--on", "box", "--", "--delay", "0.05", cwd=project, env=env)["run_id"]
    wait_status(project, run_id, {"running"}, host="box")
    # The server stops under the run (the user's console, an outbid): local state still says running.
    status, _ = cloud.emulator.change(instance_id, {"state": "stopped"})
    assert status == 200
    assert tether_json("ls", cwd=project, env=env)["instances"][0]["state"] == "stopped"

    down = tether("down", "box", "--no-more-work", cwd=project, env=env)
    assert "still alive" not in down.stderr
    assert f"run {run_id} was last seen running" in down.stderr and "the server is stopped" in down.stderr
    assert down.returncode == 3 and "--discard-unsynced" in down.stderr  # results not verified home: kept
    assert cloud.emulator.instance_json(instance_id) is not None
    forced = tether("destroy", "box", "--discard-unsynced", cwd=project, env=env)
    assert forced.returncode == 0, forced.stderr
    assert f"run {run_id} was last seen running" in forced.stderr
    assert cloud.emulator.billing_instances() == []
