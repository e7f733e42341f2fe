"""Helpers shared by the checkpoint tests (imported by name; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

StartScript = Callable[..., "subprocess.Popen[bytes]"]


def journal_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a journal (header excluded), read the way another program would."""
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the journal ends with a torn line"
    return [json.loads(line) for line in lines[1:-1]]


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
