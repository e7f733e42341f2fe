"""Shared fixtures: every test gets its own TETHER_HOME; the real-sshd test hosts, the Vast emulator and the
registry fixtures come from the plugin (``tether.testing.pytest_plugin``). Each test is marked with its tier
(unit, integration, e2e, adversarial) by the folder it lives in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tether.testing.pytest_plugin"]

#: The tiers, one per top folder of tests/ (registered in pyproject.toml).
TIERS = ("unit", "integration", "e2e", "adversarial")
HERE = Path(__file__).resolve().parent


def tier_of(path: Path) -> str | None:
    """The tier of a test file: the top folder under tests/ it lives in, if that names a tier."""
    try:
        top = path.resolve().relative_to(HERE).parts[0]
    except (ValueError, IndexError):
        return None
    return top if top in TIERS else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item.path)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def tether_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point TETHER_HOME at a fresh folder so no test reads or writes the user's state."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TETHER_HOME", str(home))
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.delenv("TETHER_AGENT_STATUS", raising=False)
    yield home
