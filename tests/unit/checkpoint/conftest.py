"""Fixtures for the checkpoint library's tests: real subprocesses running real scripts, always cleaned up."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.checkpoint.ckpt_helpers import StartScript


@pytest.fixture
def start_script(tmp_path: Path) -> Iterator[StartScript]:
    """Start ``python3 script.py *args`` from a script's source; every process is killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(source: str, *args: str) -> subprocess.Popen[bytes]:
        script = tmp_path / f"script_{len(procs)}.py"
        script.write_text(textwrap.dedent(source))
        proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
