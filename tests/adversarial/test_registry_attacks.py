"""Attacks on the agent registry: odd figures in hand-written entries, runbook entries that never heart-beat, a lock
file deleted or replaced while held, and processes that only pretend to be agents. Each test checks the message
and that nothing in the file was lost or changed."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.errors import NoRoom
from tether.server.registry import Registry, iso

SRC = str(Path(tether.__file__).resolve().parents[1])


def read(path: Path) -> list[Any]:
    rows = json.loads(path.read_text())
    assert isinstance(rows, list)
    return rows


def same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


# --------------------------------------------------------------------------------------------------------------
# gpu_gb the module cannot use is counted conservatively, never as 0

UNUSABLE = {
    "string": '"12"',
    "words": '"lots"',
    "negative": "-5",
    "nan": "NaN",
    "inf": "Infinity",
    "minus_inf": "-Infinity",
    "null": "null",
    "bool": "true",
    "list": "[4]",
    "missing": None,
}


def seed_row(gpu_gb_token: str | None, **extra: Any) -> str:
    """One runbook-shape entry as a line of JSON text (tokens like NaN are written as they are)."""
    gb = "" if gpu_gb_token is None else f'"gpu_gb": {gpu_gb_token}, '
    more = "".join(f', "{k}": {json.dumps(v)}' for k, v in extra.items())
    return f'{{"id": "odd", "experiment": "A5", {gb}"status": "running", "started": "{iso(time.time())}"{more}}}'


@pytest.mark.parametrize("token", list(UNUSABLE.values()), ids=list(UNUSABLE))
def test_unusable_gpu_gb_counts_as_the_whole_gpu(registry: Registry, reg_path: Path, token: str | None) -> None:
    row = seed_row(token)
    reg_path.write_text(f"[\n  {row}\n]\n")
    before = reg_path.read_bytes()
    with pytest.raises(NoRoom) as err:
        registry.register("b", "x", 1)
    assert "1 GB asked, 0 GB free" in err.value.message
    assert "odd (A5, 24 GB: its gpu_gb is unusable, so it counts as the whole GPU)" in err.value.message
    holders = err.value.details["holders"]
    assert isinstance(holders, list)
    (holder,) = holders
    assert holder["id"] == "odd" and holder["gpus"] == [0] and holder["whole_gpu"] is True
    assert reg_path.read_bytes() == before  # the refusal changed nothing

    listing = registry.listing()
    assert any("entry 'odd' has an unusable gpu_gb" in p and "whole of each GPU" in p for p in listing.problems)
    (shown,) = listing.to_dict()["entries"]
    assert shown["gpu_gb"] is None and "whole of each GPU" in shown["gpu_gb_counted"]
    assert listing.gpus is not None and listing.gpus[0].free_gb == 0

    assert registry.register("api", "x", 0).status == "running"  # API-only work still runs beside it
    assert reg_path.read_text().splitlines()[1] == f"  {row},"  # its line is kept byte for byte
    registry.release("odd")  # a person marks it done: only status and ended change
    rows = read(reg_path)
    original = json.loads(row)
    assert set(rows[0]) == {*original, "ended"} and rows[0]["status"] == "completed"
    assert all(same(rows[0][k], v) for k, v in original.items() if k != "status")
    assert registry.register("b", "x", 1).gpus == [0]


def test_huge_gpu_gb_counts_as_it_says(registry: Registry, reg_path: Path) -> None:
    row = seed_row("1e12")
    reg_path.write_text(f"[\n  {row}\n]\n")
    before = reg_path.read_bytes()
    with pytest.raises(NoRoom) as err:
        registry.register("b", "x", 1)
    assert "0 GB free; held by odd (A5, 1000000000 GB)" in err.value.message
    assert reg_path.read_bytes() == before
    problems = registry.listing().problems
    assert any("gpu_gb of 1000000000000, more than any server has" in p for p in problems)


def test_unusable_gpu_gb_holds_only_the_gpus_it_names(
    registry: Registry, reg_path: Path, gpus: Callable[[str], None]
) -> None:
    gpus("2x48")
    row = seed_row('"lots"', gpus=[1])
    reg_path.write_text(f"[\n  {row}\n]\n")
    assert registry.register("b", "x", 40).gpus == [0]
    with pytest.raises(NoRoom) as err:
        registry.register("c", "x", 8)
    assert "GPU 1: 0" in err.value.message and "odd (A5, 48 GB on GPU 1: its gpu_gb is unusable" in err.value.message
    assert read(reg_path)[0] == json.loads(row)


# --------------------------------------------------------------------------------------------------------------
# an entry in the runbook's own shape (no pid, no heartbeat) is not expired by age


def server_agents(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The server side's ``agents`` command as a bare python3 runs it."""
    return subprocess.run(
        [sys.executable, "-S", "-m", "tether.server", "agents", *args],
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=SRC),
        timeout=60,
        check=False,
    )


def test_runbook_entry_counts_until_a_person_ends_it(registry: Registry, reg_path: Path) -> None:
    started = iso(time.time() - 5 * 3600)
    row = {"id": "agent-1", "experiment": "A5_option_bias", "gpu_gb": 20, "status": "running", "started": started}
    reg_path.write_text(json.dumps([row]))
    before = reg_path.read_bytes()
    with pytest.raises(NoRoom) as err:
        registry.register("b", "x", 10)
    assert "10 GB asked, 3.9 GB free; held by agent-1 (A5_option_bias, 20 GB)" in err.value.message
    assert reg_path.read_bytes() == before  # five hours without a heartbeat: still counted, not marked lost
    assert [(e.id, e.status) for e in registry.entries()] == [("agent-1", "running")]

    listing = registry.listing()
    (shown,) = listing.to_dict()["entries"]
    assert shown["live"] is True and shown["status"] == "running"
    assert shown["held_until"] == (
        f"marked done or removed by hand: no pid and no heartbeat, so it never expires (registered {started})"
    )
    (warning,) = listing.problems
    assert "'agent-1' has no pid and no heartbeat and was registered 5.0 h ago" in warning
    assert "tether agents done agent-1" in warning

    env = dict(os.environ)
    text = server_agents("--path", str(reg_path), env=env)
    assert text.returncode == 0, text.stderr
    line = next(x for x in text.stdout.splitlines() if x.startswith("agent-1"))
    assert "held until marked done or removed by hand: no pid and no heartbeat, so it never expires" in line
    assert "5.0 h ago" in text.stderr
    assert reg_path.read_bytes() == before  # listing changed nothing

    assert registry.release("agent-1").status == "completed"  # the person says it is done
    assert registry.register("b", "x", 10).gpus == [0]
    rows = read(reg_path)
    assert rows[0] == {**row, "status": "completed", "ended": rows[0]["ended"]}


def test_a_lease_still_expires_an_entry_that_has_one(registry: Registry, reg_path: Path) -> None:
    row = {"id": "leased", "experiment": "A5", "gpu_gb": 20, "status": "running", "started": iso(time.time() - 120)}
    reg_path.write_text(json.dumps([{**row, "lease_s": 60}]))
    assert registry.register("b", "x", 10).status == "running"
    (lost,) = [e for e in registry.entries() if e.id == "leased"]
    assert lost.status == "lost" and "lease 60 s" in (lost.note or "")


# --------------------------------------------------------------------------------------------------------------
# a lock file removed or replaced while held does not let a second writer in

HOLDER = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "os.ftruncate(fd, 0)\n"
    "os.write(fd, f'{os.getpid()} 2026-01-01T00:00:00Z holder\\n'.encode())\n"
    "print('locked', flush=True)\n"
    "sys.stdin.readline()\n"
)

REGISTER = (
    "import json, sys\n"
    "from tether.errors import TetherError\n"
    "from tether.server.registry import Registry\n"
    "smi = sys.argv[4] or None\n"
    "try:\n"
    "    e = Registry(sys.argv[1], lock_timeout=60, nvidia_smi=smi).register(sys.argv[2], 'x', float(sys.argv[3]))\n"
    "    print(json.dumps({'gpus': e.gpus}), flush=True)\n"
    "except TetherError as exc:\n"
    "    print(json.dumps({'error': exc.message}), flush=True)\n"
)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(OSError), proc:  # waits, and closes its pipes
            pass


def hold_lock(lock: Path, procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """A process that holds the flock on whatever file ``lock`` names now, until its stdin gets a line."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def let_go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0


def register_in_process(
    path: Path, ident: str, gb: float, procs: list[subprocess.Popen[str]], smi: str = ""
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", REGISTER, str(path), ident, str(gb), smi], stdout=subprocess.PIPE, text=True
    )
    procs.append(proc)
    return proc


def open_inodes(pid: int) -> set[int]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.add(os.stat(fd).st_ino)
        except OSError:
            continue
    return found


def poll(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def remove_or_replace(lock: Path, how: str) -> None:
    if how == "removed":
        lock.unlink()
    else:
        other = lock.with_name("other.lock")
        other.write_text("")
        os.replace(other, lock)


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_waiter_on_a_removed_lock_file_does_not_run_beside_the_new_holder(
    registry: Registry, reg_path: Path, procs: list[subprocess.Popen[str]], how: str
) -> None:
    registry.register("keep", "x", 0)
    before = reg_path.read_bytes()
    lock = Path(registry.lock_path)
    first = hold_lock(lock, procs)
    old_inode = lock.stat().st_ino
    waiter = register_in_process(reg_path, "w", 0, procs)
    poll(lambda: old_inode in open_inodes(waiter.pid), "the waiter to open the lock file")
    remove_or_replace(lock, how)
    second = hold_lock(lock, procs)  # locks the file the path names now
    new_inode = lock.stat().st_ino
    let_go(first)  # the waiter can now lock the old file, which the path no longer names
    poll(
        lambda: waiter.poll() is not None or new_inode in open_inodes(waiter.pid),
        "the waiter to move to the new lock file",
    )
    assert waiter.poll() is None, "the waiter wrote while another process held the lock"
    assert reg_path.read_bytes() == before
    let_go(second)
    out, _ = waiter.communicate(timeout=60)
    assert json.loads(out) == {"gpus": []}
    assert [r["id"] for r in read(reg_path)] == ["keep", "w"]


SLOW_SMI = """#!/bin/sh
# nvidia-smi that says it was asked, then answers only once the test lets it
case "$1" in
    --query-gpu=*)
        : > "{dir}/entered"
        while [ ! -e "{dir}/go" ]; do sleep 0.02; done
        echo "0, GPU-5f1e3b9a-2c4d-4e7f-9a1b-3c4d5e6f7a8b, 24564, 1"
        ;;
esac
"""


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_holder_whose_lock_file_was_removed_writes_nothing(
    registry: Registry, reg_path: Path, tmp_path: Path, procs: list[subprocess.Popen[str]], how: str
) -> None:
    registry.register("keep", "x", 4)
    smi = tmp_path / "slow-nvidia-smi"
    smi.write_text(SLOW_SMI.replace("{dir}", str(tmp_path)))
    smi.chmod(0o755)
    holder = register_in_process(reg_path, "a", 10, procs, smi=str(smi))
    poll(lambda: (tmp_path / "entered").exists(), "the holder to ask nvidia-smi under the lock")
    remove_or_replace(Path(registry.lock_path), how)
    assert registry.register("b", "x", 0).status == "running"  # gets the new lock file at once
    (tmp_path / "go").write_text("")
    out, _ = holder.communicate(timeout=60)
    message = json.loads(out)["error"]
    assert f"The registry lock {registry.lock_path} was removed or replaced while this process held it" in message
    assert "nothing was written" in message
    assert [r["id"] for r in read(reg_path)] == ["keep", "b"]  # b, written meanwhile, is not lost
    assert not list(tmp_path.glob(".AGENT_STATUS.json.tmp-*"))
    again = register_in_process(reg_path, "a", 10, procs, smi=str(smi))
    out, _ = again.communicate(timeout=60)
    assert json.loads(out) == {"gpus": [0]}
    assert [r["id"] for r in read(reg_path)] == ["keep", "b", "a"]


# --------------------------------------------------------------------------------------------------------------
# repair adopts only the processes of this registry


def test_repair_adopts_only_processes_that_name_this_registry(
    registry: Registry, reg_path: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tags = {"TETHER_AGENT_EXPERIMENT": "A5", "TETHER_AGENT_GPU_GB": "6", "CUDA_VISIBLE_DEVICES": "0"}
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]

    def start(argv: list[str], env: dict[str, str], cwd: Path = tmp_path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=cwd, text=True)
        procs.append(proc)
        return proc

    mine = start(sleep, {"TETHER_AGENT_ID": "mine", "TETHER_AGENT_STATUS": str(reg_path), **tags})
    relative = start(sleep, {"TETHER_AGENT_ID": "mine-rel", "TETHER_AGENT_STATUS": "AGENT_STATUS.json", **tags})
    start(sleep, {"TETHER_AGENT_ID": "stranger", **tags})  # an agent id but no registry: someone else's process
    start(sleep, {"TETHER_AGENT_ID": "theirs", "TETHER_AGENT_STATUS": str(elsewhere / "AGENT_STATUS.json"), **tags})
    start(sleep, {"TETHER_AGENT_ID": "theirs-rel", "TETHER_AGENT_STATUS": "AGENT_STATUS.json", **tags}, elsewhere)
    start([*sleep, f"TETHER_AGENT_ID=argv-only TETHER_AGENT_STATUS={reg_path}"], {})  # only its arguments say so
    damaged = (
        b'[{"id": "kept", "experiment": "B", "gpu_gb": 2, "status": "running", "started": "2026-02-11T10:00:00Z"}, {"id'
    )
    reg_path.write_bytes(damaged)

    env = dict(os.environ)
    done = server_agents("repair", "--path", str(reg_path), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"rebuilt {reg_path}: 3 entries (1 salvaged, 2 found from live processes)")
    rows = {r["id"]: r for r in read(reg_path)}
    assert set(rows) == {"kept", "mine", "mine-rel"}
    assert (rows["mine"]["pid"], rows["mine-rel"]["pid"]) == (mine.pid, relative.pid)
    assert rows["mine"]["gpu_gb"] == 6 and rows["mine"]["gpus"] == [0]
    (aside,) = tmp_path.glob("AGENT_STATUS.json.bad-*")
    assert aside.read_bytes() == damaged  # the damaged file is kept as it was
    assert not list(elsewhere.iterdir())  # the other registry is untouched
