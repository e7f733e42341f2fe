"""The ``vast_emulator`` fixture: a running Vast.ai emulator whose instances are real sshd hosts.

It yields the :class:`tether.emulator.vast.VastEmulator` itself (``.url``, ``.api_key``, ``.clock``,
``.faults``, ``.instances``, ``.account_total()``, ``.billing_instances()``). ``vast_api_emulator`` is the same
without sshd (instances get an address only), for tests of the HTTP API alone. ``sleeps`` records the waits a
client would have slept; ``make_provider(emu, sleeps=None, **client_options)`` builds a provider for an emulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.emulator.vast import VastEmulator, load_offer_book, null_host_factory, sshd_host_factory
from tether.providers.vast import VastClient, VastProvider


class Sleeps(list[float]):
    """A sleep function that records each wait instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def vast_emulator(tmp_path: Path) -> Iterator[VastEmulator]:
    hosts = tmp_path / "vast-hosts"
    hosts.mkdir()
    with VastEmulator(load_offer_book(), loading_s=30.0, host_factory=sshd_host_factory(hosts)) as emu:
        yield emu


@pytest.fixture
def vast_api_emulator() -> Iterator[VastEmulator]:
    with VastEmulator(load_offer_book(), loading_s=30.0, host_factory=null_host_factory) as emu:
        yield emu


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make_provider() -> Iterator[Callable[..., VastProvider]]:
    made: list[VastProvider] = []

    def make(emu: VastEmulator, sleeps: Sleeps | None = None, **options: Any) -> VastProvider:
        sleep = sleeps if sleeps is not None else Sleeps()
        provider = VastProvider(VastClient(emu.api_key, emu.url, sleep=sleep, **options))
        made.append(provider)
        return provider

    yield make
    for p in made:
        p.close()
