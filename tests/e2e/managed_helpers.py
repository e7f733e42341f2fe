"""Helpers of the managed-run tests: find a shard's server on the emulator, and lose it the way the real service
does (the emulator's preempt and vanish stop the host's sshd; a real machine's processes die with it, so they are
killed here too, by the pids their run records name)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Cloud
from tests.helpers import wait_for


def shard_instances(cloud: Cloud, shard: int | None = None) -> list[Any]:
    """Live emulator instances of managed runs (label ``tether:proj:<id>-s<i>-<n>``), optionally of one shard."""
    out = []
    for inst in list(cloud.emulator.instances.values()):
        if inst.state == "destroyed" or not inst.label or "-m" not in inst.label:
            continue
        name = inst.label.rsplit(":", 1)[-1]
        if shard is None or name.rsplit("-", 2)[-2] == f"s{shard}":
            out.append(inst)
    return out


def running_instance(cloud: Cloud, shard: int, timeout: float = 90) -> Any:
    def find() -> Any:
        live = [i for i in shard_instances(cloud, shard) if i.state == "running"]
        return live[0] if live else None

    return wait_for(find, timeout, f"a running server for shard {shard}")


def journal_lines(cloud: Cloud, instance_id: int) -> int:
    path = cloud.root_of(instance_id) / "proj" / "results" / "results.journal.jsonl"
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except OSError:
        return 0


def kill_runs(root: Path) -> None:
    """SIGKILL every run's wrapper and experiment under a server root (what losing the machine does)."""
    for record in (root / ".tether" / "runs").glob("*/run.json"):
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(record.read_text())
            for key in ("child_pid", "pid"):
                pid = doc.get(key)
                if isinstance(pid, int) and pid > 0:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL) if key == "child_pid" else os.kill(pid, signal.SIGKILL)


def preempt(cloud: Cloud, instance_id: int) -> None:
    kill_runs(cloud.root_of(instance_id))
    cloud.emulator.preempt(instance_id)


def vanish(cloud: Cloud, instance_id: int) -> None:
    kill_runs(cloud.root_of(instance_id))
    cloud.emulator.vanish(instance_id)


def start_tether(*args: str, cwd: Path, env: Mapping[str, str]) -> subprocess.Popen[str]:
    """``python -m tether ARGS`` in the background (a controller), its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "tether", *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def expected_results(items: int) -> list[dict[str, Any]]:
    """What the test experiment (tests.helpers.EXPERIMENT) computes, in item order."""
    return [{"id": f"i{n:03d}", "value": n * 2} for n in range(items)]


FAST = ("--sync-every", "1s", "--poll", "0.3s", "--unreachable-after", "20s")
