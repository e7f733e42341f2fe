"""Money end to end: the autopilot stops an idle server after pulling and later destroys it with every result
home; down, destroy and budget refusals; a provider failing mid-stop. Emulator on real time, real sshd hosts."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tests.e2e.conftest import Cloud, vast_project
from tests.helpers import tether, tether_json, wait_for, wait_status

# A second experiment that the plan sends to an `api` server and that has not run yet: "more work is planned".
BIG = """
[experiments.big]
command = "python3 exp.py --items 5000"
kind = "api"
items = 5000
item_seconds = 10
results = "results_big"
"""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_autopilot_stops_idle_server_after_pulling_then_destroys_it(tmp_path: Path, cloud: Cloud) -> None:
    policy = 'idle_stop_minutes = 0.02\ndestroy_after_idle_hours = 0.01\nidle_stop = "never"\n' + BIG
    project = vast_project(tmp_path, cloud, items=25, policy=policy)
    env = cloud.env
    instance_id = tether_json("up", "box", "--profile", "api", cwd=project, env=env)["rented"]["instance_id"]
    run_id = tether_json("run", "exp", "--on", "box", cwd=project, env=env)["run_id"]
    wait_status(project, run_id, {"completed"}, host="box")
    server_copy = cloud.root_of(instance_id) / "proj" / "results" / "results.json"
    server_sha = sha(server_copy)
    assert not (project / "results" / "results.json").exists()  # nothing pulled yet

    time.sleep(1.5)  # the policy's idle timer (1.2 s here) is what is under test
    dry = tether_json("autopilot", "--once", "--dry-run", cwd=project, env=env)
    assert [(d["action"], d["done"]) for d in dry["decisions"]] == [("stop", False)]
    assert tether_json("ls", cwd=project, env=env)["instances"][0]["state"] == "running"
    first = tether_json("autopilot", "--once", cwd=project, env=env)["decisions"]
    assert [(d["name"], d["action"], d["done"]) for d in first] == [("box", "stop", True)], first
    assert "more experiments are planned" in first[0]["reason"]
    assert first[0]["pull"]["verified"] is True
    assert sha(project / "results" / "results.json") == server_sha
    assert tether_json("ls", cwd=project, env=env)["instances"][0]["state"] == "stopped"

    def destroyed() -> list[dict[str, object]] | None:
        decisions = tether_json("autopilot", "--once", cwd=project, env=env)["decisions"]
        return decisions if decisions and decisions[0]["action"] == "destroy" else None

    second = wait_for(destroyed, 120, "the autopilot to destroy the stopped server")
    assert second[0]["done"] is True, second
    assert cloud.emulator.billing_instances() == []
    assert sha(project / "results" / "results.json") == server_sha
    assert json.loads((project / "results" / "results.json").read_text())["completed"] == 25
    money = tether_json("cost", cwd=project, env=env)
    assert money["burn_dph"] == 0 and money["total_usd"] > 0
    status = tether_json("status", cwd=project, env=env)
    assert status["servers"] == [] and status["warnings"] == []


def test_down_pulls_verifies_and_destroys(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=10)
    env = cloud.env
    tether_json("up", "box", "--profile", "api", cwd=project, env=env)
    run_id = tether_json("run", "exp", "--on", "box", cwd=project, env=env)["run_id"]
    wait_status(project, run_id, {"completed"}, host="box")
    outcome = tether_json("down", "box", cwd=project, env=env)
    assert outcome["action"] == "destroy" and outcome["done"] is True and outcome["pull"]["verified"] is True
    assert (project / "results" / "results.json").is_file()
    assert cloud.emulator.billing_instances() == []


def test_destroy_is_refused_while_a_run_is_alive_and_when_the_server_cannot_be_read(
    tmp_path: Path, cloud: Cloud
) -> None:
    project = vast_project(tmp_path, cloud, items=100_000)
    env = cloud.env
    instance_id = tether_json("up", "box", "--profile", "api", cwd=project, env=env)["rented"]["instance_id"]
    run_id = tether_json("run", "exp", "--on", "box", "--", "--delay", "0.05", cwd=project, env=env)["run_id"]
    wait_status(project, run_id, {"running"}, host="box")
    alive = tether("destroy", "box", cwd=project, env=env)
    assert alive.returncode == 3 and "still alive" in alive.stderr
    down = tether("down", "box", cwd=project, env=env)
    assert down.returncode == 3 and "still alive" in down.stderr
    tether_json("cancel", run_id, cwd=project, env=env)
    # the server's SSH goes away: the final pull cannot happen, so nothing is destroyed
    cloud.hosts[int(instance_id)].stop()
    cut = tether("down", "box", "--no-more-work", cwd=project, env=env)
    assert cut.returncode == 3 and "Nothing was changed" in cut.stderr
    refused = tether("destroy", "box", cwd=project, env=env)
    assert refused.returncode == 3 and "Nothing was destroyed" in refused.stderr
    assert cloud.emulator.instance_json(int(instance_id)) is not None
    assert len(cloud.emulator.billing_instances()) == 1
    forced = tether_json("destroy", "box", "--discard-unsynced", cwd=project, env=env)
    assert forced["state"] == "gone"


def test_budget_and_provider_failure_mid_stop(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=5, policy="max_hourly_usd = 0.01\n")
    env = cloud.env
    over = tether("up", "box", "--profile", "api", cwd=project, env=env)
    assert over.returncode == 3 and "max_hourly_usd" in over.stderr
    assert cloud.emulator.instances == {}
    text = (project / "tether.toml").read_text().replace("max_hourly_usd = 0.01", "max_hourly_usd = 100")
    (project / "tether.toml").write_text(text)
    tether_json("up", "box", "--profile", "api", cwd=project, env=env)
    cloud.emulator.faults.server_error(50, status=503)
    failed = tether("stop", "box", "--no-pull", cwd=project, env=env, timeout=300)
    assert failed.returncode == 1 and "503" in failed.stderr
    cloud.emulator.faults.clear()
    listing = tether_json("ls", cwd=project, env=env)["instances"]
    assert listing[0]["state"] == "running"  # nothing recorded that did not happen
    assert tether_json("stop", "box", cwd=project, env=env)["state"] == "stopped"
