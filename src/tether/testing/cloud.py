"""A Vast.ai emulator on real time whose instances are real sshd hosts with the vendor's auto-tmux login.

:func:`start_cloud` is what the ``make_cloud`` fixture and ``bench/managed.py`` use: the user's key is put on the
emulated account (Vast.ai puts account keys on instances created after the key was added, and tether checks the
account's key before it rents), so every new instance accepts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.emulator.vast import Clock, HostHandle, VastEmulator, load_offer_book
from tether.testing.sshd import SshdHost, generate_key


@dataclass
class Cloud:
    """A running emulator, the sshd host of each instance it made, the user's key and the env that points at it."""

    emulator: VastEmulator
    hosts: dict[int, SshdHost]
    key: Path
    base: Path
    env: dict[str, str] = field(default_factory=dict)

    def root_of(self, instance_id: int | str) -> Path:
        return self.base / f"instance-{instance_id}" / "root"

    def home_of(self, instance_id: int | str) -> Path:
        return self.base / f"instance-{instance_id}" / "home"

    @property
    def public_key(self) -> str:
        return self.key.with_name(self.key.name + ".pub").read_text().strip()

    def close(self) -> None:
        """Stop the emulator and every host it started (with the tmux servers tether used there)."""
        self.emulator.stop()
        for host in self.hosts.values():
            host.kill_tmux()
            host.stop()


def start_cloud(
    base: Path,
    key: Path,
    offers: Sequence[dict[str, Any]] | None = None,
    *,
    key_on_account: bool = True,
    loading_s: float = 1.0,
) -> Cloud:
    """Start an emulator (its offer book, or the shipped one) whose instances live under ``base``.

    ``key``: the user's private key (made with :func:`generate_key` when it does not exist yet); with
    ``key_on_account`` its public half is on the emulated account.
    """
    if not key.exists():
        generate_key(key, "tether-test-user")
    hosts: dict[int, SshdHost] = {}

    def factory(instance_id: int) -> HostHandle:
        host = SshdHost(base / f"instance-{instance_id}", auto_tmux=True)
        host.start()
        hosts[instance_id] = host
        return host

    book = list(offers) if offers is not None else load_offer_book()
    # Real time, so a CLI in another process sees instances walk loading -> running.
    emulator = VastEmulator(book, loading_s=loading_s, clock=Clock(realtime=True), host_factory=factory)
    emulator.start()
    cloud = Cloud(emulator, hosts, key, base, {"VAST_URL": emulator.url, "VAST_API_KEY": emulator.api_key})
    if key_on_account:
        emulator.add_ssh_key(cloud.public_key)
    return cloud
