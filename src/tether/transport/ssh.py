"""OpenSSH: address parsing, pure argv builders, failure classification, and :class:`SSHTransport`.

Every connection to one target shares a control master (``ControlMaster=auto``, ``ControlPersist``), sends
keepalives, gives up connecting after ``ConnectTimeout`` and never asks a question (``BatchMode=yes``). Host keys
are accepted on first use into a known_hosts file of that target under ``$TETHER_HOME/known_hosts/``
(``StrictHostKeyChecking=accept-new``); a key that later changes is refused with the exact command that accepts
it. Host-key checking is never turned off. The known_hosts folder is 0700 and each file in it 0600 (created so
before ssh writes to it; a looser one is tightened).

The control sockets live in ``$TETHER_HOME/cm/``; when that path is too long for a Unix socket (the limit is about
104 bytes on some systems, and ssh adds a temporary suffix while creating it) they live in a short per-user
directory ``/tmp/tether-<uid>/<8 hex of the TETHER_HOME path>/`` instead (mode 0700).

Remote commands are argv lists joined with :func:`shlex.join` into the one string ssh hands to the remote shell;
a working directory and environment variables are applied inside that string (``cd -- DIR && env -- K=V argv``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tether.errors import ConfigError, SSHError
from tether.paths import private_dir, private_file, tether_home
from tether.transport import rsync as rsync_mod
from tether.transport.base import (
    Backoff,
    Completed,
    Runner,
    SyncStats,
    command_failed,
    run_process,
    sleep_before_retry,
)

#: Longest control socket path we create (ssh appends ~17 bytes while binding; sun_path is 104 on BSD/macOS).
MAX_CONTROL_PATH = 80
#: Length of the name ``%C`` expands to (hex SHA1).
_CONTROL_NAME_LEN = 40

DEFAULT_CONNECT_TIMEOUT = 10
DEFAULT_CONTROL_PERSIST = 60
SERVER_ALIVE_INTERVAL = 15
SERVER_ALIVE_COUNT_MAX = 4

FailureKind = Literal["host_key", "auth", "unresolved", "unreachable", "dropped"]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".") or "host"


def known_hosts_dir(home: Path | None = None) -> Path:
    """Where per-host known_hosts files live: ``$TETHER_HOME/known_hosts``."""
    return (home or tether_home()) / "known_hosts"


def control_dir(home: Path | None = None, *, uid: int | None = None) -> Path:
    """The directory for control sockets: ``$TETHER_HOME/cm``, or a short per-user one if that is too deep."""
    home = home or tether_home()
    preferred = home / "cm"
    if len(str(preferred)) + 1 + _CONTROL_NAME_LEN <= MAX_CONTROL_PATH:
        return preferred
    user_id = os.getuid() if uid is None else uid
    digest = hashlib.sha1(str(home).encode()).hexdigest()[:8]
    return Path("/tmp") / f"tether-{user_id}" / digest


def _ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    if path.parent.name.startswith("tether-") and path.parent.parent == Path("/tmp"):
        path.parent.chmod(0o700)


@dataclass(frozen=True)
class SSHTarget:
    """How to reach one SSH host.

    ``host`` may be an ``~/.ssh/config`` alias: then ``user`` and ``port`` stay None and ssh's own config decides.
    """

    host: str
    user: str | None = None
    port: int | None = None
    identity_file: Path | None = None
    known_hosts: Path = field(default_factory=lambda: known_hosts_dir() / "default")
    control_dir: Path = field(default_factory=control_dir)
    label: str = ""

    @property
    def destination(self) -> str:
        """``user@host`` or ``host``, as ssh takes it."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def known_hosts_name(self) -> str:
        """The name under which ssh records this host's key: ``host`` or ``[host]:port``."""
        if self.port is None or self.port == 22:
            return self.host
        return f"[{self.host}]:{self.port}"

    @property
    def display(self) -> str:
        return self.label or self.host


_ADDRESS = re.compile(
    r"""^(?:(?P<user>[^@\s:/]+)@)?
        (?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+))
        (?::(?P<port>\d{1,5}))?$""",
    re.VERBOSE,
)


def parse_address(
    address: str,
    *,
    identity_file: str | Path | None = None,
    label: str | None = None,
    known_hosts: Path | None = None,
    control_path_dir: Path | None = None,
    home: Path | None = None,
) -> SSHTarget:
    """Parse ``user@host[:port]`` (or ``[ipv6]:port``, or an ``~/.ssh/config`` alias) into an :class:`SSHTarget`.

    ``label`` names the host in messages and picks its known_hosts file (default: the address without the user).
    """
    text = address.strip()
    match = _ADDRESS.match(text)
    if not match or text.startswith("-"):
        raise ConfigError(
            f"'{address}' is not an SSH address.",
            hint="Write it as user@host, user@host:port or an alias from ~/.ssh/config.",
        )
    host = match.group("v6") or match.group("host")
    port: int | None = None
    if match.group("port") is not None:
        port = int(match.group("port"))
        if not 0 < port < 65536:
            raise ConfigError(f"'{address}' has port {port}, which is not a TCP port.", hint="Use 1-65535.")
    name = label or (f"{host}:{port}" if port else host)
    home_dir = home or tether_home()
    return SSHTarget(
        host=host,
        user=match.group("user"),
        port=port,
        identity_file=Path(identity_file).expanduser() if identity_file else None,
        known_hosts=known_hosts or known_hosts_dir(home_dir) / _safe_name(name),
        control_dir=control_path_dir or control_dir(home_dir),
        label=name,
    )


def ssh_base_options(
    target: SSHTarget,
    *,
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
    control_persist: int = DEFAULT_CONTROL_PERSIST,
) -> list[str]:
    """The options every ssh (and rsync's ``-e``) uses for ``target``: port, key, host keys, sharing, keepalives."""
    opts: list[str] = []
    if target.port is not None:
        opts += ["-p", str(target.port)]
    if target.identity_file is not None:
        opts += ["-i", str(target.identity_file), "-o", "IdentitiesOnly=yes"]
    opts += [
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={target.known_hosts}",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL}",
        "-o", f"ServerAliveCountMax={SERVER_ALIVE_COUNT_MAX}",
        "-o", "ControlMaster=auto",
        "-o", f"ControlPath={target.control_dir}/%C",
        "-o", f"ControlPersist={control_persist}",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    return opts


def ssh_argv(
    target: SSHTarget,
    remote_command: str,
    tty: bool = False,
    *,
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
) -> list[str]:
    """``ssh <options> -T|-t <destination> <remote_command>``; ``remote_command`` is already shell-quoted."""
    return [
        "ssh",
        *ssh_base_options(target, connect_timeout=connect_timeout),
        "-t" if tty else "-T",
        target.destination,
        remote_command,
    ]


def control_argv(target: SSHTarget, command: Literal["check", "exit"]) -> list[str]:
    """``ssh -O check|exit``: ask about, or end, the control master of ``target``."""
    return ["ssh", *ssh_base_options(target), "-O", command, target.destination]


def remote_command(argv: Sequence[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """One shell string that runs ``argv`` (optionally in ``cwd`` with ``env`` added) on a POSIX shell."""
    if not argv:
        raise ValueError("empty command")
    words = list(argv)
    if env:
        for key in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"not an environment variable name: {key!r}")
        words = ["env", "--", *(f"{k}={v}" for k, v in env.items()), *words]
    command = shlex.join(words)
    if cwd is not None:
        command = f"cd -- {shlex.quote(cwd)} && {command}"
    return command


_HOST_KEY_PATTERNS = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed")
_AUTH_PATTERNS = ("Permission denied", "Too many authentication failures", "no mutual signature")
_UNRESOLVED_PATTERNS = (
    "Could not resolve hostname",
    "Name or service not known",
    "Temporary failure in name resolution",
)
_UNREACHABLE_PATTERNS = (
    "Connection refused",
    "Connection timed out",
    "Operation timed out",
    "No route to host",
    "Network is unreachable",
)
_DROPPED_PATTERNS = (
    "Connection closed",
    "Connection reset",
    "Broken pipe",
    "kex_exchange_identification",
    "ssh_exchange_identification",
    "banner exchange",
    "client_loop:",
    "not responding",
    "mux_client",
    "Control socket",
    "closed by remote host",
    "connection unexpectedly closed",
)


def classify_ssh_failure(stderr: str) -> FailureKind | None:
    """What kind of ssh failure ``stderr`` describes, or None if it is not an ssh failure."""
    for kind, patterns in (
        ("host_key", _HOST_KEY_PATTERNS),
        ("auth", _AUTH_PATTERNS),
        ("unresolved", _UNRESOLVED_PATTERNS),
        ("unreachable", _UNREACHABLE_PATTERNS),
        ("dropped", _DROPPED_PATTERNS),
    ):
        if any(p in stderr for p in patterns):
            return kind  # type: ignore[return-value]
    return None


def is_retryable(kind: FailureKind) -> bool:
    """Only transient failures are retried: refused/timed-out connections and dropped sessions."""
    return kind in ("unreachable", "dropped")


def accept_host_key_argv(target: SSHTarget, name: str | None = None) -> list[str]:
    """The command that forgets ``target``'s recorded host key, so the next connection accepts the new one."""
    return ["ssh-keygen", "-R", name or target.known_hosts_name, "-f", str(target.known_hosts)]


def ssh_error(kind: FailureKind, target: SSHTarget, stderr: str, attempts: int = 1) -> SSHError:
    """The :class:`SSHError` (message + actionable hint) for a failure of ``kind``, which it carries."""
    err = _ssh_error(kind, target, stderr, attempts)
    err.kind = kind
    return err


def _ssh_error(kind: FailureKind, target: SSHTarget, stderr: str, attempts: int) -> SSHError:
    where = f"{target.display}"
    endpoint = f"{target.host}:{target.port or 22}"
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    if kind == "host_key":
        found = re.search(r"Host key for (\S+) has changed", stderr)
        name = found.group(1) if found else target.known_hosts_name
        accept = shlex.join(accept_host_key_argv(target, name))
        return SSHError(
            f"The host key of {where} ({name}) has changed since it was first accepted; tether refused to connect.",
            hint=f"If the server was reinstalled or replaced on purpose, accept its new key with: {accept}",
        )
    if kind == "auth":
        key = f"key {target.identity_file}" if target.identity_file else "the default keys"
        user = target.user or "the configured user"
        return SSHError(
            f"{where} refused authentication for {user} with {key}.",
            hint="Check identity_file for this host and that its public key is in the server's authorized_keys.",
        )
    if kind == "unresolved":
        return SSHError(
            f"Cannot resolve the host name of {where} ({target.host}).",
            hint="Check the address for this host (or the alias in ~/.ssh/config).",
        )
    if kind == "unreachable":
        why = "connection refused" if "refused" in stderr else "no answer (timed out or no route)"
        return SSHError(
            f"Cannot reach {where} at {endpoint}{tried}: {why}.",
            hint="Check that the server is running and that its address and port are right.",
        )
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "connection lost"
    return SSHError(
        f"The SSH connection to {where} at {endpoint} was lost{tried}: {last}",
        hint="Check the network and that the server is up, then run the command again.",
    )


class SSHTransport:
    """A :class:`~tether.transport.base.Transport` for one SSH host.

    ``env`` is added to the environment of every command run on the host (tests use it to change the remote
    ``PATH``). ``backoff`` bounds the retries of connection failures (ssh exit 255 and rsync's connection
    errors); a command that ran and failed is never retried. ``runner`` starts processes (default
    :func:`~tether.transport.base.run_process`); wrap it to observe argvs.
    """

    def __init__(
        self,
        target: SSHTarget,
        *,
        label: str | None = None,
        env: Mapping[str, str] | None = None,
        backoff: Backoff | None = None,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
        runner: Runner | None = None,
    ) -> None:
        self.target = target
        self.label = label or target.display
        self.env = dict(env or {})
        self.backoff = backoff or Backoff()
        self.connect_timeout = connect_timeout
        self.runner: Runner = runner or run_process

    def _prepare(self) -> None:
        known = self.target.known_hosts
        if known.parent.parent == tether_home():
            private_dir(known.parent.parent)
        private_dir(known.parent)
        private_file(known)  # ssh would create it world-readable; 0600 it stays when ssh appends a key
        _ensure_private_dir(self.target.control_dir)

    def _ssh(self, command: str, *, input: bytes | None, timeout: float | None) -> Completed:
        """Run one remote shell ``command``, retrying connection failures; raise SSHError when they persist."""
        self._prepare()
        argv = ssh_argv(self.target, command, connect_timeout=self.connect_timeout)
        delays = self.backoff.delays()
        attempt = 0
        while True:
            attempt += 1
            result = self.runner(argv, input=input, timeout=timeout)
            if result.returncode != 255:
                return result
            kind = classify_ssh_failure(result.err_text())
            if kind is None and not self._master_alive():
                # A mux client whose shared connection died exits 255 without a word: that is a dropped link.
                kind = "dropped"
            if kind is None:
                return result  # the remote command itself exited 255
            if not is_retryable(kind) or attempt > len(delays):
                raise ssh_error(kind, self.target, result.err_text(), attempt)
            sleep_before_retry(delays[attempt - 1])

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        merged = {**self.env, **(env or {})}
        result = self._ssh(remote_command(argv, cwd=cwd, env=merged or None), input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise command_failed(argv, result, self.label)
        return result

    def put_bytes(self, data: bytes, path: str, mode: int = 0o600) -> None:
        """Write ``data`` to ``path`` on the host via stdin: temp file in the same directory, chmod, then rename."""
        self.run(put_bytes_argv(path, mode), input=data)

    def push(
        self, local_dir: Path, remote_dir: str, *, excludes: Sequence[str] = (), delete: bool = False
    ) -> SyncStats:
        argv = rsync_mod.push_argv(
            local_dir.absolute(),
            self._rsync_spec(remote_dir),
            rsh=self._rsh(),
            excludes=excludes,
            delete=delete,
            make_dir=remote_dir,  # made by the receiving side in the same connection: one round trip
        )
        return self._rsync(argv, "push")

    def pull(
        self, remote_dir: str, local_dir: Path, *, includes: Sequence[str] = (), excludes: Sequence[str] = ()
    ) -> SyncStats:
        local_dir.mkdir(parents=True, exist_ok=True)
        argv = rsync_mod.pull_argv(
            self._rsync_spec(remote_dir),
            local_dir.absolute(),
            rsh=self._rsh(),
            includes=includes,
            excludes=excludes,
        )
        return self._rsync(argv, "pull")

    def _rsync(self, argv: list[str], direction: Literal["push", "pull"]) -> SyncStats:
        self._prepare()

        def ssh_failure(stderr: str) -> SSHError | None:
            kind = classify_ssh_failure(stderr)
            if kind is not None and not is_retryable(kind):
                return ssh_error(kind, self.target, stderr)
            return None

        return rsync_mod.run_rsync(
            argv,
            runner=self.runner,
            backoff=self.backoff,
            direction=direction,
            where=self.label,
            remote=True,
            fatal_check=ssh_failure,
        )

    def _rsh(self) -> str:
        return shlex.join(["ssh", *ssh_base_options(self.target, connect_timeout=self.connect_timeout)])

    def _rsync_spec(self, path: str) -> str:
        host = f"[{self.target.host}]" if ":" in self.target.host else self.target.host
        user = f"{self.target.user}@" if self.target.user else ""
        return f"{user}{host}:{path}"

    def interactive_argv(self, argv: Sequence[str]) -> list[str]:
        command = remote_command(argv, env=self.env or None)
        return ssh_argv(self.target, command, tty=True, connect_timeout=self.connect_timeout)

    def _master_alive(self) -> bool:
        """Whether this host's control master still runs (``ssh -O check``)."""
        check = self.runner(control_argv(self.target, "check"), timeout=DEFAULT_CONNECT_TIMEOUT + 5)
        return check.returncode == 0

    def close(self) -> None:
        """End the shared control master of this host, if one is running."""
        if self.target.control_dir.is_dir():
            self.runner(control_argv(self.target, "exit"), timeout=DEFAULT_CONNECT_TIMEOUT + 5)


def put_bytes_argv(path: str, mode: int) -> list[str]:
    """The remote argv that stores its stdin at ``path`` atomically with ``mode`` (the data never is an argument).

    ``sh -c SCRIPT sh PATH MODE``: make the parent directory, write a ``mktemp`` file (created 0600) next to the
    target, chmod it, then ``mv`` it over the target; the temp file is removed if any step fails.
    """
    script = (
        'set -e; dest=$1; dir=$(dirname -- "$dest"); mkdir -p -- "$dir"; '
        'tmp=$(mktemp "$dir/.tether-put.XXXXXX"); trap \'rm -f -- "$tmp"\' EXIT; '
        'cat > "$tmp"; chmod "$2" "$tmp"; mv -f -- "$tmp" "$dest"; trap - EXIT'
    )
    return ["sh", "-c", script, "sh", path, f"{mode:o}"]
