"""The server-side watchdog: its rule (pure), what keeps a server busy, the stop with the instance's own key on the
emulator, the lock that keeps one watchdog per server, and the touch every tether server command leaves."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.emulator.vast import VastEmulator, load_offer_book, null_host_factory
from tether.provision import server_lib_stage
from tether.server import procinfo, watchdog
from tether.server.registry import Registry


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("now", "last_busy", "touched", "idle", "want"),
    [
        (100.0, None, None, None, "off"),
        (100.0, None, None, 60.0, "stop"),  # started at 0: idle 100 s
        (100.0, 50.0, None, 60.0, "wait"),  # busy 50 s ago
        (100.0, None, 70.0, 60.0, "wait"),  # a tether command 30 s ago
        (200.0, 50.0, 70.0, 60.0, "stop"),
    ],
)
def test_the_rule(now: float, last_busy: float | None, touched: float | None, idle: float | None, want: str) -> None:
    assert watchdog.decide(now, 0.0, last_busy, touched, idle)[0] == want


def test_the_rule_says_how_long_is_left() -> None:
    assert watchdog.decide(100.0, 0.0, 90.0, None, 60.0) == ("wait", 50.0)
    assert watchdog.decide(100.0, 0.0, None, None, 60.0) == ("stop", 100.0)


@pytest.fixture
def emu() -> Iterator[VastEmulator]:
    with VastEmulator(load_offer_book(), loading_s=5.0, host_factory=null_host_factory) as e:
        yield e


def _rented(emu: VastEmulator) -> int:
    offer = emu.search({"num_gpus": {"eq": 1}})[0]
    status, answer = emu.create(int(offer["id"]), {"image": "img", "disk": 10})
    assert status == 200
    emu.clock.advance(10)
    emu.settle()
    return int(answer["new_contract"])


def _server(tmp_path: Path, emu: VastEmulator, iid: int, idle_s: float | None = 60.0, poll_s: float = 0.05) -> str:
    root = tmp_path / "workspace"
    (root / ".tether").mkdir(parents=True)
    settings = {"idle_stop_s": idle_s, "poll_s": poll_s, "provider": "vast", "api_url": emu.url}
    (root / ".tether" / "watchdog.json").write_text(json.dumps(settings))
    env = root / ".tether" / "container.env"
    env.write_text(f"CONTAINER_ID={iid}\nCONTAINER_API_KEY={emu.instances[iid].container_key}\n")
    env.chmod(0o600)
    return str(root)


def _running_run(root: str, pid: int) -> None:
    folder = Path(root) / ".tether" / "runs" / "r1"
    folder.mkdir(parents=True)
    ident = procinfo.identity(pid)
    doc = {"id": "r1", "status": "running", "pid": pid, "pid_start": ident["pid_start"], "boot_id": ident["boot_id"]}
    (folder / "run.json").write_text(json.dumps(doc))


def test_an_idle_server_stops_itself_with_its_own_key(tmp_path: Path, emu: VastEmulator) -> None:
    iid = _rented(emu)
    other = _rented(emu)
    root = _server(tmp_path, emu, iid)
    clock = FakeClock()
    dog = watchdog.Watchdog(root, clock=clock)
    assert dog.look()[0] == "wait"
    clock.now += 61
    decision, idle_for, busy = dog.look()
    assert (decision, busy) == ("stop", []) and idle_for >= 60
    assert dog.stop_server(idle_for) is True
    assert emu.instances[iid].state == "stopped"  # stopped, never destroyed: its disk keeps the results
    assert emu.instances[other].state == "running"
    record = json.loads((Path(root) / ".tether" / "watchdog-stop.json").read_text())
    assert record["instance"] == str(iid) and record["at"] == clock.now
    # The account key was never needed: only the instance's own key was on the "server".
    assert emu.api_key not in "".join(p.read_text() for p in (Path(root) / ".tether").glob("*") if p.is_file())


def test_a_live_run_an_agent_and_a_touch_keep_the_server_up(tmp_path: Path, emu: VastEmulator) -> None:
    iid = _rented(emu)
    root = _server(tmp_path, emu, iid)
    clock = FakeClock()
    dog = watchdog.Watchdog(root, clock=clock)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _running_run(root, sleeper.pid)
        clock.now += 3600
        decision, _left, busy = dog.look()
        assert (decision, busy) == ("wait", ["r1"])
    finally:
        sleeper.kill()
        sleeper.wait()
    # The run's process is gone: idle counts from the last look that saw it alive.
    clock.now += 30
    assert dog.look()[0] == "wait"
    clock.now += 31
    assert dog.look()[0] == "stop"

    # An agent that holds its place (the runbook's own entry shape, no pid: held until a person marks it done).
    reg = Registry(os.path.join(root, "AGENT_STATUS.json"))
    reg.register("agent-1", "A5", 0.0)
    clock.now += 3600
    assert dog.look()[:3:2] == ("wait", ["agent-1"])
    reg.release("agent-1")
    clock.now += 3600
    assert dog.look()[0] == "stop"

    # A tether command touching the server counts as activity.
    watchdog.touch(root)
    fresh = watchdog.Watchdog(root, clock=FakeClock(time.time() + 59))
    fresh.started = 0.0
    assert fresh.look()[0] == "wait"
    assert emu.instances[iid].state == "running"


def test_never_means_never(tmp_path: Path, emu: VastEmulator) -> None:
    iid = _rented(emu)
    root = _server(tmp_path, emu, iid, idle_s=None)
    clock = FakeClock()
    dog = watchdog.Watchdog(root, clock=clock)
    clock.now += 10 * 86400
    assert dog.look()[0] == "off"


def test_an_owned_host_is_not_stopped_only_reported(tmp_path: Path, emu: VastEmulator) -> None:
    iid = _rented(emu)
    root = _server(tmp_path, emu, iid)
    settings = json.loads((Path(root) / ".tether" / "watchdog.json").read_text())
    (Path(root) / ".tether" / "watchdog.json").write_text(json.dumps({**settings, "provider": None}))
    clock = FakeClock()
    dog = watchdog.Watchdog(root, clock=clock)
    clock.now += 61
    decision, idle_for, _busy = dog.look()
    assert decision == "stop"
    assert dog.stop_server(idle_for) is False
    assert emu.instances[iid].state == "running"
    assert "no provider API" in (Path(root) / ".tether" / "watchdog.log").read_text()


def _server_env(root: str) -> dict[str, str]:
    stage, _version = server_lib_stage()
    lib = Path(root) / ".tether" / "lib"
    subprocess.run(["cp", "-r", str(stage), str(lib)], check=True)
    return {**os.environ, "PYTHONPATH": str(lib)}


def test_the_daemon_stops_the_server_once_and_a_second_watchdog_steps_aside(tmp_path: Path, emu: VastEmulator) -> None:
    iid = _rented(emu)
    root = _server(tmp_path, emu, iid, idle_s=0.5, poll_s=0.05)
    env = _server_env(root)
    argv = [sys.executable, "-S", "-m", "tether.server", "watchdog", "--root", root]
    started = subprocess.run([*argv, "--daemon"], env=env, timeout=30, check=False)
    assert started.returncode == 0  # it detached
    state = Path(root) / ".tether" / "watchdog.state.json"
    deadline = time.monotonic() + 30
    try:
        while emu.instances[iid].state != "stopped" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:  # the detached watchdog exits after its stop; end it here if it did not
        pid = json.loads(state.read_text())["pid"] if state.exists() else None
        if pid is not None and procinfo.proc_stat(pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
    assert emu.instances[iid].state == "stopped"
    stops = [r for r in emu.requests if r[0] == "PUT" and r[1] == f"/api/v0/instances/{iid}/"]
    assert len(stops) == 1
    log = (Path(root) / ".tether" / "watchdog.log").read_text()
    assert f"stopping instance {iid}" in log
    assert emu.instances[iid].container_key not in log


def test_one_watchdog_per_server(tmp_path: Path, emu: VastEmulator) -> None:
    iid = _rented(emu)
    root = _server(tmp_path, emu, iid, idle_s=3600.0, poll_s=0.05)
    env = _server_env(root)
    argv = [sys.executable, "-S", "-m", "tether.server", "watchdog", "--root", root]
    first = subprocess.Popen(argv, env=env)
    try:
        state = Path(root) / ".tether" / "watchdog.state.json"
        deadline = time.monotonic() + 30
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(state.read_text())["pid"] == first.pid
        second = subprocess.run(argv, env=env, timeout=30, capture_output=True, text=True, check=False)
        assert second.returncode == 1 and "another watchdog" in second.stderr
        again = subprocess.run([*argv, "--daemon"], env=env, timeout=30, check=False)
        assert again.returncode == 0
        time.sleep(0.3)  # the detached one looks for the lock at once; give it a moment to (not) take over
        assert json.loads(state.read_text())["pid"] == first.pid
    finally:
        first.terminate()
        first.wait(timeout=10)


def test_every_server_command_marks_the_server_touched(tmp_path: Path, emu: VastEmulator) -> None:
    iid = _rented(emu)
    root = _server(tmp_path, emu, iid)
    env = _server_env(root)
    touched = Path(root) / ".tether" / "touched"
    assert not touched.exists()
    subprocess.run([sys.executable, "-S", "-m", "tether.server", "version"], env=env, check=True, capture_output=True)
    assert touched.exists()
    os.utime(touched, (0, 0))
    subprocess.run(
        [sys.executable, "-S", "-m", "tether.server", "watchdog", "--root", root, "--once"],
        env=env,
        check=True,
        capture_output=True,
    )
    assert touched.stat().st_mtime == 0  # the watchdog's own look is not a tether command
