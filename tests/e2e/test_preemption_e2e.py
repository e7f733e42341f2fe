"""An outbid instance shows as preempted (not "stopped by you"), costs only its disk, and `up` starts it again."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Cloud, vast_project
from tests.helpers import tether_json


def test_preempted_instance_is_named_so_and_up_brings_it_back(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=3)
    env = cloud.env
    up = tether_json("up", "box", "--profile", "api", cwd=project, env=env)
    instance_id = int(up["rented"]["instance_id"])

    cloud.emulator.preempt(instance_id)
    raw = cloud.emulator.instance_json(instance_id)
    assert raw is not None and raw["intended_status"] == "running" and raw["actual_status"] == "stopped"

    listing = tether_json("ls", cwd=project, env=env)["instances"]
    row = next(i for i in listing if i["name"] == "box")
    assert row["state"] == "preempted"
    assert row["hourly_now"] == row["storage_dph"]  # the disk bills, the GPU does not

    again = tether_json("up", "box", cwd=project, env=env)
    assert str(again["rented"]["instance_id"]) == str(instance_id)  # the same instance, not a second rental
    assert [i["name"] for i in tether_json("ls", cwd=project, env=env)["instances"] if i["state"] == "running"] == [
        "box"
    ]
    assert len(cloud.emulator.billing_instances()) == 1
