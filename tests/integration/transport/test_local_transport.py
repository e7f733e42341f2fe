"""LocalTransport with real processes and real rsync: same interface, same guarantees as a remote host."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tether.errors import CommandFailed
from tether.transport.local import LocalTransport
from tether.transport.tmux import TmuxSessions


def test_run_without_shell_with_cwd_env_input(tmp_path: Path) -> None:
    t = LocalTransport()
    assert t.run(["pwd"], cwd=str(tmp_path)).text().strip() == str(tmp_path)
    assert t.run(["sh", "-c", 'printf %s "$X"'], env={"X": "a b"}).text() == "a b"
    assert t.run(["echo", "$HOME;", "*"]).text() == "$HOME; *\n"  # no shell expansion
    assert t.run(["cat"], input=b"data").stdout == b"data"
    with pytest.raises(CommandFailed) as info:
        t.run(["sh", "-c", "echo nope >&2; exit 3"])
    assert info.value.returncode == 3 and "nope" in info.value.output
    with pytest.raises(CommandFailed, match="is not installed on local"):
        t.run(["no-such-program-tether"])


def test_put_bytes_replaces_atomically_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "p" / ".env"
    target.parent.mkdir()
    target.write_text("OLD=1\n")
    target.chmod(0o644)
    LocalTransport().put_bytes(b"TOKEN=abc\n", str(target))
    assert target.read_bytes() == b"TOKEN=abc\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == [".env"]


def test_push_and_pull_are_local_rsync(tmp_path: Path) -> None:
    t = LocalTransport()
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_bytes(os.urandom(5000))
    (src / "skip.log").write_text("x")
    first = t.push(src, str(tmp_path / "dest"), excludes=["*.log"])
    assert first.files_transferred == 1 and first.total_size == 5000
    assert not (tmp_path / "dest" / "skip.log").exists()
    assert t.push(src, str(tmp_path / "dest"), excludes=["*.log"]).files_transferred == 0
    back = t.pull(str(tmp_path / "dest"), tmp_path / "back")
    assert (tmp_path / "back" / "pkg" / "a.py").read_bytes() == (src / "pkg" / "a.py").read_bytes()
    assert back.files_transferred == 1


def test_local_tmux_missing_is_a_clear_error(tmp_path: Path) -> None:
    sessions = TmuxSessions(LocalTransport(env={"PATH": str(tmp_path)}), str(tmp_path))
    with pytest.raises(CommandFailed, match="tmux is not installed on local"):
        sessions.start("exp", ["true"], cwd=str(tmp_path))
    assert LocalTransport().interactive_argv(["tmux", "attach"]) == ["tmux", "attach"]
