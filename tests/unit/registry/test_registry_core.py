"""Registry behaviour through its Python API: admission, refusal messages, bad input that loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tether.errors import AdmissionRefused, ConfigError, RegistryError
from tether.server.registry import NoRoom, Registry, agent_env, iso, pid_start


@pytest.fixture
def sleeper() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "120"])
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def read(path: Path) -> list[dict[str, object]]:
    data = json.loads(path.read_text())
    assert isinstance(data, list)
    return data


def test_file_keeps_the_runbook_shape_one_entry_per_line(registry: Registry, reg_path: Path) -> None:
    registry.register("agent-1", "A5_option_bias", 0)
    registry.register("agent-2", "I1_counterfactual", 8)
    text = reg_path.read_text()
    lines = text.splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 4
    for row in read(reg_path):
        for key in ("id", "experiment", "gpu_gb", "status", "started", "pid", "pid_start", "boot_id", "heartbeat"):
            assert key in row
        assert row["status"] == "running"
        assert row["pid"] == os.getpid()
    assert read(reg_path)[1]["gpus"] == [0]


def test_gpu_zero_is_always_admitted(registry: Registry) -> None:
    registry.register("big", "train", 23)
    for n in range(5):
        entry = registry.register(f"api-{n}", "calls", 0)
        assert entry.gpus == [] and entry.cuda_visible_devices == ""


def test_refusal_names_free_asked_and_holders(registry: Registry, reg_path: Path) -> None:
    registry.register("agent-1", "A5", 10)
    before = reg_path.read_bytes()
    with pytest.raises(NoRoom) as err:
        registry.register("agent-2", "I1", 20)
    msg = err.value.message
    assert "20 GB asked" in msg and "13.9 GB free" in msg and "agent-1 (A5, 10 GB)" in msg
    assert err.value.exit_code == 4 and isinstance(err.value, AdmissionRefused)
    holders = err.value.details["holders"]
    assert isinstance(holders, list) and holders[0]["id"] == "agent-1"
    assert reg_path.read_bytes() == before  # a refusal changes nothing


def test_two_gpus_get_placed_and_visible_devices(registry: Registry, gpus: Callable[[str], None]) -> None:
    gpus("2x48")
    a = registry.register("a", "x", 30)
    b = registry.register("b", "x", 30)
    c = registry.register("c", "x", 30)
    assert {a.cuda_visible_devices, b.cuda_visible_devices} == {"0", "1"}
    assert c.cuda_visible_devices == "0,1"  # 15 GB on each
    env = agent_env(c, "/w/AGENT_STATUS.json")
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["TETHER_AGENT_ID"] == "c"
    with pytest.raises(NoRoom, match=r"GPU 0: 3 GB|GPU 0: 2.9"):
        registry.register("d", "x", 10)


def test_cpu_only_server_refuses_gpu_requests(reg_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    registry = Registry(reg_path)
    assert registry.register("api", "calls", 0).status == "running"
    with pytest.raises(NoRoom, match="no GPU"):
        registry.register("gpu", "train", 1)
    assert [e["id"] for e in read(reg_path)] == ["api"]


def test_request_that_can_never_fit_is_refused_at_once(registry: Registry) -> None:
    start = time.monotonic()
    with pytest.raises(NoRoom, match="never fit"):
        registry.register("huge", "x", 100, wait=3600)
    assert time.monotonic() - start < 600  # did not wait out --wait (an hour: far from any pace of this machine)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), 1e9, "12", True])
def test_bad_gpu_gb_is_refused_and_nothing_is_lost(registry: Registry, reg_path: Path, bad: object) -> None:
    registry.register("keep", "x", 1)
    before = reg_path.read_bytes()
    with pytest.raises(ConfigError) as err:
        registry.register("bad", "x", bad)  # type: ignore[arg-type]
    assert "gpu_gb" in err.value.message
    assert reg_path.read_bytes() == before


def test_duplicate_live_id_is_refused_but_same_owner_is_idempotent(
    registry: Registry, reg_path: Path, sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    first = registry.register("agent-1", "A5", 4)
    assert registry.register("agent-1", "A5", 4) == first  # safe to run twice
    other = sleeper()
    with pytest.raises(RegistryError) as err:
        registry.register("agent-1", "I1", 4, pid=other.pid)
    assert "already running" in err.value.message and str(os.getpid()) in err.value.message
    assert len(read(reg_path)) == 1
    registry.release("agent-1")
    assert registry.register("agent-1", "I1", 4, pid=other.pid).status == "running"  # after done: a new entry
    assert [e["status"] for e in read(reg_path)] == ["completed", "running"]


def test_release_and_heartbeat(registry: Registry) -> None:
    registry.register("a", "x", 5)
    assert registry.release("a", "failed").status == "failed"
    assert registry.release("a").status == "failed"  # already finished: unchanged, no error
    with pytest.raises(RegistryError, match="No agent 'zzz'"):
        registry.release("zzz")
    with pytest.raises(ConfigError):
        registry.release("a", "running")
    registry.register("b", "x", 0, lease_s=100)
    assert registry.heartbeat("b").heartbeat is not None
    with pytest.raises(RegistryError, match="already failed"):
        registry.heartbeat("a")


def test_dead_owner_is_reclaimed(registry: Registry, sleeper: Callable[[], subprocess.Popen[bytes]]) -> None:
    owner = sleeper()
    registry.register("a", "x", 20, pid=owner.pid)
    with pytest.raises(NoRoom):
        registry.register("b", "x", 20)
    owner.kill()
    owner.wait()
    assert registry.register("b", "x", 20).gpus == [0]
    lost = next(e for e in registry.entries() if e.id == "a")
    assert lost.status == "lost" and f"process {owner.pid} is gone" in (lost.note or "")


def test_reused_pid_is_not_the_owner(registry: Registry, reg_path: Path) -> None:
    registry.register("a", "x", 20)
    rows = read(reg_path)
    assert rows[0]["pid_start"] == pid_start(os.getpid())
    rows[0]["pid_start"] = int(str(rows[0]["pid_start"])) - 1
    reg_path.write_text(json.dumps(rows))
    (entry,) = registry.entries()
    assert entry.status == "lost" and "newer process" in (entry.note or "")


def test_expired_lease_is_reclaimed(registry: Registry, reg_path: Path) -> None:
    registry.register("a", "x", 20, pid=0, lease_s=60)
    rows = read(reg_path)
    rows[0]["heartbeat"] = iso(time.time() - 120)
    reg_path.write_text(json.dumps(rows))
    assert registry.register("b", "x", 20).status == "running"
    a = next(e for e in registry.entries() if e.id == "a")
    assert a.status == "lost" and "lease 60 s" in (a.note or "")
    with pytest.raises(RegistryError, match="marked lost"):
        registry.heartbeat("a")


def test_history_is_pruned_after_its_time(reg_path: Path, gpus: Callable[[str], None]) -> None:
    registry = Registry(reg_path, history_s=3600)
    registry.register("old", "x", 0)
    registry.release("old")
    rows = read(reg_path)
    rows[0]["ended"] = iso(time.time() - 7200)
    reg_path.write_text(json.dumps(rows, indent=2))  # a hand-edited layout is read too
    registry.register("new", "x", 0)
    registry.release("new")
    assert [e.id for e in registry.entries()] == ["new"]


@pytest.mark.parametrize(
    "content,what",
    [('[{"id": "a", "experiment": "x", "gpu_gb": 1, "status": "runn', "not valid JSON"), ('{"id": "a"}', "not a list")],
)
def test_damaged_file_is_kept_aside_never_overwritten(
    registry: Registry, reg_path: Path, content: str, what: str
) -> None:
    reg_path.write_text(content)
    with pytest.raises(RegistryError) as err:
        registry.register("b", "x", 0)
    assert what in err.value.message and "tether agents repair" in (err.value.hint or "")
    assert reg_path.read_text() == content  # untouched
    kept = sorted(reg_path.parent.glob("AGENT_STATUS.json.bad-*"))
    assert len(kept) == 1 and kept[0].read_text() == content
    with pytest.raises(RegistryError):
        registry.entries()
    assert len(sorted(reg_path.parent.glob("AGENT_STATUS.json.bad-*"))) == 1  # the same copy, not one per call


def test_repair_salvages_readable_entries(registry: Registry, reg_path: Path) -> None:
    registry.register("alive", "x", 3)
    good = reg_path.read_text()
    reg_path.write_text(good.rstrip().rstrip("]") + ',\n  {"id": "half", "exper')  # torn write
    report = registry.repair()
    assert report.kept_aside is not None and Path(report.kept_aside).read_text().endswith('"exper')
    assert [e.id for e in report.entries] == ["alive"] and report.salvaged == 1
    assert read(reg_path)[0]["id"] == "alive"
    assert registry.register("more", "x", 0).status == "running"


def test_odd_entries_are_kept_and_reported(registry: Registry, reg_path: Path) -> None:
    odd = [
        {"id": "seed-style", "experiment": "A5", "gpu_gb": 6, "status": "running", "started": iso(time.time())},
        {"id": "weird", "experiment": "B", "gpu_gb": "lots", "status": "sleeping"},
        "not an object",
        {"experiment": "no id"},
    ]
    reg_path.write_text(json.dumps(odd))
    listing = registry.listing()
    problems = " | ".join(listing.problems)
    assert "'weird' has an unusable gpu_gb" in problems and "unknown status" in problems
    assert "entry 3 is not an object" in problems and "entry 4 has no usable id" in problems
    with pytest.raises(NoRoom) as err:
        registry.register("c", "x", 20)  # the seed-style entry's 6 GB still counts
    assert "seed-style (A5, 6 GB)" in err.value.message
    with pytest.raises(NoRoom, match=r"weird \(B, 24 GB: its gpu_gb is unusable, so it counts as the whole GPU\)"):
        registry.register("d", "x", 10)  # an unusable gpu_gb counts as the whole GPU, never as 0
    assert read(reg_path) == odd
    registry.release("weird")  # a person marks it done
    registry.register("d", "x", 10)
    rows = read(reg_path)
    assert [rows[0], *rows[2:4]] == [odd[0], *odd[2:4]]  # nothing dropped or rewritten
    assert isinstance(odd[1], dict)
    assert rows[1] == {**odd[1], "status": "completed", "ended": rows[1]["ended"]}  # only what `done` changes
    assert rows[4]["id"] == "d"


def test_duplicate_ids_in_the_file_are_reported(registry: Registry, reg_path: Path) -> None:
    now = iso(time.time())
    row = {"id": "twin", "experiment": "x", "gpu_gb": 5, "status": "running", "started": now}
    reg_path.write_text(json.dumps([row, dict(row)]))
    listing = registry.listing()
    assert any("'twin' is live in 2 entries" in p for p in listing.problems)
    assert listing.gpus is not None and listing.gpus[0].reserved_gb == pytest.approx(10)
    registry.release("twin")
    assert [r["status"] for r in read(reg_path)] == ["completed", "completed"]


def test_nvidia_smi_failure_refuses_gpu_work_and_loses_nothing(
    registry: Registry, reg_path: Path, gpus: Callable[[str], None]
) -> None:
    registry.register("a", "x", 2)
    for mode, words in (("fail", "exit code 9"), ("garbage", "unexpected")):
        gpus(mode)
        before = reg_path.read_bytes()
        with pytest.raises(RegistryError) as err:
            registry.register("b", "x", 2)
        assert words in err.value.message
        assert reg_path.read_bytes() == before
        assert registry.register(f"api-{mode}", "x", 0).status == "running"  # API-only work still runs
        listing = registry.listing()
        assert listing.gpu_error is not None and words in listing.gpu_error


@pytest.fixture
def lock_holder(reg_path: Path) -> Iterator[subprocess.Popen[str]]:
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'{os.getpid()} 2026-01-01T00:00:00Z hung\\n'.encode())\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(reg_path) + ".lock"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    with proc:  # waits, and closes its pipe
        pass


def test_hung_lock_holder_gives_a_clear_error(
    reg_path: Path, gpus: Callable[[str], None], lock_holder: subprocess.Popen[str]
) -> None:
    reg_path.write_text("[]\n")
    registry = Registry(reg_path, lock_timeout=0.3)
    with pytest.raises(RegistryError) as err:
        registry.register("a", "x", 0)
    assert f"held by pid {lock_holder.pid}" in err.value.message and "0.3 s" in err.value.message
    assert reg_path.read_text() == "[]\n"
    lock_holder.kill()
    lock_holder.wait()
    assert registry.register("a", "x", 0).status == "running"


def test_queue_is_visible_and_first_in_line_is_served_first(
    registry: Registry, reg_path: Path, sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    holder = sleeper()
    registry.register("holder", "x", 20, pid=holder.pid)
    # a waiter elsewhere: a queued ticket owned by a live process
    waiter = sleeper()
    rows = read(reg_path)
    rows.append(
        {
            "id": "big",
            "experiment": "x",
            "gpu_gb": 16,
            "status": "queued",
            "started": iso(time.time()),
            "pid": waiter.pid,
            "pid_start": pid_start(waiter.pid),
            "gpus": [],
        }
    )
    reg_path.write_text(json.dumps(rows))
    listing = registry.listing()
    assert listing.queue == ["big"]
    assert listing.to_dict()["entries"][1]["queue_position"] == 1
    with pytest.raises(NoRoom) as err:
        registry.register("small", "x", 2)  # fits, but may not overtake the queued job
    assert "queued ahead: big (16 GB)" in err.value.message
    assert registry.register("api", "x", 0).status == "running"
    waiter.kill()
    waiter.wait()
    assert registry.register("small", "x", 2).status == "running"  # a dead waiter holds no place


def test_wait_times_out_and_leaves_no_ticket(registry: Registry, reg_path: Path) -> None:
    registry.register("holder", "x", 20)
    with pytest.raises(NoRoom, match="20 GB asked"):
        registry.register("w", "x", 20, wait=0.3, poll_s=0.05)
    assert [r["id"] for r in read(reg_path)] == ["holder"]


def test_admitted_context_releases(registry: Registry) -> None:
    with registry.admitted("ok", "x", 1) as entry:
        assert entry.status == "running"
    with pytest.raises(ValueError), registry.admitted("bad", "x", 1):
        raise ValueError("boom")
    assert {e.id: e.status for e in registry.entries()} == {"ok": "completed", "bad": "failed"}
