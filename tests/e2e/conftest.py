"""End-to-end fixtures: the Vast emulator on real time whose instances are real sshd hosts with the vendor's
auto-tmux login, the user's key on the emulated account (so every new instance accepts it, as Vast.ai puts account
keys on instances created after the key was added), and a project configured to use it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def home_of(self, instance_id: int | str) -> Path:
        return self.base / f"instance-{instance_id}" / "home"

    @property
    def public_key(self) -> str:
        return self.key.with_name(self.key.name + ".pub").read_text().strip()


MakeCloud = Callable[..., Cloud]


@pytest.fixture
def make_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeCloud]:
    """``make_cloud(offers=None, key_on_account=True)``: a started emulator (its offer book, or the shipped one)."""
    if find_sshd() is None:
        pytest.skip("OpenSSH sshd is not installed (Debian: apt-get install openssh-server)")
    made: list[Cloud] = []
    # No key files from the real home directory may leak into a test.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))

    def make(offers: Sequence[dict[str, Any]] | None = None, *, key_on_account: bool = True) -> Cloud:
        base = tmp_path / f"vast-hosts-{len(made)}"
        key = generate_key(tmp_path / "user-key" / "id_ed25519", "tether-e2e-user") if not made else made[0].key
        hosts: dict[int, SshdHost] = {}

        def factory(instance_id: int) -> HostHandle:
            host = SshdHost(base / f"instance-{instance_id}", auto_tmux=True)
            host.start()
            hosts[instance_id] = host
            return host

        book = list(offers) if offers is not None else load_offer_book()
        # Real time, so a CLI in another process sees instances walk loading -> running.
        emulator = VastEmulator(book, loading_s=1.0, clock=Clock(realtime=True), host_factory=factory)
        emulator.start()
        cloud = Cloud(emulator, hosts, key, base, {"VAST_URL": emulator.url, "VAST_API_KEY": emulator.api_key})
        if key_on_account:
            emulator.add_ssh_key(cloud.public_key)
        made.append(cloud)
        return cloud

    try:
        yield make
    finally:
        for cloud in made:
            cloud.emulator.stop()
            for host in cloud.hosts.values():
                host.kill_tmux()
                host.stop()


@pytest.fixture
def cloud(make_cloud: MakeCloud) -> Cloud:
    return make_cloud()


def vast_project(
    tmp_path: Path,
    cloud: Cloud,
    *,
    items: int = 30,
    policy: str = "",
    profiles: str = "",
    wait_minutes: float = 1,
    ssh_wait_seconds: float = 30,
) -> Path:
    extra = f"""
[vast]
identity_file = "{cloud.key}"
remote_root = "{cloud.base}/instance-{{instance_id}}/root"
wait_minutes = {wait_minutes}
ssh_wait_seconds = {ssh_wait_seconds}
poll_seconds = 0.2
retries = 2
backoff_seconds = 0.2

[policy]
allow_spending = true
{policy}
{profiles}
"""
    return write_project(tmp_path / "proj", items=items, extra=extra)
