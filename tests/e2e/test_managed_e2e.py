"""Managed runs end to end: the real CLI, the Vast emulator, real sshd hosts; servers lost as the service loses
them (preempted, vanished), and the run still ends complete, in item order, with every server destroyed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import Cloud, vast_project
from tests.e2e.managed_helpers import (
    FAST,
    expected_results,
    journal_lines,
    preempt,
    running_instance,
    start_tether,
    vanish,
)
from tests.helpers import tether_json, wait_for


def test_a_sharded_run_survives_a_preemption_and_a_vanished_host(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=200)
    ctl = start_tether(
        "run", "exp", "--managed", "--shards", "2", *FAST, "--json", "--", "--delay", "0.1", cwd=project, env=cloud.env
    )
    first = running_instance(cloud, 0)
    wait_for(lambda: journal_lines(cloud, first.id) >= 10, 60, "shard 0 to record items")
    preempt(cloud, first.id)
    second = running_instance(cloud, 1)
    wait_for(lambda: journal_lines(cloud, second.id) >= 10, 60, "shard 1 to record items")
    vanish(cloud, second.id)
    out, err = ctl.communicate(timeout=240)
    assert ctl.returncode == 0, err
    doc = json.loads(out)
    assert doc["status"] == "completed"
    assert sum(s["recoveries"] for s in doc["shards"]) >= 2
    results = json.loads((project / "results" / "results.json").read_text())
    assert results == {"completed": 200, "total": 200, "results": expected_results(200)}
    assert cloud.emulator.billing_instances() == []  # every server it rented is gone
    progress = tether_json("progress", cwd=project, env=cloud.env)
    (view,) = progress["managed"]
    assert view["id"] == doc["id"] and view["status"] == "completed" and view["completed"] == 200
    assert "preempted" in err and "vanished" in err, err
    status = tether_json("status", cwd=project, env=cloud.env)
    assert [m["id"] for m in status["managed"]] == [doc["id"]]  # the status report (and the dashboard) show it
