"""pytest fixtures for real test hosts and services (load with ``pytest_plugins = ["tether.testing.pytest_plugin"]``).

- ``sshd_host``: one :class:`SshdHost` (function scope) whose files live under the test's ``tmp_path``.
- ``sshd_hosts``: two of them side by side.
- ``cut_proxy``: a factory ``cut_proxy(target_port) -> CutProxy``; every proxy is closed after the test.
- ``make_cloud`` / ``cloud``: the Vast emulator on real time whose instances are real sshd hosts with the vendor's
  auto-tmux login, the user's key on the account (:mod:`tether.testing.cloud`); ``HOME`` points into ``tmp_path``.
- ``vast_emulator`` (instances are sshd hosts) / ``vast_api_emulator`` (HTTP only): the emulator on its test
  clock (tests of tether's client build it in their own folder: only the provider registry imports it).
- ``gpus`` (choose the fake nvidia-smi's GPUs: "1x24", "2x48", "8x80", "fail", "garbage" or a file), ``reg_path``
  and ``registry``: an agent registry in ``tmp_path``.

Each host is stopped after its test, together with the connections it accepted and the tmux server tether uses
for its root directory. Tests using these fixtures are skipped, with the reason, when ``sshd`` is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tether.testing import FAKES
from tether.testing.proxy import CutProxy
from tether.testing.sshd import SshdHost, find_sshd

if TYPE_CHECKING:  # imported when a fixture runs: a unit test does not pay for the emulator's imports
    from tether.emulator.vast import VastEmulator
    from tether.server.registry import Registry
    from tether.testing.cloud import Cloud


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


# ------------------------------------------------------------------------------------------------ the Vast emulator
MakeCloud = Callable[..., "Cloud"]


@pytest.fixture
def make_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeCloud]:
    """``make_cloud(offers=None, key_on_account=True)``: a started emulator (its offer book, or the shipped one);
    every cloud of a test shares the user's key. All are stopped after the test."""
    from tether.testing.cloud import start_cloud

    if find_sshd() is None:
        pytest.skip("OpenSSH sshd is not installed (Debian: apt-get install openssh-server)")
    made: list[Cloud] = []
    # No key files from the real home directory may leak into a test.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    key = tmp_path / "user-key" / "id_ed25519"

    def make(offers: Sequence[dict[str, Any]] | None = None, *, key_on_account: bool = True) -> Cloud:
        cloud = start_cloud(tmp_path / f"vast-hosts-{len(made)}", key, offers, key_on_account=key_on_account)
        made.append(cloud)
        return cloud

    try:
        yield make
    finally:
        for cloud in made:
            cloud.close()


@pytest.fixture
def cloud(make_cloud: MakeCloud) -> Cloud:
    return make_cloud()


@pytest.fixture
def vast_emulator(tmp_path: Path) -> Iterator[VastEmulator]:
    """The emulator on its test clock (30 s of loading) whose instances are real sshd hosts."""
    from tether.emulator.vast import VastEmulator, load_offer_book, sshd_host_factory

    hosts = tmp_path / "vast-hosts"
    hosts.mkdir()
    with VastEmulator(load_offer_book(), loading_s=30.0, host_factory=sshd_host_factory(hosts)) as emu:
        yield emu


@pytest.fixture
def vast_api_emulator() -> Iterator[VastEmulator]:
    """The emulator without sshd (instances get an address only), for tests of the HTTP API alone."""
    from tether.emulator.vast import VastEmulator, load_offer_book, null_host_factory

    with VastEmulator(load_offer_book(), loading_s=30.0, host_factory=null_host_factory) as emu:
        yield emu


# ------------------------------------------------------------------------------------------------ the agent registry
@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Call with a FAKE_NVIDIA_SMI mode ("1x24", "2x48", "8x80", "fail", "garbage", or a file path)."""

    def choose(mode: str) -> None:
        monkeypatch.setenv("FAKE_NVIDIA_SMI", mode)
        monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}")

    choose("1x24")
    return choose


@pytest.fixture
def reg_path(tmp_path: Path) -> Path:
    return tmp_path / "AGENT_STATUS.json"


@pytest.fixture
def registry(reg_path: Path, gpus: Callable[[str], None]) -> Registry:
    from tether.server.registry import Registry

    return Registry(reg_path, lock_timeout=5)
