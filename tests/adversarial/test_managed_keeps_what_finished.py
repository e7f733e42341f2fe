"""A managed run keeps what finished, through the CLI on the Vast emulator: failed items do not throw a run away
(its finished results come home merged, the message says where, and the same command resumes from every finished
item), a controller killed while its final destroy is in flight rents nothing twice, and the final pull is the one
verified pull that never writes through a link."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial.test_trust_boundary import set_up
from tests.e2e.conftest import Cloud, vast_project
from tests.e2e.managed_helpers import FAST, expected_results, start_tether
from tests.helpers import tether, wait_for
from tether import managed
from tether.config import load
from tether.errors import SyncError
from tether.state import ManagedRunRecord, ManagedShardRecord, open_state
from tether.testing.sshd import SshdHost

REFUSALS = '''\
"""An eval where the model refuses an item while refuse.txt is there (the normal case: a few refusals)."""
import os, time
from pathlib import Path
from tether.checkpoint import run_batch

def work(item):
    time.sleep(0.01)
    print("computed", item["id"], flush=True)
    if item["id"] == "i007" and Path("refuse.txt").exists():
        raise ValueError("the model refused item i007")
    return {"id": item["id"], "value": item["n"] * 2}

items = [{"id": "i%03d" % n, "n": n} for n in range(40)]
run_batch(work, items, key=lambda it: it["id"], progress=False, retries=0)
'''


def _use(project: Path, code: str) -> None:
    (project / "exp.py").write_text(code)


def _computed(cloud: Cloud, instance_ids: list[int]) -> list[str]:
    """The items the experiment computed on these servers (its run logs)."""
    out: list[str] = []
    for iid in instance_ids:
        for log in (cloud.root_of(iid) / ".tether" / "runs").glob("*/log"):
            out += [ln.split()[1] for ln in log.read_text().splitlines() if ln.startswith("computed ")]
    return out


def test_a_failed_item_keeps_the_others_merged_home_and_the_same_command_resumes_them(
    tmp_path: Path, cloud: Cloud
) -> None:
    project = vast_project(tmp_path, cloud, items=40)
    _use(project, REFUSALS)
    (project / "refuse.txt").write_text("refuse i007\n")
    first = tether("run", "exp", "--managed", "--shards", "2", *FAST, cwd=project, env=cloud.env, timeout=300)
    assert first.returncode == 1, first.stderr
    kept = project / "results" / "results.json"
    assert f"What finished is kept in {kept}" in first.stderr  # a path, never "None"
    assert "39 of 40 items finished, 1 failed" in first.stderr
    doc = json.loads(kept.read_text())
    assert (doc["completed"], doc["total"], doc["failed"]) == (39, 40, 1)
    assert doc["results"] == [r for r in expected_results(40) if r["id"] != "i007"]  # in item order
    assert (project / "results" / "results.journal.jsonl").is_file()
    assert cloud.emulator.billing_instances() == []
    rented_first = sorted(cloud.emulator.instances)

    (project / "refuse.txt").unlink()  # the model answers now
    again = tether("run", "exp", "--managed", "--shards", "2", *FAST, cwd=project, env=cloud.env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(kept.read_text()) == {"completed": 40, "total": 40, "results": expected_results(40)}
    new = [i for i in sorted(cloud.emulator.instances) if i not in rented_first]
    assert _computed(cloud, new) == ["i007"]  # every finished item was resumed, only the refused one ran again
    assert not (project / "results" / "results.journal.jsonl").exists()  # all of it is in results.json now
    assert cloud.emulator.billing_instances() == []


def test_a_controller_killed_while_its_final_destroy_is_in_flight_rents_nothing_twice(
    tmp_path: Path, cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = vast_project(tmp_path, cloud, items=20)
    ctl = start_tether("run", "exp", "--managed", *FAST, cwd=project, env=cloud.env)
    real_destroy = cloud.emulator.destroy
    killed: list[int] = []

    def destroy_after_killing_the_controller(instance_id: int) -> Any:
        if not killed:  # the controller dies with this request in flight; the service still destroys
            ctl.send_signal(signal.SIGKILL)
            ctl.communicate(timeout=30)
            killed.append(ctl.returncode)
        return real_destroy(instance_id)

    monkeypatch.setattr(cloud.emulator, "destroy", destroy_after_killing_the_controller)
    wait_for(lambda: killed or ctl.poll() is not None, 240, "the controller's final destroy")
    assert killed == [-signal.SIGKILL], "the controller ended before its final destroy"
    assert len(cloud.emulator.instances) == 1

    again = tether("run", "exp", "--managed", *FAST, cwd=project, env=cloud.env, timeout=240)
    assert again.returncode == 0, again.stderr
    assert len(cloud.emulator.instances) == 1  # the finished shard was not rented and computed again
    results = json.loads((project / "results" / "results.json").read_text())
    assert results == {"completed": 20, "total": 20, "results": expected_results(20)}
    assert cloud.emulator.billing_instances() == []


def test_the_final_pull_is_the_one_verified_pull_and_never_writes_through_a_link(
    tmp_path: Path, sshd_host: SshdHost
) -> None:
    """A shard's final pull is ``tether pull``'s: verified against the server's manifest, and refused (nothing
    copied) where the shard's local copy lies behind a link, instead of writing through it."""
    project_root, code = set_up(tmp_path, sshd_host)
    (code / "results" / "results.json").write_text('{"completed": 1, "total": 1, "results": [\n{"id": 1}\n]}\n')
    project = load(project_root / "tether.toml")
    run = ManagedRunRecord(
        id="exp-mlink",
        experiment="exp",
        shards=1,
        args=[],
        profile=None,
        hosts=["lab1"],
        max_usd=None,
        sync_every=60.0,
        mode="journal",
        status="running",
        reason=None,
        started=1.0,
        ended=None,
        results_path=None,
        cost_usd=0.0,
        controller_pid=None,
        cancel_requested=False,
        updated=1.0,
    )
    shard = ManagedShardRecord(
        run_id=run.id,
        shard=0,
        status="finishing",
        server="lab1",
        own_host=True,
        run="r1",
        attempt=0,
        recoveries=0,
        restarts=0,
        completed=1,
        total=1,
        synced=0,
        last_sync=None,
        last_seen=None,
        last_failure=None,
        failures=0,
        reason=None,
        retry_at=None,
        updated=1.0,
    )
    with open_state() as st:
        st.add_managed_run(run, [shard])
        state_path = st.path
    home = managed.shard_dir(run.id, 0)
    beside = tmp_path / "X"
    beside.mkdir()
    home.mkdir(parents=True)
    (home / "results").symlink_to(beside)  # a pull through it would write tmp_path/X/results.json
    with pytest.raises(SyncError, match="never pulls through a link"):
        managed.final_job(project, state_path, lambda _s: None, run, shard)
    assert list(beside.iterdir()) == []
    (home / "results").unlink()
    done = managed.final_job(project, state_path, lambda _s: None, run, shard)
    assert (
        done.verified
        and (home / "results" / "results.json").read_bytes() == (code / "results" / "results.json").read_bytes()
    )
