"""No rental without a record: `tether up` killed at any moment leaves no instance tether does not know about, a
second `up` adopts instead of renting again, and two `up` of one name at once rent one server.

The Vast emulator on real time with real sshd hosts; `tether up` is a real process, killed with real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cloud, vast_project
from tests.helpers import tether, tether_json


def _up(project: Path, env: dict[str, str], name: str = "box") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tether", "up", name, "--profile", "api"],
        cwd=project,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _unknown_instances(cloud: Cloud, project: Path) -> list[int]:
    """Instances the emulator would bill that tether's state does not know (after `tether ls` reconciled)."""
    listing = tether_json("ls", cwd=project, env=cloud.env)["instances"]
    known = {str(row["instance_id"]) for row in listing if row["instance_id"] is not None}
    return [i.id for i in cloud.emulator.billing_instances() if str(i.id) not in known]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_up_killed_at_any_moment_leaves_nothing_unknown(tmp_path: Path, cloud: Cloud, sig: signal.Signals) -> None:
    project = vast_project(tmp_path, cloud, items=5)
    env = cloud.env
    for n, delay in enumerate((0.3, 0.8, 1.5, 2.5)):
        name = f"box{n}"
        proc = _up(project, env, name)
        time.sleep(delay)  # the moment of the kill is what varies
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert _unknown_instances(cloud, project) == [], (sig, delay)
        # `up` again adopts what the killed one made (or rents if it made nothing): one instance for the name.
        again = tether("up", name, "--profile", "api", cwd=project, env=env, timeout=180)
        assert again.returncode == 0, again.stderr
    assert _unknown_instances(cloud, project) == []
    names = [row["name"] for row in tether_json("ls", cwd=project, env=env)["instances"] if row["state"] != "gone"]
    assert sorted(names) == [f"box{n}" for n in range(4)]
    assert len(cloud.emulator.billing_instances()) == 4  # one per name, none rented twice


def test_two_concurrent_ups_of_one_name_rent_one_server(tmp_path: Path, cloud: Cloud) -> None:
    project = vast_project(tmp_path, cloud, items=5)
    first, second = _up(project, cloud.env), _up(project, cloud.env)
    outs = [p.communicate(timeout=240) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    assert len(cloud.emulator.billing_instances()) == 1
    listing = tether_json("ls", cwd=project, env=cloud.env)["instances"]
    assert [(r["name"], r["state"]) for r in listing] == [("box", "running")]
