"""Managed runs against bad input and faults: each test checks the message a user sees and that nothing was lost
(results complete and in order, or kept), nothing rented twice and nothing left billing."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cloud, vast_project
from tests.e2e.managed_helpers import (
    FAST,
    expected_results,
    journal_lines,
    kill_runs,
    running_instance,
    shard_instances,
    start_tether,
    vanish,
)
from tests.helpers import tether, wait_for
from tether import managed
from tether.checkpoint.shard import shard_of
from tether.config import load
from tether.context import Ctx
from tether.state import open_state

RUNBOOK = '''\
"""The runbook's own protocol: results_partial.json every 5 items, resume by position, no tether.checkpoint."""
import json, os, sys, time
from pathlib import Path

n = int(sys.argv[1])
out = Path(os.environ.get("TETHER_RESULTS_DIR", "results"))
out.mkdir(parents=True, exist_ok=True)
partial = out / "results_partial.json"
ck = {"completed": 0, "total": n, "results": []}
if partial.exists():
    ck = json.load(open(partial))
    print("resuming at", ck["completed"], flush=True)
for i in range(ck["completed"], n):
    time.sleep(0.1)
    ck["results"].append({"id": "i%03d" % i, "value": i * 2})
    ck["completed"] = i + 1
    if (i + 1) % 5 == 0:
        json.dump(ck, open(partial, "w"))
json.dump(ck, open(out / "results.json", "w"))
partial.unlink()
'''

CRASH = '''\
"""Shard 1 crashes the same way wherever it runs (the experiment's own bug)."""
import os, time
from tether.checkpoint import run_batch

def work(item):
    time.sleep(0.02)
    if os.environ.get("TETHER_SHARD", "").startswith("1/") and item["n"] > 10:
        raise SystemExit("the model refused item %s" % item["id"])
    return {"id": item["id"], "value": item["n"] * 2}

items = [{"id": "i%03d" % n, "n": n} for n in range(40)]
run_batch(work, items, key=lambda it: it["id"], progress=False, retries=0, retry_on=(ValueError,))
'''


def add_experiment(project: Path, name: str, code: str, command: str, items: int) -> None:
    (project / f"{name}.py").write_text(code)
    text = (project / "tether.toml").read_text()
    block = f'\n[experiments.{name}]\ncommand = "{command}"\nkind = "api"\nitems = {items}\nitem_seconds = 0.05\n'
    head, sep, tail = text.partition("\n[vast]")
    (project / "tether.toml").write_text(head + block + sep + tail)


def rented_ever(cloud: Cloud) -> int:
    return len(cloud.emulator.instances)


def test_more_shards_than_items_is_refused_before_renting(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=3)
    result = tether("run", "exp", "--managed", "--shards", "5", cwd=project, env=cloud.env)
    assert result.returncode == 2
    assert "--shards 5 is more than the 3 items of exp" in result.stderr and "nothing was rented" in result.stderr
    assert rented_ever(cloud) == 0


def test_code_without_the_checkpoint_library_is_not_sharded_but_managed_alone_resumes_its_partial_file(
    tmp_path: Path, cloud: Cloud
) -> None:
    project = vast_project(tmp_path, cloud, items=3)
    add_experiment(project, "runbook", RUNBOOK, "python3 runbook.py 60", 60)
    refused = tether("run", "runbook", "--managed", "--shards", "2", cwd=project, env=cloud.env)
    assert refused.returncode == 2
    assert "needs experiment code that uses tether.checkpoint" in refused.stderr
    assert "runbook.py does not import tether.checkpoint" in refused.stderr
    assert rented_ever(cloud) == 0

    ctl = start_tether("run", "runbook", "--managed", *FAST, "--json", cwd=project, env=cloud.env)
    first = running_instance(cloud, 0)
    partial = cloud.root_of(first.id) / "proj" / "results" / "results_partial.json"
    wait_for(lambda: partial.exists() and json.loads(partial.read_text())["completed"] >= 20, 60, "20 items")
    wait_for(lambda: (tmp_path / "synced").exists() or _synced_partial(first.id) >= 20, 30, "a sync")
    vanish(cloud, first.id)
    _out, err = ctl.communicate(timeout=240)
    assert ctl.returncode == 0, err
    results = json.loads((project / "results" / "results.json").read_text())
    assert results["results"] == expected_results(60)
    (second,) = [i for i in cloud.emulator.instances.values() if i.id != first.id]
    logs = "".join(p.read_text() for p in (cloud.root_of(second.id) / ".tether" / "runs").glob("*/log"))
    assert "resuming at" in logs  # the new server went on from the partial file, not from item 0
    assert cloud.emulator.billing_instances() == []


def _synced_partial(instance_id: int) -> int:
    home = Path(os.environ["TETHER_HOME"]) / "managed"
    for path in home.glob("*/shard-0/results/results_partial.json"):
        try:
            return int(json.loads(path.read_text())["completed"])
        except (OSError, ValueError, KeyError):
            return 0
    return 0


def test_a_budget_too_small_for_one_server_pauses_before_renting_and_resumes_with_more(
    tmp_path: Path, cloud: Cloud
) -> None:
    project = vast_project(tmp_path, cloud, items=20)
    result = tether("run", "exp", "--managed", "--max-usd", "0.0001", *FAST, cwd=project, env=cloud.env)
    assert result.returncode == 3, result.stderr
    assert "paused" in result.stderr and "past --max-usd $0.0001" in result.stderr
    assert "nothing was rented for shard 0" in result.stderr
    assert rented_ever(cloud) == 0
    again = tether("run", "exp", "--managed", "--max-usd", "1", *FAST, cwd=project, env=cloud.env)
    assert again.returncode == 0, again.stderr
    assert "Picking up managed run" in again.stderr
    assert json.loads((project / "results" / "results.json").read_text())["results"] == expected_results(20)
    assert rented_ever(cloud) == 1 and cloud.emulator.billing_instances() == []


def test_503s_while_replacing_a_lost_server_are_retried_and_nothing_is_rented_twice(
    tmp_path: Path, cloud: Cloud
) -> None:
    project = vast_project(tmp_path, cloud, items=60)
    ctl = start_tether("run", "exp", "--managed", *FAST, "--json", "--", "--delay", "0.1", cwd=project, env=cloud.env)
    first = running_instance(cloud, 0)
    wait_for(lambda: journal_lines(cloud, first.id) >= 10, 60, "items recorded")
    cloud.emulator.faults.server_error(8)  # more than the client's own retries: the controller must retry
    vanish(cloud, first.id)
    _out, err = ctl.communicate(timeout=240)
    assert ctl.returncode == 0, err
    assert "Retrying" in err or "retrying" in err
    assert json.loads((project / "results" / "results.json").read_text())["results"] == expected_results(60)
    assert rented_ever(cloud) == 2 and cloud.emulator.billing_instances() == []


def test_a_controller_killed_mid_replacement_is_picked_up_and_rents_nothing_twice(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=60)
    args = ("run", "exp", "--managed", *FAST, "--json", "--", "--delay", "0.1")
    ctl = start_tether(*args, cwd=project, env=cloud.env)
    first = running_instance(cloud, 0)
    wait_for(lambda: journal_lines(cloud, first.id) >= 10, 60, "items recorded")
    vanish(cloud, first.id)
    wait_for(lambda: rented_ever(cloud) == 2, 60, "the replacement's create")
    ctl.send_signal(signal.SIGKILL)  # while the replacement loads
    ctl.communicate(timeout=30)
    again = start_tether(*args, cwd=project, env=cloud.env)
    _out, err = again.communicate(timeout=240)
    assert again.returncode == 0, err
    assert "Picking up managed run" in err
    assert json.loads((project / "results" / "results.json").read_text())["results"] == expected_results(60)
    assert rented_ever(cloud) == 2  # the replacement was adopted, not rented again
    assert cloud.emulator.billing_instances() == []


def test_a_second_controller_refuses_and_cancel_stops_it_all_keeping_results(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=200)
    ctl = start_tether(
        "run", "exp", "--managed", "--shards", "2", *FAST, "--", "--delay", "0.1", cwd=project, env=cloud.env
    )
    first = running_instance(cloud, 0)
    wait_for(lambda: journal_lines(cloud, first.id) >= 10, 60, "items recorded")
    second = tether("run", "exp", "--managed", "--shards", "2", *FAST, "--json", cwd=project, env=cloud.env)
    assert second.returncode == 3
    doc = json.loads(second.stdout)
    assert "A controller is already driving managed run exp-m" in doc["error"] and "rents nothing" in doc["error"]
    before = rented_ever(cloud)
    assert before <= 2
    cancelled = tether("cancel", "exp", "--json", cwd=project, env=cloud.env, timeout=300)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    ctl.communicate(timeout=120)
    assert rented_ever(cloud) == before and cloud.emulator.billing_instances() == []
    kept = (project / "results" / "results.journal.jsonl").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in kept[1:]]
    assert len(ids) >= 10 and len(ids) == len(set(ids))  # every synced item, once


def test_a_shard_that_fails_the_same_way_twice_stops_with_its_log_tail_and_the_other_completes(
    tmp_path: Path, cloud: Cloud
) -> None:
    project = vast_project(tmp_path, cloud, items=3)
    add_experiment(project, "crash", CRASH, "python3 crash.py", 40)
    result = tether("run", "crash", "--managed", "--shards", "2", *FAST, cwd=project, env=cloud.env, timeout=300)
    assert result.returncode == 1
    assert "failed the same way on two servers in a row" in result.stderr
    assert "the model refused item" in result.stderr  # the log tail says why
    doc = json.loads(tether("progress", "--json", cwd=project, env=cloud.env).stdout)
    (view,) = doc["managed"]
    by_shard = {s["shard"]: s["status"] for s in view["shards"]}
    assert by_shard == {0: "completed", 1: "failed"}
    assert rented_ever(cloud) == 3  # shard 1 on two servers, then no more
    assert cloud.emulator.billing_instances() == []
    # What finished is home, merged: every item of the shard that completed, and the other's journaled ones; the
    # journal beside it is what the same command resumes from.
    kept = json.loads((project / "results" / "results.json").read_text())
    ids = [r["id"] for r in kept["results"]]
    assert ids == sorted(ids) and kept["completed"] == len(ids) < kept["total"] == 40
    assert {f"i{n:03d}" for n in range(40) if shard_of(f"i{n:03d}", 2) == 0} <= set(ids)
    journal = (project / "results" / "results.journal.jsonl").read_text().splitlines()[1:]
    assert sorted(json.loads(line)["id"] for line in journal if '"ok":true' in line) == ids


def test_a_preemption_during_the_final_pull_loses_nothing(
    tmp_path: Path, cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    project_root = vast_project(tmp_path, cloud, items=30)
    for key, value in cloud.env.items():
        monkeypatch.setenv(key, value)
    project = load(project_root / "tether.toml")
    hit: list[Any] = []

    def say(text: str) -> None:
        if "pulling its results" in text and not hit:
            (inst,) = [i for i in shard_instances(cloud, 0) if i.state == "running"]
            hit.append(inst.id)
            kill_runs(cloud.root_of(inst.id))
            cloud.emulator.preempt(inst.id)

    with open_state() as st:
        ctx = Ctx(project, st, say=say)
        opts = managed.Options(shards=1, sync_every=1.0, poll_s=0.3, args=("--delay", "0.02"))
        outcome = managed.run_managed(ctx, "exp", opts)
    assert hit, "the final pull was never reached"
    assert outcome.status == "completed", outcome.reason
    assert outcome.shards[0]["recoveries"] == 1
    results = json.loads((project_root / "results" / "results.json").read_text())
    assert results == {"completed": 30, "total": 30, "results": expected_results(30)}
    assert cloud.emulator.billing_instances() == []
