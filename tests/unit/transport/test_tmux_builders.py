"""Exact argv of the tmux builders and the socket naming rule."""

from __future__ import annotations

import hashlib
import shlex

import pytest

from tether.errors import ConfigError
from tether.transport.ssh import remote_command
from tether.transport.tmux import (
    attach_argv,
    capture_pane_argv,
    has_session_argv,
    kill_server_argv,
    kill_session_argv,
    list_sessions_argv,
    new_session_argv,
    session_command,
    socket_name,
)

SOCK = socket_name("/workspace")


def test_socket_name_is_derived_from_root() -> None:
    assert "tether-" + hashlib.sha1(b"/workspace").hexdigest()[:8] == SOCK
    assert socket_name("/tmp/a/root") != socket_name("/tmp/b/root")


def test_new_session_argv_exact() -> None:
    argv = new_session_argv(SOCK, "exp-1", ["python3", "run.py", "--name", "a b"], cwd="/workspace/p", env={"X": "1"})
    assert argv == [
        "tmux", "-L", SOCK, "new-session", "-d", "-s", "exp-1", "-c", "/workspace/p", "--",
        "exec env -- X=1 python3 run.py --name 'a b'",
    ]  # fmt: skip


def test_session_command_survives_two_shells() -> None:
    argv = ["python3", "-c", "print('it''s $HOME')", "a b"]
    remote = remote_command(new_session_argv(SOCK, "s", argv, cwd="/w", tmux="/opt/tmux"))
    # The remote login shell splits the command once; tmux's `sh -c` splits the session command again.
    words = shlex.split(remote)
    assert words[0] == "/opt/tmux"
    assert shlex.split(words[-1]) == ["exec", *argv]
    assert session_command(["true"]) == "exec true"


def test_inspect_and_kill_argv_exact() -> None:
    assert has_session_argv(SOCK, "s1") == ["tmux", "-L", SOCK, "has-session", "-t", "=s1"]
    assert kill_session_argv(SOCK, "s1") == ["tmux", "-L", SOCK, "kill-session", "-t", "=s1"]
    assert capture_pane_argv(SOCK, "s1", lines=50) == [
        "tmux", "-L", SOCK, "capture-pane", "-p", "-J", "-t", "=s1:", "-S", "-50",
    ]  # fmt: skip
    assert list_sessions_argv(SOCK) == ["tmux", "-L", SOCK, "list-sessions", "-F", "#{session_name}"]
    assert attach_argv(SOCK, "s1") == ["tmux", "-L", SOCK, "attach-session", "-t", "=s1"]
    assert kill_server_argv(SOCK, tmux="tmux3") == ["tmux3", "-L", SOCK, "kill-server"]


@pytest.mark.parametrize("bad", ["", "a.b", "a:b", "a b", "x" * 101])
def test_bad_session_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        has_session_argv(SOCK, bad)
