"""Secrets stay where they belong and local state stays private and whole, through the CLI.

The env file never travels by rsync, `up --no-env` is remembered, TETHER_HOME and its files are private, and a
damaged or full state database is one sentence (and the flat JSON error document), never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import tether, tether_json, wait_status, write_project
from tether.testing.sshd import SshdHost

SECRET = "sk-test-DO-NOT-LEAK-4242"


def host_block(name: str, host: SshdHost) -> str:
    return (
        f"[hosts.{name}]\n"
        f'address = "{host.address}"\n'
        f'identity_file = "{host.identity_file}"\n'
        f'remote_root = "{host.root_dir}"\n'
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def files_holding(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle.encode() in p.read_bytes()]


def test_a_named_env_file_is_never_pushed_by_rsync(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = write_project(tmp_path / "proj", extra=host_block("lab1", sshd_host))
    toml = project / "tether.toml"
    toml.write_text(
        toml.read_text().replace("setup_packages = []", 'setup_packages = []\nenv_file = "secrets/prod.env"')
    )
    (project / "secrets").mkdir()
    (project / "secrets" / "prod.env").write_text(f"OPENAI_API_KEY={SECRET}\n")
    (project / "secrets" / "README").write_text("what the keys are for\n")
    first = tether_json("up", "lab1", cwd=project)
    assert first["env"] == "uploaded (mode 0600)"
    code = sshd_host.root_dir / "proj"
    assert not (code / "secrets" / "prod.env").exists()
    assert (code / "secrets" / "README").is_file()  # only the env file is held back, not its folder
    assert mode(code / ".env") == 0o600 and (code / ".env").read_text() == f"OPENAI_API_KEY={SECRET}\n"
    (project / "exp.py").write_text((project / "exp.py").read_text() + "\n# changed\n")
    pushed = tether_json("push", "lab1", cwd=project)
    assert pushed["files"] == 1 and pushed["env"] == "uploaded (mode 0600)"
    assert files_holding(sshd_host.root_dir, SECRET) == [code / ".env"]


def test_up_no_env_is_remembered_until_up_or_push_env_says_so(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = write_project(tmp_path / "proj", extra=host_block("lab1", sshd_host))
    (project / ".env").write_text(f"OPENAI_API_KEY={SECRET}\n")
    code = sshd_host.root_dir / "proj"
    up = tether_json("up", "lab1", "--no-env", cwd=project)
    assert up["env"].startswith("not uploaded")
    assert not (code / ".env").exists()

    pushed = tether("push", "lab1", cwd=project)
    assert pushed.returncode == 0, pushed.stderr
    assert ".env not uploaded (`tether up --no-env`; `tether push --env` uploads it)" in pushed.stderr
    assert not (code / ".env").exists()

    (project / "exp.py").write_text((project / "exp.py").read_text() + "\n# changed\n")
    run_id = tether_json("run", "exp", "--on", "lab1", cwd=project)["run_id"]  # pushes the changed code
    wait_status(project, run_id, {"completed"}, host="lab1")
    assert "# changed" in (code / "exp.py").read_text()
    assert not (code / ".env").exists() and files_holding(sshd_host.root_dir, SECRET) == []

    forced = tether_json("push", "lab1", "--env", cwd=project)
    assert forced["env"] == "uploaded (mode 0600)" and mode(code / ".env") == 0o600
    (code / ".env").unlink()
    again = tether_json("push", "lab1", cwd=project)  # `push --env` lifted the hold: uploads go on
    assert again["env"] == "uploaded (mode 0600)" and (code / ".env").is_file()

    assert tether_json("up", "lab1", "--no-env", cwd=project)["env"].startswith("not uploaded")
    (code / ".env").unlink()
    assert tether_json("push", "lab1", cwd=project)["env"].startswith("not uploaded")
    assert not (code / ".env").exists()
    assert tether_json("up", "lab1", cwd=project)["env"] == "uploaded (mode 0600)"
    assert tether_json("push", "lab1", cwd=project)["env"] == "uploaded (mode 0600)"


def test_tether_home_and_its_files_are_private(
    tmp_path: Path, sshd_host: SshdHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "fresh" / "home"
    monkeypatch.setenv("TETHER_HOME", str(home))
    project = write_project(tmp_path / "proj", extra=host_block("lab1", sshd_host))
    result = tether("up", "lab1", cwd=project)
    assert result.returncode == 0, result.stderr
    assert mode(home) == 0o700
    assert mode(home / "state.db") == 0o600
    known = home / "known_hosts"
    assert mode(known) == 0o700 and [mode(p) for p in known.iterdir()] == [0o600]
    assert (known / "lab1").read_text().strip()  # ssh recorded the key in the file tether made private

    # Files an older tether left readable by everyone are tightened when tether opens them.
    home.chmod(0o755)
    for path in (home / "state.db", known / "lab1"):
        path.chmod(0o644)
    wal = home / "state.db-wal"
    wal.write_bytes(b"")
    wal.chmod(0o644)
    result = tether("push", "lab1", cwd=project)
    assert result.returncode == 0, result.stderr
    assert mode(home) == 0o700 and mode(home / "state.db") == 0o600 and mode(known / "lab1") == 0o600
    for suffix in ("-wal", "-shm"):
        side = home / f"state.db{suffix}"
        assert not side.exists() or mode(side) == 0o600


def test_a_damaged_state_database_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = write_project(tmp_path / "proj")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("TETHER_HOME", str(home))
    (home / "state.db").write_bytes(b"this is not a database, just garbage bytes\x00\xff" * 200)
    before = (home / "state.db").read_bytes()
    result = tether("progress", "--json", cwd=project)
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert set(doc) == {"error", "hint", "kind", "exit_code"} and doc["exit_code"] == 1
    assert doc["error"] == f"The state database {home / 'state.db'} is damaged (file is not a database)."
    assert "mv " in doc["hint"]
    assert "Traceback" not in result.stderr
    human = tether("run", "exp", "--local", cwd=project)
    assert human.returncode == 1 and "Traceback" not in human.stderr
    assert human.stderr.splitlines()[0] == f"error: {doc['error']}"
    assert (home / "state.db").read_bytes() == before  # left as it was, for whoever inspects it


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs (needs root and mount rights; skipped otherwise), unmounted after the test."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path, leave_pages: int) -> Path:
    """Fill ``disk`` to the last byte, then give back ``leave_pages`` pages of 4 KiB."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # ENOSPC: the disk is full, which is the point
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave_pages * 4096))
    return filler


def test_a_full_disk_under_the_state_database_is_one_sentence(
    tmp_path: Path, small_disk: Path, sshd_host: SshdHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = small_disk / "home"
    monkeypatch.setenv("TETHER_HOME", str(home))
    project = write_project(tmp_path / "proj", extra=host_block("lab1", sshd_host))
    first = tether("up", "lab1", cwd=project)
    assert first.returncode == 0, first.stderr
    # Room to open the database (its -shm file) but not to write a transaction: the write fails.
    filler = fill(small_disk, leave_pages=9)
    written = tether("up", "lab1", "--json", cwd=project)
    assert written.returncode == 1, written.stderr
    doc = json.loads(written.stdout)
    assert set(doc) == {"error", "hint", "kind", "exit_code"}
    assert doc["error"].startswith(f"The state database {home / 'state.db'} cannot be written: the disk holding it")
    assert "full" in doc["error"] and "Free space" in doc["hint"]
    assert "Traceback" not in written.stderr
    # No room even to open it: the same sentence.
    filler.unlink()
    filler = fill(small_disk, leave_pages=0)
    opened = tether("progress", "--json", cwd=project)
    assert opened.returncode == 1 and "Traceback" not in opened.stderr
    assert json.loads(opened.stdout)["error"].startswith(f"The state database {home / 'state.db'} cannot be written")
    # Once there is room again, nothing recorded before was lost: the host is still set up.
    filler.unlink()
    run_id = tether_json("run", "exp", "--on", "lab1", cwd=project)["run_id"]
    assert wait_status(project, run_id, {"completed"}, host="lab1")


def test_run_logs_and_records_are_private_here_and_on_the_server(
    tmp_path: Path, sshd_host: SshdHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An experiment may print a key: its log (and run record) are readable by their owner only, on both ends."""
    home = tmp_path / "home"
    monkeypatch.setenv("TETHER_HOME", str(home))
    project = write_project(tmp_path / "proj", extra=host_block("lab1", sshd_host), items=2)
    local = tether_json("run", "exp", "--local", cwd=project)["run_id"]
    wait_status(project, local, {"completed"})
    assert tether("up", "lab1", cwd=project).returncode == 0
    remote = tether_json("run", "exp", "--on", "lab1", cwd=project)["run_id"]
    wait_status(project, remote, {"completed"}, host="lab1")
    for root, run_id in ((home / "local", local), (sshd_host.root_dir, remote)):
        folder = root / ".tether" / "runs" / run_id
        assert mode(folder) == 0o700, folder
        assert {p.name: mode(p) for p in folder.iterdir() if p.is_file()} == {"log": 0o600, "run.json": 0o600}
