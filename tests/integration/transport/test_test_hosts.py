"""The test hosts themselves: SshdHost restart/stop and CutProxy, which the Vast emulator relies on."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tether.errors import SSHError, TetherError
from tether.testing.proxy import CutProxy
from tether.testing.sshd import SshdHost
from tether.transport.base import Backoff
from tether.transport.ssh import SSHTransport

Connect = Callable[..., SSHTransport]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_restart_on_a_new_port_and_stop_ends_only_its_own_sshd(
    sshd_hosts: tuple[SshdHost, SshdHost], connect: Connect
) -> None:
    a, b = sshd_hosts
    assert a.port != b.port and a.root_dir != b.root_dir
    assert a.address == f"{a.user}@127.0.0.1:{a.port}"
    assert connect(a).run(["echo", "a"]).text() == "a\n"
    old_port, old_pid = a.port, a.pid
    assert old_pid is not None

    a.restart(new_port=True)
    assert a.port != old_port and not _alive(old_pid)
    assert connect(a).run(["echo", "again"]).text() == "again\n"
    with pytest.raises(SSHError, match="connection refused"):
        connect(f"{a.user}@127.0.0.1:{old_port}", identity_file=a.identity_file, backoff=Backoff(retries=0)).run(
            ["true"]
        )

    b_pid = b.pid
    a.stop()
    a.stop()  # safe twice
    assert b_pid is not None and _alive(b_pid)
    assert connect(b).run(["echo", "b"]).text() == "b\n"


def test_cut_proxy_forwards_and_cuts(cut_proxy: Callable[[int], CutProxy], tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    proxy = cut_proxy(server.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    upstream, _ = server.accept()
    upstream.settimeout(10)
    client.sendall(b"ping")
    assert upstream.recv(4) == b"ping"

    proxy.cut_after(3)
    client.sendall(b"abcdef")
    assert proxy.cut_happened.wait(10)
    received = b""
    while chunk := upstream.recv(16):
        received += chunk
    assert received == b"abc"  # exactly n bytes went through, then the connection died
    assert proxy.cuts == 1
    for sock in (client, upstream, server):
        sock.close()


def test_a_host_whose_chosen_port_was_taken_starts_on_another(tmp_path: Path, connect: Connect) -> None:
    # Test processes side by side (pytest -n) may pick the same free port: the one that binds second moves on.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # bound, not listening: sshd cannot bind it and nothing answers there
    host = SshdHost(tmp_path / "h")
    host.port = taken.getsockname()[1]
    try:
        host.start()
        assert host.port != taken.getsockname()[1] and host.pid is not None
        assert connect(host).run(["echo", "moved"]).text() == "moved\n"
    finally:
        host.stop()
        taken.close()


def test_a_port_given_by_the_caller_is_kept_or_refused(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    host = SshdHost(tmp_path / "h", port=taken.getsockname()[1])
    try:
        with pytest.raises(TetherError, match="exited at start"):
            host.start()
    finally:
        host.stop()
        taken.close()
