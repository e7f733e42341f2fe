"""Laptop-free: after `tether run` every local tether process has ended; the run finishes on the emulated Vast
server, the server's own watchdog stops it after idle_stop with its results intact (with the instance's own key,
never the account's), nothing bills the GPU after that, and `tether start` -> `pull` -> `destroy` work as usual."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.e2e.conftest import Cloud, vast_project
from tests.helpers import tether, tether_json, wait_for, wait_status
from tether.state import open_state
from tether.testing.webhook import WebhookReceiver


def test_the_server_stops_itself_when_nothing_runs_and_tether_learns_it(tmp_path: Path, cloud: Cloud) -> None:
    with WebhookReceiver() as hook:
        _laptop_closed(tmp_path, cloud, hook)


def _laptop_closed(tmp_path: Path, cloud: Cloud, hook: WebhookReceiver) -> None:
    notify = f'[notify]\nurls = ["json://127.0.0.1:{hook.port}/hook"]\n'
    project = vast_project(tmp_path, cloud, items=5, policy="idle_stop = 0.2", profiles=notify)  # 12 s
    env = cloud.env
    emu = cloud.emulator
    up = tether_json("up", "box", "--profile", "api", cwd=project, env=env)
    iid = int(up["rented"]["instance_id"])
    assert up["watchdog"]["idle_stop_s"] == 12.0 and "stops the server" in up["watchdog"]["does"]
    run_id = tether_json("run", "exp", "--on", "box", cwd=project, env=env)["run_id"]
    # Every local tether process has ended now (each command above ran to its end): the laptop is closed.
    root = cloud.root_of(iid)
    final = root / "proj" / "results" / "results.json"
    wait_for(final.is_file, timeout=60, what="the run to finish on the server")
    wait_for(lambda: emu_state(cloud, iid) == "stopped", timeout=90, what="the server to stop itself")

    # Both ends were announced by the server itself, once each, with no tether process running here.
    got = hook.wait(2, timeout=30)
    titles = [r.json()["title"] for r in got]
    assert titles == ["tether proj: run completed", "tether proj: server stopped"], titles
    assert run_id in got[0].json()["message"] and "stopped itself" in got[1].json()["message"]
    inst = emu.instances[iid]
    assert inst.intended == "stopped" and not inst.preempted  # a stop asked for, not an outbid
    assert json.loads(final.read_text())["completed"] == 5  # its results are intact on its disk
    stop_record = json.loads((root / ".tether" / "watchdog-stop.json").read_text())
    assert stop_record["instance"] == str(iid)
    # Only the instance's own key was on the server; the account key never went there.
    on_server = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert not any(emu.api_key.encode() in p.read_bytes() for p in on_server)
    container_env = root / ".tether" / "container.env"
    assert container_env.stat().st_mode & 0o777 == 0o600

    # No GPU billing once stopped: the emulator accrues only the storage part from then on.
    billed = emu.account_total()
    time.sleep(1.0)
    assert emu.account_total() - billed <= inst.storage_total_cost * 2.0 / 3600 + 1e-9

    # tether learns it when it next looks.
    listed = tether_json("ls", cwd=project, env=env)["instances"]
    assert listed[0]["state"] == "stopped" and "not by tether" in listed[0]["stopped_by"]
    started = tether("start", "box", cwd=project, env=env)
    assert started.returncode == 0, started.stderr
    assert "stopped by its watchdog at" in started.stderr
    home = Path(os.environ["TETHER_HOME"])
    with open_state(home / "state.db") as st:
        events = [(e.source, e.state, e.ts) for e in st.events("box")]
        meta = st.instance("box").meta  # type: ignore[union-attr]
    assert ("watchdog", "stopped", stop_record["at"]) in events  # the stop is in the ledger at its own time
    assert meta["last_stop"]["by"] == "watchdog"

    pulled = tether_json("pull", "box", cwd=project, env=env)["pulls"][0]
    assert pulled["verified"] is True
    assert json.loads((project / "results" / "results.json").read_text())["completed"] == 5
    progress = tether_json("progress", "box", cwd=project, env=env)
    assert progress["hosts"][0]["runs"][0]["id"] == run_id
    assert tether_json("destroy", "box", cwd=project, env=env)["state"] == "gone"
    assert emu.billing_instances() == []
    assert len(hook.requests) == 2  # tether's own commands announced neither end again


def test_idle_stop_never_leaves_the_server_up(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=3, policy='idle_stop = "never"')
    env = cloud.env
    up = tether_json("up", "box", "--profile", "api", cwd=project, env=env)
    iid = int(up["rented"]["instance_id"])
    assert up["watchdog"]["idle_stop_s"] is None
    run_id = tether_json("run", "exp", "--on", "box", cwd=project, env=env)["run_id"]
    wait_status(project, run_id, {"completed"}, host="box")
    state = cloud.root_of(iid) / ".tether" / "watchdog.state.json"
    wait_for(lambda: state.is_file() and json.loads(state.read_text())["decision"] == "off", what="the watchdog's look")
    assert emu_state(cloud, iid) == "running"
    assert tether_json("destroy", "box", "--discard-unsynced", cwd=project, env=env)["state"] == "gone"


def emu_state(cloud: Cloud, iid: int) -> str:
    doc = cloud.emulator.instance_json(iid)
    assert doc is not None
    return str(doc["actual_status"])
