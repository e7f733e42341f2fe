"""Fixtures shared by the registry tests (unit and integration): a registry file in tmp_path, the fake
nvidia-smi on PATH."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import FAKES
from tether.server.registry import Registry


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
    return Registry(reg_path, lock_timeout=5)
