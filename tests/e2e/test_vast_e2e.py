"""offers → up → run → progress → pull → destroy through the real CLI, against the Vast emulator over real HTTP,
with every rented instance a real sshd host."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.e2e.conftest import Cloud, vast_project
from tests.helpers import tether, tether_json, wait_status


def test_offers_up_run_progress_pull_destroy(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=30)
    env = cloud.env
    offers = tether_json("offers", "--profile", "inference", "--for", "exp", cwd=project, env=env)
    prices = [o["dph_total"] for o in offers["offers"]]
    assert prices and prices == sorted(prices)
    assert all(o["gpu_ram_gb"] >= 24 and o["num_gpus"] == 1 for o in offers["offers"])
    assert all(o["est_cost_usd"] is not None for o in offers["offers"])

    up = tether_json("up", "box", "--profile", "api", cwd=project, env=env)
    instance_id = up["rented"]["instance_id"]
    assert up["setup"] == "ran"
    cheapest_api = tether_json("offers", "--profile", "api", cwd=project, env=env)["offers"]
    assert up["rented"]["dph_total"] <= min(o["dph_total"] for o in cheapest_api) + 1e-9
    label = cloud.emulator.instance_json(int(instance_id))
    assert label is not None and label["label"] == "tether:proj:box"

    run_id = tether_json("run", "exp", "--on", "box", cwd=project, env=env)["run_id"]
    run = wait_status(project, run_id, {"completed"}, host="box")
    assert run["completed"] == 30

    refused = tether("destroy", "box", cwd=project, env=env)
    assert refused.returncode == 3 and "not yet brought home" in refused.stderr
    assert cloud.emulator.instance_json(int(instance_id)) is not None  # still there

    pulled = tether_json("pull", "box", cwd=project, env=env)["pulls"][0]
    assert pulled["verified"] is True
    local = project / "results" / "results.json"
    remote = cloud.root_of(instance_id) / "proj" / "results" / "results.json"
    assert hashlib.sha256(local.read_bytes()).digest() == hashlib.sha256(remote.read_bytes()).digest()
    assert json.loads(local.read_text())["completed"] == 30

    gone = tether_json("destroy", "box", cwd=project, env=env)
    assert gone["state"] == "gone"
    assert cloud.emulator.billing_instances() == []
    again = tether_json("destroy", "box", cwd=project, env=env)
    assert again["already"] is True
    listing = tether_json("ls", "--all", cwd=project, env=env)["instances"]
    assert [(i["name"], i["state"]) for i in listing] == [("box", "gone")]


def test_stop_pulls_first_and_start_rereads_the_new_port(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=5)
    env = cloud.env
    up = tether_json("up", "box", "--profile", "api", cwd=project, env=env)
    run_id = tether_json("run", "exp", "--on", "box", cwd=project, env=env)["run_id"]
    wait_status(project, run_id, {"completed"}, host="box")
    cloud.emulator.faults.new_port_on_restart(True)
    stopped = tether_json("stop", "box", cwd=project, env=env)
    assert stopped["state"] == "stopped" and stopped["pull"]["verified"] is True
    assert (project / "results" / "results.json").is_file()
    started = tether_json("start", "box", cwd=project, env=env)
    assert started["address"] != up["rented"]["address"]
    progress = tether_json("progress", "box", cwd=project, env=env)
    assert progress["hosts"][0]["error"] is None and progress["hosts"][0]["runs"][0]["id"] == run_id
    assert tether_json("destroy", "box", cwd=project, env=env)["state"] == "gone"


def test_no_key_and_bad_key_are_clear_and_rent_nothing(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud)
    no_key = tether(
        "up", "box", "--profile", "api", cwd=project, env={"VAST_URL": cloud.env["VAST_URL"], "VAST_API_KEY": ""}
    )
    assert no_key.returncode == 1 and "VAST_API_KEY" in no_key.stderr
    bad = tether("offers", cwd=project, env={**cloud.env, "VAST_API_KEY": "wrong-key"})
    assert bad.returncode == 1 and "rejected the API key" in bad.stderr
    assert "wrong-key" not in bad.stderr + bad.stdout
    assert cloud.emulator.instances == {}


def test_max_price_below_every_offer_rents_nothing(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud)
    result = tether("up", "box", "--profile", "inference", "--max-price", "0.001", cwd=project, env=cloud.env)
    assert result.returncode == 1 and "the cheapest found is" in result.stderr
    assert cloud.emulator.instances == {}


def test_unknown_profile_and_bad_query_are_refused(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud)
    result = tether("offers", "--profile", "inferense", cwd=project, env=cloud.env)
    assert result.returncode == 2 and "did you mean 'inference'" in result.stderr
    result = tether("offers", "--query", "gpu_rma>=24", cwd=project, env=cloud.env)
    assert result.returncode == 2 and "gpu_ram" in result.stderr
