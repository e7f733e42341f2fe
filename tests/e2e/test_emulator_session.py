"""The emulator as a user meets it: CONTRIBUTING's whole session runs as written against a real
``python -m tether.emulator``, and each emulated instance has a workspace of its own.

Every emulated instance logs in as the same user on this machine; with one shared ``/workspace`` a results file of one
rental finished another's run and ``progress`` listed every server's runs on every server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from tests.helpers import tether, tether_json, wait_for, write_project
from tether.config_models import REMOTE_ROOT_ENV
from tether.testing.sshd import end_watchdogs_under, find_sshd, generate_key

REPO = Path(__file__).resolve().parents[2]
SESSION_MARK = "<!-- tests/e2e/test_emulator_session.py runs the block below"

pytestmark = pytest.mark.skipif(find_sshd() is None, reason="OpenSSH sshd is not installed")


def documented_session() -> str:
    """The fenced bash block of CONTRIBUTING.md that follows the session mark."""
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    after = text[text.index(SESSION_MARK) :]
    found = re.search(r"```bash\n(.*?)```", after, re.S)
    assert found is not None, "CONTRIBUTING.md has no bash block after the session mark"
    return found.group(1)


def fresh_user(tmp_path: Path) -> dict[str, str]:
    """An environment as a new user's shell has it: a fresh HOME (no SSH key yet) and TETHER_HOME, `python` and
    `tether` on the PATH (this interpreter, this tether), nothing of the emulator set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, argv in (("python", f'"{sys.executable}"'), ("tether", f'"{sys.executable}" -m tether')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
        shim.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "TETHER_")) and k != "XDG_CONFIG_HOME"}
    env.update(
        HOME=str(home),
        TETHER_HOME=str(tmp_path / "tether-home"),
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        TMPDIR=str(tmp_path / "tmp"),
    )
    (tmp_path / "tmp").mkdir()
    return env


def test_the_documented_session_runs_as_written(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("the documented session uses curl")
    env = fresh_user(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    script = "set -euo pipefail\n" + documented_session()
    done = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=480, check=False
    )
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    # The key the session made is the one on the account, and the run finished on the rented server.
    assert (tmp_path / "home" / ".ssh" / "id_ed25519").is_file()
    results = json.loads((work / "demo" / "results" / "results.json").read_text())
    assert results["completed"] == 100
    assert "gpu1" in said and "gone" in said
    # The emulator stopped: its env file and its temporary folders are gone, and nothing is left in TMPDIR.
    assert not (work / "emulator.env").exists()
    assert list((tmp_path / "tmp").iterdir()) == []


class Emulator:
    """A real ``python -m tether.emulator`` with sshd hosts, its env file read; the user's key on its account."""

    def __init__(self, tmp_path: Path, key: Path) -> None:
        self.state = tmp_path / "emulator"
        env_file = tmp_path / "emulator.env"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tether.emulator",
                "--loading-seconds",
                "1",
                "--state-dir",
                str(self.state),
                "--env-file",
                str(env_file),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())
        self.env: dict[str, str] = {}
        for line in env_file.read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            self.env[name] = value.strip("'")
        assert self.env["VAST_URL"] == self.info["url"] and self.env[REMOTE_ROOT_ENV] == self.info["remote_root"]
        public = key.with_name(key.name + ".pub").read_text().strip()
        answer = httpx.post(
            f"{self.info['url']}/api/v0/ssh/",
            json={"ssh_key": public},
            headers={"Authorization": f"Bearer {self.info['api_key']}"},
        )
        assert answer.status_code == 200, answer.text

    def root_of(self, instance_id: str) -> Path:
        return Path(self.info["remote_root"].replace("{instance_id}", instance_id))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=60)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    key = generate_key(tmp_path / "home" / ".ssh" / "id_ed25519", "user")
    emu = Emulator(tmp_path, key)
    try:
        yield emu
    finally:
        emu.close()


def project_for(tmp_path: Path, key: Path, *, root: str = "") -> Path:
    extra = f"""
[vast]
identity_file = "{key}"
{f'remote_root = "{root}"' if root else ""}
ssh_wait_seconds = 60
poll_seconds = 0.2
"""
    return write_project(tmp_path / "proj", items=12, extra=extra)


def runs_on(project: Path, host: str, env: Mapping[str, str]) -> list[str]:
    progress = tether_json("progress", host, cwd=project, env=env)
    assert progress["hosts"][0]["error"] is None
    return [r["id"] for r in progress["hosts"][0]["runs"]]


def test_each_instance_has_its_own_root(tmp_path: Path, emulator: Emulator) -> None:
    project = project_for(tmp_path, tmp_path / "home" / ".ssh" / "id_ed25519")
    env = {**emulator.env, "HOME": str(tmp_path / "home")}
    ids = {}
    for name in ("a", "b"):
        ids[name] = tether_json("up", name, "--profile", "api", cwd=project, env=env)["rented"]["instance_id"]
    root_a, root_b = emulator.root_of(ids["a"]), emulator.root_of(ids["b"])
    assert root_a != root_b and emulator.state in root_a.parents and emulator.state in root_b.parents

    run_a = tether_json("run", "exp", "--on", "a", cwd=project, env=env)["run_id"]
    results_a = root_a / "proj" / "results" / "results.json"
    wait_for(results_a.is_file, timeout=60, what="a's results.json")
    # What a's run wrote is not on b: b's workspace has no results, and b lists none of a's runs.
    assert not (root_b / "proj" / "results").exists()
    assert runs_on(project, "b", env) == []
    run_b = tether_json("run", "exp", "--on", "b", cwd=project, env=env)["run_id"]
    assert runs_on(project, "b", env) == [run_b]
    assert runs_on(project, "a", env) == [run_a]


def test_a_root_two_rentals_share_is_refused(tmp_path: Path, emulator: Emulator) -> None:
    shared = tmp_path / "one-folder"
    project = project_for(tmp_path, tmp_path / "home" / ".ssh" / "id_ed25519", root=str(shared))
    env = {**emulator.env, REMOTE_ROOT_ENV: "", "HOME": str(tmp_path / "home")}  # as if it were never exported
    try:
        tether_json("up", "a", "--profile", "api", cwd=project, env=env)
        second = tether("up", "b", "--profile", "api", cwd=project, env=env)
    finally:
        end_watchdogs_under(shared)
    assert second.returncode == 3, second.stderr
    assert "already a's" in second.stderr and REMOTE_ROOT_ENV in second.stderr
    # Nothing of b was set up there: the folder is still a's.
    mark = json.loads((shared / ".tether" / "rental.json").read_text())
    assert mark["name"] == "a"
