"""pytest fixtures for real SSH test hosts (load with ``pytest_plugins = ["tether.testing.pytest_plugin"]``).

- ``sshd_host``: one :class:`SshdHost` (function scope) whose files live under the test's ``tmp_path``.
- ``sshd_hosts``: two of them side by side.
- ``cut_proxy``: a factory ``cut_proxy(target_port) -> CutProxy``; every proxy is closed after the test.

Each host is stopped after its test, together with the connections it accepted and the tmux server tether uses
for its root directory. Tests using these fixtures are skipped, with the reason, when ``sshd`` is not installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tether.testing.proxy import CutProxy
from tether.testing.sshd import SshdHost, find_sshd


def _start_host(base: Path) -> SshdHost:
    if find_sshd() is None:
        pytest.skip("OpenSSH sshd is not installed (Debian: apt-get install openssh-server)")
    host = SshdHost(base)
    host.start()
    return host


def _finish(host: SshdHost) -> None:
    host.kill_tmux()
    host.stop()


@pytest.fixture
def sshd_host(tmp_path: Path) -> Iterator[SshdHost]:
    """A real sshd on 127.0.0.1 with its own keys; its root directory is ``tmp_path / 'sshd-a' / 'root'``."""
    host = _start_host(tmp_path / "sshd-a")
    try:
        yield host
    finally:
        _finish(host)


@pytest.fixture
def sshd_hosts(tmp_path: Path) -> Iterator[tuple[SshdHost, SshdHost]]:
    """Two real sshd hosts side by side, each with its own port, keys and root directory."""
    first = _start_host(tmp_path / "sshd-a")
    try:
        second = _start_host(tmp_path / "sshd-b")
    except BaseException:
        _finish(first)
        raise
    try:
        yield first, second
    finally:
        _finish(second)
        _finish(first)


@pytest.fixture
def cut_proxy() -> Iterator[Callable[[int], CutProxy]]:
    """Factory: ``cut_proxy(port)`` forwards a fresh loopback port to ``port``; closed after the test."""
    proxies: list[CutProxy] = []

    def make(target_port: int) -> CutProxy:
        proxy = CutProxy(target_port)
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.close()
