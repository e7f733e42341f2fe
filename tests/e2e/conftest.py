"""End-to-end fixtures: the Vast emulator on real time whose instances are real sshd hosts sharing one user key
(the key a user registers with Vast.ai), and a project configured to use it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import write_project
from tether.emulator.vast import Clock, HostHandle, VastEmulator, load_offer_book
from tether.testing.sshd import SshdHost, find_sshd, generate_key


@dataclass
class Cloud:
    emulator: VastEmulator
    hosts: dict[int, SshdHost]
    key: Path
    base: Path
    env: dict[str, str]

    def root_of(self, instance_id: int | str) -> Path:
        return self.base / f"instance-{instance_id}" / "root"


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    if find_sshd() is None:
        pytest.skip("OpenSSH sshd is not installed (Debian: apt-get install openssh-server)")
    base = tmp_path / "vast-hosts"
    key = generate_key(tmp_path / "user-key" / "id_ed25519", "tether-e2e-user")
    hosts: dict[int, SshdHost] = {}

    def factory(instance_id: int) -> HostHandle:
        host = SshdHost(base / f"instance-{instance_id}")
        host.authorized_keys.write_text(key.with_name("id_ed25519.pub").read_text())
        host.start()
        hosts[instance_id] = host
        return host

    # Real time, so a CLI in another process sees instances walk loading -> running.
    emulator = VastEmulator(load_offer_book(), loading_s=1.0, clock=Clock(realtime=True), host_factory=factory)
    emulator.start()
    # No key files from the real home directory may leak into a test.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    env = {"VAST_URL": emulator.url, "VAST_API_KEY": emulator.api_key}
    try:
        yield Cloud(emulator, hosts, key, base, env)
    finally:
        emulator.stop()
        for host in hosts.values():
            host.kill_tmux()
            host.stop()


def vast_project(tmp_path: Path, cloud: Cloud, *, items: int = 30, policy: str = "") -> Path:
    extra = f"""
[vast]
identity_file = "{cloud.key}"
remote_root = "{cloud.base}/instance-{{instance_id}}/root"
wait_minutes = 1
poll_seconds = 0.2
retries = 2
backoff_seconds = 0.2

[policy]
allow_spending = true
{policy}
"""
    return write_project(tmp_path / "proj", items=items, extra=extra)
