"""Real faults against real sshd/rsync/tmux: each checks the message a user sees and that nothing was lost."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.errors import CommandFailed, SSHError, SyncError
from tether.testing.proxy import CutProxy
from tether.testing.sshd import SshdHost, free_port, generate_key
from tether.transport.base import Backoff
from tether.transport.ssh import SSHTransport
from tether.transport.tmux import TmuxSessions

Connect = Callable[..., SSHTransport]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_closed_port_is_unreachable_after_bounded_retries(connect: Connect, recorder: Any) -> None:
    port = free_port()
    t = connect(f"root@127.0.0.1:{port}", runner=recorder, backoff=Backoff(retries=2, first=0.05))
    with pytest.raises(SSHError) as info:
        t.run(["true"])
    assert f"Cannot reach 127.0.0.1:{port} at 127.0.0.1:{port} after 3 attempts: connection refused" in (
        info.value.message
    )
    assert info.value.hint and "server is running" in info.value.hint
    assert len(recorder.argvs) == 3  # 1 + 2 retries, then it gives up


def test_wrong_key_is_authentication_refused_and_not_retried(
    sshd_host: SshdHost, connect: Connect, recorder: Any, tmp_path: Path
) -> None:
    stranger = generate_key(tmp_path / "stranger" / "id_ed25519", "not-authorized")
    t = connect(sshd_host, identity_file=stranger, runner=recorder)
    with pytest.raises(SSHError) as info:
        t.run(["true"])
    assert f"refused authentication for {sshd_host.user} with key {stranger}" in info.value.message
    assert info.value.hint and "authorized_keys" in info.value.hint
    assert len(recorder.argvs) == 1


def test_changed_host_key_is_refused_with_the_accept_command(
    sshd_host: SshdHost, connect: Connect, recorder: Any
) -> None:
    first = connect(sshd_host)
    first.run(["true"])  # accepts the key on first use
    known_hosts = first.target.known_hosts
    recorded = known_hosts.read_bytes()
    assert sshd_host.host_public_key().split()[1].encode() in recorded
    first.close()

    sshd_host.rotate_host_key()
    t = connect(sshd_host, runner=recorder)
    with pytest.raises(SSHError) as info:
        t.run(["true"])
    name = f"[127.0.0.1]:{sshd_host.port}"
    assert "host key" in info.value.message and "has changed" in info.value.message and name in info.value.message
    assert known_hosts.read_bytes() == recorded  # nothing was overwritten or bypassed
    assert len(recorder.argvs) == 1  # a changed key is never retried
    # rsync refuses the same way.
    with pytest.raises(SSHError, match="has changed"):
        t.pull(str(sshd_host.root_dir), sshd_host.base_dir.parent / "never")

    assert info.value.hint is not None
    accept = shlex.split(info.value.hint.split("with: ", 1)[1])
    assert accept == ["ssh-keygen", "-R", name, "-f", str(known_hosts)]
    subprocess.run(accept, check=True, capture_output=True, timeout=30)
    assert t.run(["echo", "ok"]).text() == "ok\n"
    assert sshd_host.host_public_key().split()[1] in known_hosts.read_text()


def _versions(root: Path, tag: bytes, sizes: dict[str, int]) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, size in sizes.items():
        data = tag + os.urandom(size)
        (root / name).write_bytes(data)
        hashes[name] = hashlib.sha256(data).hexdigest()
    return hashes


def test_pull_cut_mid_transfer_never_leaves_a_partial_file_and_retry_completes(
    sshd_host: SshdHost, cut_proxy: Callable[[int], CutProxy], connect: Connect, tmp_path: Path
) -> None:
    sizes = {"model.bin": 6_000_000, "results.json": 3_000_000, "journal.jsonl": 3_000_000}
    remote = sshd_host.root_dir / "proj" / "results"
    server = _versions(remote, b"new", sizes)
    local = tmp_path / "local-results"
    earlier = _versions(local, b"old", sizes)
    for name in sizes:  # the earlier versions are from an hour ago (same sizes, so rsync must compare times)
        stamp = (local / name).stat().st_mtime - 3600
        os.utime(local / name, (stamp, stamp))
    proxy = cut_proxy(sshd_host.port)
    via_proxy = f"{sshd_host.user}@127.0.0.1:{proxy.port}"

    # One attempt only: the cut surfaces as a connection failure and every local file is still whole.
    proxy.cut_after(4_000_000)
    once = connect(via_proxy, identity_file=sshd_host.identity_file, backoff=Backoff(retries=0))
    with pytest.raises(SyncError) as info:
        once.pull(str(remote), local)
    assert proxy.cut_happened.is_set()
    assert "connection kept failing" in info.value.message
    for name in sizes:
        assert sha256(local / name) in (earlier[name], server[name]), f"{name} was replaced by a partial copy"
    once.close()

    # With retries the same cut is survived and the local copy ends up identical to the server's.
    proxy.cut_happened.clear()
    proxy.cut_after(4_000_000)
    retrying = connect(via_proxy, identity_file=sshd_host.identity_file, backoff=Backoff(retries=3, first=0.1))
    stats = retrying.pull(str(remote), local)
    assert proxy.cut_happened.is_set()
    assert stats.total_size == sum(len(b"new") + s for s in sizes.values())
    assert {name: sha256(local / name) for name in sizes} == server
    assert not (local / ".rsync-partial").exists()


@pytest.fixture
def tiny_disk(sshd_host: SshdHost) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted inside the host's root (skipped where mounting is not allowed)."""
    mount_point = sshd_host.root_dir / "small"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, timeout=30
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30, check=False)


def test_push_to_a_full_remote_disk_says_so_and_loses_nothing(
    sshd_host: SshdHost, tiny_disk: Path, connect: Connect, tmp_path: Path
) -> None:
    t = connect(sshd_host)
    code = tmp_path / "code"
    code.mkdir()
    (code / "config.yaml").write_bytes(b"lr: 0.1\n")
    t.push(code, str(tiny_disk / "proj"))
    before = (tiny_disk / "proj" / "config.yaml").read_bytes()

    (code / "config.yaml").write_bytes(b"lr: 0.2\n")
    weights = os.urandom(3_000_000)
    (code / "weights.bin").write_bytes(weights)
    with pytest.raises(SyncError) as info:
        t.push(code, str(tiny_disk / "proj"))
    assert f"the disk of {t.label} is full" in info.value.message
    assert info.value.hint and "Free space" in info.value.hint
    assert (code / "weights.bin").read_bytes() == weights  # the local copy is untouched
    remote_config = (tiny_disk / "proj" / "config.yaml").read_bytes()
    assert remote_config in (before, b"lr: 0.2\n")  # the remote file is whole: old or new, never cut short
    assert not (tiny_disk / "proj" / "weights.bin").exists()


def test_missing_tmux_on_the_server_is_a_clear_error(sshd_host: SshdHost, connect: Connect) -> None:
    t = connect(sshd_host, env={"PATH": "/nonexistent"})
    sessions = TmuxSessions(t, str(sshd_host.root_dir))
    with pytest.raises(CommandFailed) as info:
        sessions.start("exp", ["sleep", "5"], cwd=str(sshd_host.root_dir))
    assert info.value.message == f"tmux is not installed on {t.label} (or not on its PATH)."
    assert info.value.hint and "apt-get install -y tmux" in info.value.hint
    with pytest.raises(CommandFailed, match="tmux is not installed"):
        sessions.exists("exp")


def test_connection_cut_during_a_command_is_retried(
    sshd_host: SshdHost, cut_proxy: Callable[[int], CutProxy], connect: Connect, recorder: Any
) -> None:
    proxy = cut_proxy(sshd_host.port)
    t = connect(f"{sshd_host.user}@127.0.0.1:{proxy.port}", identity_file=sshd_host.identity_file, runner=recorder)
    marker = sshd_host.root_dir / "first-attempt"
    # The first attempt leaves a marker and hangs; the retry sees the marker and answers at once.
    script = f"if [ -e {marker} ]; then echo second; else touch {marker}; exec sleep 60; fi"
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["text"] = t.run(["sh", "-c", script], timeout=60).text()
        except Exception as exc:  # handed to the test thread below
            outcome["error"] = exc
            outcome["out"] = getattr(exc, "output", "")

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline, "the first attempt never started"
        time.sleep(0.01)
    proxy.cut()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert outcome.get("text") == "second\n", outcome
    ssh_runs = [argv for argv in recorder.argvs if "-O" not in argv]
    assert len(ssh_runs) == 2  # the attempt that was cut, then one retry
