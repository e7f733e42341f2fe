"""Ctrl-C says what still bills: a real `tether` process gets SIGINT (os.kill on its pid) at the moment that
matters, and before it exits 130 it names what keeps running or billing (servers with their $/hr, the run left
running) and the exact commands that pick each up or stop it; with --json also one valid JSON document.

- `tether up NAME --profile api` on the Vast emulator, interrupted after the rental while it waits to log in
  (the emulated instance refuses the key at first, as the vendor's fresh instances do): the server bills, and
  `tether up NAME` finishes the set-up, `tether down/destroy NAME` stop it;
- `tether run EXP --managed`, interrupted while its shard computes on a rented server: the run keeps going on a
  billing server; `tether run EXP --managed` picks it up (and that works), `tether cancel ID` stops it;
- `tether run EXP --local --follow`, interrupted while it follows: the run keeps running (it is still running,
  and `tether cancel ID` stops it).

SIGTERM (`kill PID`, a harness's timeout) unwinds the same way and exits 143; a server killed while it comes up
is destroyed, and the report says nothing bills.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cloud, vast_project
from tests.e2e.managed_helpers import FAST
from tests.helpers import tether, wait_for, write_project
from tether import schemas
from tether.leftovers import gather
from tether.state import InstanceRecord, ManagedRunRecord, ManagedShardRecord, RunRecord, open_state


def start(args: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tether", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ctrl_c(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[str, str]:
    """SIGINT (or ``sig``: SIGTERM unwinds the same way) to the process we started (by its pid), then its output;
    it must exit 130 (143 for SIGTERM)."""
    code = 143 if sig == signal.SIGTERM else 130
    os.kill(proc.pid, sig)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"tether did not exit after Ctrl-C: {err[-2000:]}") from None
    assert proc.returncode == code, (proc.returncode, out, err[-3000:])
    assert "Traceback" not in err, err
    return out, err


def state_has(predicate: Any) -> Any:
    with open_state() as st:
        return predicate(st)


def json_doc(out: str, code: int = 130) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(out)  # one document, nothing else on stdout
    schemas.validate("error", doc)
    assert doc["exit_code"] == code and doc["kind"] == "Interrupted"
    return doc


def follow(project: Path, flags: list[str]) -> tuple[subprocess.Popen[str], RunRecord]:
    """`tether run exp --local --follow FLAGS` started, and its run once it is live."""
    proc = start(["run", "exp", "--local", "--follow", *flags, "--", "--delay", "0.2"], project)
    try:
        rec = wait_for(
            lambda: state_has(lambda st: next((r for r in st.runs() if r.status in ("starting", "running")), None)),
            timeout=60,
            what="the run to start",
        )
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc, rec


def test_ctrl_c_during_up_names_the_billing_server_and_how_to_finish_or_stop(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=5, ssh_wait_seconds=300)
    cloud.emulator.faults.refuse_keys(600)  # the fresh instance refuses the key: `up` keeps trying to log in
    proc = start(["up", "box", "--profile", "api", "--json"], project, cloud.env)
    try:
        rec = wait_for(
            lambda: state_has(lambda st: (r := st.instance("box")) is not None and r.state == "running" and r),
            timeout=120,
            what="the rental to be recorded running",
        )
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    out, err = ctrl_c(proc)
    (billing,) = cloud.emulator.billing_instances()  # it really bills on
    doc = json_doc(out)
    (server,) = doc["left"]["servers"]
    assert server["name"] == "box" and server["state"] == "running" and server["rate"] == "full"
    assert server["usd_per_hr"] == pytest.approx(billing.dph_total, rel=1e-3) and server["usd_per_hr"] > 0
    assert server["commands"] == ["tether up box", "tether down box", "tether destroy box"]
    assert doc["left"]["usd_per_hr"] == pytest.approx(server["usd_per_hr"])
    assert f"${server['usd_per_hr']:.4f}/hr" in err and "box" in err
    for command in server["commands"]:
        assert f"`{command}`" in err
    assert rec.instance_id == str(billing.id)


def test_ctrl_c_in_a_managed_run_says_it_runs_on_and_how_to_pick_it_up(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=400)
    proc = start(["run", "exp", "--managed", *FAST, "--", "--delay", "0.2"], project, cloud.env)

    def shard_running(st: Any) -> Any:
        for m in st.managed_runs():
            for s in st.managed_shards(m.id):
                if s.status == "running" and s.server and s.run:
                    return m, s
        return None

    try:
        run, shard = wait_for(lambda: state_has(shard_running), timeout=180, what="the shard to run on its server")
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    _, err = ctrl_c(proc)
    assert cloud.emulator.billing_instances(), "the server should still be billing"
    assert f"managed run {run.id}" in err and shard.server in err
    assert "`tether run exp --managed`" in err and f"`tether cancel {run.id}`" in err
    assert f"{shard.server} (running, $" in err and "/hr" in err
    # What it said works: the managed run is picked up by a new controller, then cancelled (servers destroyed).
    again = start(["run", "exp", "--managed", *FAST, "--", "--delay", "0.2"], project, cloud.env)
    try:
        wait_for(
            lambda: state_has(lambda st: (m := st.managed_run(run.id)) is not None and m.controller_pid == again.pid),
            timeout=60,
            what="the new controller to pick the run up",
        )
        cancelled = tether("cancel", run.id, cwd=project, env=cloud.env, timeout=300)
        assert cancelled.returncode == 0, cancelled.stderr
        again.communicate(timeout=120)
    finally:
        if again.poll() is None:
            again.kill()
            again.communicate()
    assert cloud.emulator.billing_instances() == []


def test_ctrl_c_while_a_managed_run_sets_up_its_server_does_not_wait_for_it(tmp_path: Path, cloud: Cloud) -> None:
    """Ctrl-C while the controller's job rents and sets up the shard's server (here: waiting up to 300 s for the
    fresh instance to accept the key) used to wait for that job, silently, while the server billed. Now it
    says what bills and exits at once; the rental is recorded, so nothing is left unknown."""
    project = vast_project(tmp_path, cloud, items=50, ssh_wait_seconds=300)
    cloud.emulator.faults.refuse_keys(600)
    proc = start(["run", "exp", "--managed", "--json", *FAST], project, cloud.env)
    try:
        rec = wait_for(
            lambda: state_has(
                lambda st: next((r for r in st.instances() if r.instance_id and r.state == "running"), None)
            ),
            timeout=120,
            what="the shard's server to be rented",
        )
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    os.kill(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)  # the job it abandons would hold it for 300 s
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("Ctrl-C waited for the job in flight") from None
    assert proc.returncode == 130, err[-2000:]
    doc = json_doc(out)
    assert [s["name"] for s in doc["left"]["servers"]] == [rec.name] and doc["left"]["usd_per_hr"] > 0
    (managed,) = doc["left"]["managed"]
    assert managed["commands"] == ["tether run exp --managed", f"tether cancel {managed['id']}"]
    assert f"{rec.name} (running, $" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_ctrl_c_while_following_says_the_run_keeps_running(tmp_path: Path, as_json: bool, sig: int) -> None:
    """Ctrl-C, and SIGTERM (`kill PID`, a harness's timeout), which unwinds the same way and exits 143."""
    project = write_project(tmp_path / "proj", items=400)
    proc, rec = follow(project, ["--json"] if as_json else [])
    out, err = ctrl_c(proc, sig)
    try:
        assert f"run {rec.id}" in err and "keeps running" in err
        assert f"`tether logs {rec.id} -f`" in err and f"`tether cancel {rec.id}`" in err
        if as_json:
            (left,) = json_doc(out, 143 if sig == signal.SIGTERM else 130)["left"]["runs"]
            assert left["id"] == rec.id and left["commands"] == [f"tether logs {rec.id} -f", f"tether cancel {rec.id}"]
        else:
            assert out == ""
    finally:
        stopped = tether("cancel", rec.id, "--json", cwd=project)
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["cancelled"] is True, stopped.stdout


def test_what_still_bills_is_read_from_state_by_its_rules() -> None:
    """The rules of `leftovers.gather` on real SQLite state: the price that applies in each state (the bid for an
    interruptible rental, the storage part when stopped, unknown while the rental is in flight), destroyed
    servers left out, a managed run listed only when this process drove it (another controller still drives
    its own), a plain run only when live and started by this command, a managed run's shard runs not twice."""
    now = time.time()
    with open_state() as st:

        def server(name: str, state: str, instance_id: str | None, meta: dict[str, Any] | None = None) -> None:
            st.upsert_instance(
                InstanceRecord(name, "vast", instance_id, None, "/workspace", state, 0.5, 0.02, now, now, meta or {})
            )

        server("full", "running", "1")
        server("bid", "running", "2", {"bid_usd": 0.125})
        server("stopped", "stopped", "3")
        server("renting", "creating", None)
        server("gone", "gone", "5")
        for run_id, pid in (("m-mine", os.getpid()), ("m-other", os.getpid() + 1)):
            record = ManagedRunRecord(
                run_id,
                "exp",
                1,
                [],
                "api",
                [],
                None,
                60.0,
                "journal",
                "running",
                None,
                now,
                None,
                None,
                None,
                pid,
                False,
                now,
            )
            shard = ManagedShardRecord(
                run_id,
                0,
                "running",
                "full",
                False,
                f"{run_id}-r",
                1,
                0,
                0,
                0,
                10,
                0,
                None,
                None,
                None,
                0,
                None,
                None,
                now,
            )
            st.add_managed_run(record, [shard])

        def run(run_id: str, status: str, started: float) -> None:
            st.add_run(RunRecord(run_id, "exp", "local", [], "/", "results", "log", "s", started, None, None, status))

        run("live", "running", now)
        run("older", "running", now - 3600)
        run("done", "completed", now)
        run("m-mine-r", "running", now)
        left = gather(st, since=now - 1, pid=os.getpid(), setting_up="full")
    prices = {s.name: (s.state, s.usd_per_hr, s.rate) for s in left.servers}
    assert prices == {
        "full": ("running", 0.5, "full"),
        "bid": ("running", 0.125, "full"),
        "stopped": ("stopped", 0.02, "storage"),
        "renting": ("creating", None, "unknown"),
    }
    assert left.usd_per_hr == pytest.approx(0.645)
    assert [s.commands for s in left.servers if s.name == "full"] == [
        ["tether up full", "tether down full", "tether destroy full"]
    ]
    assert [s.commands for s in left.servers if s.name == "renting"] == [["tether ls", "tether destroy renting"]]
    assert any("its rental was cut short; `tether ls` adopts what it made" in line for line in left.lines())
    assert [(m.id, m.servers, m.commands) for m in left.managed] == [
        ("m-mine", ["full"], ["tether run exp --managed", "tether cancel m-mine"])
    ]
    assert [r.id for r in left.runs] == ["live"]
    assert "$0.6450/hr in all" in left.sentence() and "price unknown" in left.sentence()


def test_ctrl_c_with_the_json_reader_gone_still_exits_130_with_the_report(tmp_path: Path) -> None:
    """Ctrl-C reaches a whole pipeline (`tether run ... --json | jq`): the reader is gone when tether writes its
    JSON document. The report still goes to stderr and the exit is 130, not a BrokenPipeError."""
    project = write_project(tmp_path / "proj", items=400)
    proc, rec = follow(project, ["--json"])
    try:
        assert proc.stdout is not None
        proc.stdout.close()  # the reader of stdout is gone
        os.kill(proc.pid, signal.SIGINT)
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    try:
        assert proc.returncode == 130, err
        assert f"`tether cancel {rec.id}`" in err and "BrokenPipe" not in err and "Exception ignored" not in err
    finally:
        tether("cancel", rec.id, cwd=project)


def test_sigterm_while_the_rented_server_loads_destroys_it_and_says_nothing_bills(tmp_path: Path, cloud: Cloud) -> None:
    """A kill while `up` waits for its fresh instance to come up: that instance is destroyed before tether exits
    (it never ran anything), the output says so, and the report says that nothing bills, which the provider
    confirms."""
    project = vast_project(tmp_path, cloud, items=5)
    cloud.emulator.loading_s = 600.0  # the instance keeps loading
    proc = start(["up", "box", "--profile", "api"], project, cloud.env)
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        while not any("to run: loading" in line for line in seen):  # off a terminal, each step is a line
            line = proc.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
        os.kill(proc.pid, signal.SIGTERM)
        out, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = "".join(seen) + rest
    assert proc.returncode == 143, (out, err[-3000:])
    assert "destroying it" in err and "no server bills" in err and "Traceback" not in err, err
    assert cloud.emulator.billing_instances() == []
    assert state_has(lambda st: st.instance("box")) is None
