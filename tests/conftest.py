"""Shared fixtures: every test gets its own TETHER_HOME, and the real-sshd test hosts come from the plugin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tether.testing.pytest_plugin"]


@pytest.fixture(autouse=True)
def tether_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point TETHER_HOME at a fresh folder so no test reads or writes the user's state."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TETHER_HOME", str(home))
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.delenv("TETHER_AGENT_STATUS", raising=False)
    yield home
