"""Real processes: SIGKILLed agents are reclaimed, a reused pid is not the owner, the CLI runs on a bare python3."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tests.helpers import FAKES
from tether.server.registry import Registry

SRC = str(Path(tether.__file__).resolve().parents[1])


def agent_code(path: Path, ident: str, gb: float) -> list[str]:
    code = (
        "import sys, time\n"
        "from tether.server.registry import Registry\n"
        "e = Registry(sys.argv[1]).register(sys.argv[2], 'exp', float(sys.argv[3]))\n"
        "print(e.cuda_visible_devices, flush=True)\n"
        "time.sleep(120)\n"
    )
    return [sys.executable, "-c", code, str(path), ident, str(gb)]


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(OSError), p:  # waits, and closes its pipes
            pass


def env_with(mode: str) -> dict[str, str]:
    return dict(os.environ, FAKE_NVIDIA_SMI=mode, PATH=f"{FAKES}{os.pathsep}{os.environ['PATH']}")


def test_sigkilled_agents_are_reclaimed(
    tmp_path: Path, spawned: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_with("2x48")
    monkeypatch.setenv("FAKE_NVIDIA_SMI", "2x48")
    monkeypatch.setenv("PATH", env["PATH"])
    path = tmp_path / "AGENT_STATUS.json"
    for n in range(2):
        p = subprocess.Popen(agent_code(path, f"a{n}", 40), stdout=subprocess.PIPE, text=True, env=env)
        spawned.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() in ("0", "1")
    registry = Registry(path)
    with pytest.raises(Exception, match="40 GB asked"):
        registry.register("next", "x", 40)
    for p in spawned:
        p.send_signal(signal.SIGKILL)
        p.wait()
    entry = registry.register("next", "x", 40)
    assert entry.cuda_visible_devices in ("0", "1")
    lost = {e.id: e for e in registry.entries() if e.status == "lost"}
    assert set(lost) == {"a0", "a1"} and all("is gone" in (e.note or "") for e in lost.values())


def _spawn_with_pid(target: int) -> subprocess.Popen[bytes] | None:
    """Start `sleep` with pid `target` by setting ns_last_pid (root only); None if that cannot be done."""
    for _ in range(50):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
                fh.write(str(target - 1))
        except OSError:
            return None
        proc = subprocess.Popen(["sleep", "120"])
        if proc.pid == target:
            return proc
        proc.kill()
        proc.wait()
    return None


def test_reused_pid_is_not_taken_for_the_owner(
    tmp_path: Path, spawned: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NVIDIA_SMI", "1x24")
    monkeypatch.setenv("PATH", env_with("1x24")["PATH"])
    registry = Registry(tmp_path / "AGENT_STATUS.json")
    owner = subprocess.Popen(["sleep", "120"])
    registry.register("a", "x", 20, pid=owner.pid)
    owner.kill()
    owner.wait()
    # Process start times count clock ticks (1/100 s): a pid reused within the owner's own tick could not be told
    # apart (nor can it happen for real: the pid space would have to wrap in 10 ms). Let the tick pass first.
    # (read the file itself: a registry call would already mark the dead owner's entry lost)
    owner_start = next(e for e in json.loads((tmp_path / "AGENT_STATUS.json").read_text()) if e["id"] == "a")[
        "pid_start"
    ]
    ticks = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + 5
    while float(Path("/proc/uptime").read_text().split()[0]) * ticks <= owner_start + 1:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    impostor = _spawn_with_pid(owner.pid)
    if impostor is None:
        pytest.skip("cannot steer pid allocation here (needs root and /proc/sys/kernel/ns_last_pid)")
    try:
        assert impostor.pid == owner.pid
        entry = registry.register("b", "x", 20)
        assert entry.status == "running"
        a = next(e for e in registry.entries() if e.id == "a")
        assert a.status == "lost" and "newer process" in (a.note or "")
    finally:
        impostor.kill()
        impostor.wait()


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The server-side CLI as a bare python3 runs it: no site-packages, tether from PYTHONPATH."""
    return subprocess.run(
        [sys.executable, "-S", "-m", "tether.server.registry_cli", *args],
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=SRC),
        timeout=60,
    )


def test_cli_json_contract_and_exit_codes(tmp_path: Path) -> None:
    env = env_with("1x24")
    root = ["--root", str(tmp_path)]
    r = run_cli(["register", "--id", "a", "--experiment", "A5", "--gpu-gb", "16", "--json", *root], env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["cuda_visible_devices"] == "0" and doc["env"]["TETHER_AGENT_ID"] == "a"
    assert doc["entry"]["pid"] is None and doc["entry"]["lease_s"] == 3600

    r = run_cli(["register", "--id", "b", "--experiment", "I1", "--gpu-gb", "16", "--json", *root], env)
    assert r.returncode == 4
    err = json.loads(r.stdout)["error"]
    assert err["type"] == "NoRoom" and err["details"]["asked_gb"] == 16 and err["details"]["holders"][0]["id"] == "a"
    assert r.stderr.startswith("error: Not enough GPU memory") and r.stderr.count("\n") == 1

    r = run_cli(["--json", *root], env)
    listing = json.loads(r.stdout)
    assert r.returncode == 0 and [e["id"] for e in listing["entries"]] == ["a"]
    assert listing["gpus"][0]["reserved_gb"] == 16

    assert run_cli(["heartbeat", "a", *root], env).returncode == 0
    r = run_cli(["done", "a", "--json", *root], env)
    assert json.loads(r.stdout)["entry"]["status"] == "completed"
    r = run_cli(["done", "nobody", *root], env)
    assert r.returncode == 1 and "No agent 'nobody'" in r.stderr
    r = run_cli(["register", "--id", "x", "--experiment", "e", "--gpu-gb", "-3", *root], env)
    assert r.returncode == 2 and "0 or more" in r.stderr
    r = run_cli(["register", "--id", "x", *root], env)
    assert r.returncode == 2 and "required" in r.stderr


def test_repair_rebuilds_from_live_processes(tmp_path: Path, spawned: list[subprocess.Popen[str]]) -> None:
    env = env_with("1x24")
    path = tmp_path / "AGENT_STATUS.json"
    job_env = dict(
        env,
        TETHER_AGENT_ID="job-7",
        TETHER_AGENT_EXPERIMENT="A5",
        TETHER_AGENT_GPU_GB="12",
        CUDA_VISIBLE_DEVICES="0",
        TETHER_AGENT_STATUS=str(path),  # repair adopts only the processes of its own registry
    )
    job = subprocess.Popen(["sleep", "120"], env=job_env, text=True)
    spawned.append(job)
    path.write_text("this is not json")
    r = run_cli(["--path", str(path)], env)
    assert r.returncode == 1 and "not valid JSON" in r.stderr and "repair" in r.stderr
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{job.pid}/environ").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    r = run_cli(["repair", "--json", "--path", str(path)], env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert Path(report["kept_aside"]).read_text() == "this is not json"
    rows = {e["id"]: e for e in json.loads(path.read_text())}
    assert rows["job-7"]["pid"] == job.pid and rows["job-7"]["gpu_gb"] == 12 and rows["job-7"]["gpus"] == [0]
