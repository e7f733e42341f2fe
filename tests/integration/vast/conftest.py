"""Fixtures of the Vast.ai client tests. The emulators (``vast_emulator``: instances are real sshd hosts;
``vast_api_emulator``: HTTP only) come from ``tether.testing.pytest_plugin``; here, beside the client they build
(only the provider registry and these tests reach into ``tether.providers.vast``): ``sleeps`` records the waits a
client would have slept; ``make_provider(emu, sleeps=None, **client_options)`` builds a provider for an emulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tether.emulator.vast import VastEmulator
from tether.providers.vast import VastClient, VastProvider


class Sleeps(list[float]):
    """A sleep function that records each wait instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


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
