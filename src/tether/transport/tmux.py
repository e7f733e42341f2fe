"""tmux: pure argv builders and :class:`TmuxSessions`, detached sessions on a host reached by a transport.

Every host gets its own tmux server, selected with ``-L <socket>`` where the socket name is ``tether-`` followed by
the first 8 hex digits of the SHA1 of the host's root directory (its ``/workspace``). Two hosts living on one
machine (test hosts, emulated instances) therefore never see each other's sessions, tether never touches the
user's own tmux sessions, and a test can end exactly its own server with ``kill-server``.

A session runs one command given as an argv; it is handed to tmux as one shell-quoted string (tmux runs it with
``sh -c``), inside the remote command string that is itself shell-quoted once more by the transport. ``env`` is
set with ``env -- K=V`` inside that command: it is visible in the process list, so never pass secrets here (they go
into ``.env`` through :meth:`~tether.transport.base.Transport.put_bytes`).

A host without tmux gives a :class:`~tether.errors.CommandFailed` saying so and how to install it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from tether.errors import CommandFailed, ConfigError
from tether.transport.base import Completed, Transport

_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")


def socket_name(root: str) -> str:
    """``tether-`` + 8 hex digits of sha1(root): the tmux server (``-L``) of the host whose root is ``root``."""
    import hashlib  # here: it costs ms to import, and a command that starts or attaches nothing needs none

    return "tether-" + hashlib.sha1(root.encode()).hexdigest()[:8]


def check_session_name(name: str) -> str:
    """Session names are letters, digits, ``_`` and ``-`` (tmux rewrites ``.`` and ``:``, so they are refused)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"'{name}' cannot name a tmux session.",
            hint="Use letters, digits, '_' and '-' only (at most 100).",
        )
    return name


def _base(socket: str, tmux: str) -> list[str]:
    return [tmux, "-L", socket]


def session_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The shell string tmux runs for ``argv`` with ``env`` added (``exec`` so the pane's process is argv's)."""
    words = list(argv)
    if not words:
        raise ValueError("empty command")
    if env:
        words = ["env", "--", *(f"{k}={v}" for k, v in env.items()), *words]
    return "exec " + shlex.join(words)


def new_session_argv(
    socket: str,
    name: str,
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str] | None = None,
    tmux: str = "tmux",
) -> list[str]:
    """``tmux -L S new-session -d -s NAME -c CWD -- 'exec argv…'``: start ``argv`` detached in ``cwd``."""
    return [
        *_base(socket, tmux),
        "new-session",
        "-d",
        "-s",
        check_session_name(name),
        "-c",
        cwd,
        "--",
        session_command(argv, env),
    ]


def has_session_argv(socket: str, name: str, *, tmux: str = "tmux") -> list[str]:
    """``tmux -L S has-session -t =NAME`` (exact name): exit 0 if the session exists."""
    return [*_base(socket, tmux), "has-session", "-t", f"={check_session_name(name)}"]


def kill_session_argv(socket: str, name: str, *, tmux: str = "tmux") -> list[str]:
    """``tmux -L S kill-session -t =NAME``."""
    return [*_base(socket, tmux), "kill-session", "-t", f"={check_session_name(name)}"]


def capture_pane_argv(socket: str, name: str, *, lines: int = 200, tmux: str = "tmux") -> list[str]:
    """``tmux -L S capture-pane -p -J -t =NAME: -S -LINES``: the last ``lines`` lines of the session's pane."""
    return [
        *_base(socket, tmux),
        "capture-pane",
        "-p",
        "-J",
        "-t",
        f"={check_session_name(name)}:",
        "-S",
        f"-{lines}",
    ]


def list_sessions_argv(socket: str, *, tmux: str = "tmux") -> list[str]:
    """``tmux -L S list-sessions -F '#{session_name}'``."""
    return [*_base(socket, tmux), "list-sessions", "-F", "#{session_name}"]


def attach_argv(socket: str, name: str, *, tmux: str = "tmux") -> list[str]:
    """``tmux -L S attach-session -t =NAME`` (run it through the transport's ``interactive_argv``)."""
    return [*_base(socket, tmux), "attach-session", "-t", f"={check_session_name(name)}"]


def kill_server_argv(socket: str, *, tmux: str = "tmux") -> list[str]:
    """``tmux -L S kill-server``: ends every session of this host's tmux server."""
    return [*_base(socket, tmux), "kill-server"]


_NO_SERVER = ("no server running", "error connecting to", "No such file or directory")


class TmuxSessions:
    """Detached tmux sessions on the host of ``transport`` whose root directory is ``root``."""

    def __init__(self, transport: Transport, root: str, *, tmux: str = "tmux") -> None:
        self.transport = transport
        self.root = root
        self.tmux = tmux
        self.socket = socket_name(root)

    def _run(self, argv: list[str], *, timeout: float = 30.0) -> Completed:
        result = self.transport.run(argv, check=False, timeout=timeout)
        if result.returncode == 127:
            raise CommandFailed(
                f"tmux is not installed on {self.transport.label} (or not on its PATH).",
                hint=f"Install it on {self.transport.label}, e.g. `apt-get install -y tmux`, then try again.",
                returncode=127,
                output=result.output_tail(),
            )
        return result

    def start(self, name: str, argv: Sequence[str], *, cwd: str, env: Mapping[str, str] | None = None) -> None:
        """Start ``argv`` in a new detached session ``name``; fails if that session already exists."""
        result = self._run(new_session_argv(self.socket, name, argv, cwd=cwd, env=env, tmux=self.tmux))
        if result.returncode != 0:
            raise CommandFailed(
                f"Could not start tmux session '{name}' on {self.transport.label}: "
                f"{result.err_text().strip() or 'exit code ' + str(result.returncode)}",
                hint="If a session of that name is still running, inspect it with `tether attach` or stop it first.",
                returncode=result.returncode,
                output=result.output_tail(),
            )

    def exists(self, name: str) -> bool:
        """Whether session ``name`` is running."""
        return self._run(has_session_argv(self.socket, name, tmux=self.tmux)).returncode == 0

    def sessions(self) -> list[str]:
        """The names of the running sessions (empty when the tmux server is not running)."""
        result = self._run(list_sessions_argv(self.socket, tmux=self.tmux))
        if result.returncode != 0:
            if any(marker in result.err_text() for marker in _NO_SERVER):
                return []
            raise CommandFailed(
                f"Could not list tmux sessions on {self.transport.label}: {result.err_text().strip()}",
                hint="Check that tmux works on that host.",
                returncode=result.returncode,
                output=result.output_tail(),
            )
        return [line for line in result.text().splitlines() if line]

    def capture(self, name: str, *, lines: int = 200) -> str:
        """The last ``lines`` lines shown in session ``name``."""
        result = self._run(capture_pane_argv(self.socket, name, lines=lines, tmux=self.tmux))
        if result.returncode != 0:
            raise CommandFailed(
                f"Could not read tmux session '{name}' on {self.transport.label}: {result.err_text().strip()}",
                hint="The session may have ended; list the running ones with `tether status`.",
                returncode=result.returncode,
                output=result.output_tail(),
            )
        return result.text()

    def kill(self, name: str) -> bool:
        """End session ``name``; returns False if it was not running (safe to call twice)."""
        return self._run(kill_session_argv(self.socket, name, tmux=self.tmux)).returncode == 0

    def kill_server(self) -> None:
        """End this host's tmux server and all its sessions (no-op if it is not running)."""
        self._run(kill_server_argv(self.socket, tmux=self.tmux))

    def attach_argv(self, name: str) -> list[str]:
        """The local argv that attaches this terminal to session ``name``."""
        return self.transport.interactive_argv(attach_argv(self.socket, name, tmux=self.tmux))
