"""A real OpenSSH server on a loopback port, for tests and for the Vast emulator.

:class:`SshdHost` starts ``sshd -D -e -f <config>`` on ``127.0.0.1`` and a free port with a throwaway ed25519 host
key and a throwaway user key, and gives a directory of its own (``root_dir``) that plays the server's
``/workspace``. It logs in as the current user (root in CI). ``stop()`` ends only its own sshd and the
connections it accepted; ``restart(new_port=True)`` comes back on another port (a rented instance after a
restart); ``rotate_host_key()`` makes the next connection see a changed host key.

For the Vast emulator a host can also play a rented container: ``authorize(keys)`` sets the public keys it accepts
(besides its own test key), ``run_onstart(script)`` runs a start script there, and ``auto_tmux=True`` adds the
vendor's auto-tmux login: every session gets its own ``HOME`` (``base_dir/home``), and a login with a terminal lands
in the vendor's tmux session (the command it asked for is not run) unless ``~/.no_auto_tmux`` exists; a session
without a terminal runs its command as a shell inside that tmux would (``TMUX`` set).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tether.atomic import atomic_write
from tether.errors import TetherError
from tether.transport.ssh import SSHTransport, parse_address

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
START_DEADLINE = 15.0
STOP_DEADLINE = 5.0


def find_sshd() -> str | None:
    """The absolute path of ``sshd`` (it must be started by absolute path), or None if it is not installed."""
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("sshd")
    return os.path.abspath(found) if found else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def generate_key(path: Path, comment: str) -> Path:
    """Create an ed25519 key pair at ``path`` (and ``path.pub``) with no passphrase; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


def _children_of(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: the ppid follows the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found.extend(kids)
        frontier.extend(kids)
    return found


def _wait_gone(pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


class _PortTaken(Exception):
    """sshd could not bind the port this host chose: another process took it first."""


class SshdHost:
    """One real sshd on 127.0.0.1 with its own keys and its own root directory.

    ``base_dir`` holds ``root/`` (the server's workspace, ``root_dir``), ``sshd/`` (config, host key,
    authorized_keys, pid file, log) and ``client/`` (the user's key, ``identity_file``).
    """

    def __init__(
        self, base_dir: Path, *, user: str | None = None, port: int | None = None, auto_tmux: bool = False
    ) -> None:
        sshd = find_sshd()
        if sshd is None:
            raise TetherError(
                "OpenSSH's sshd is not installed.", hint="Install it (Debian: apt-get install openssh-server)."
            )
        self.sshd = sshd
        self.base_dir = base_dir
        self.host = "127.0.0.1"
        self.user = user or getpass.getuser()
        self.port = port or free_port()
        self._own_port = port is None  # a port this host chose may be taken by the time sshd binds it: choose again
        self.root_dir = base_dir / "root"
        self.etc_dir = base_dir / "sshd"
        self.host_key = self.etc_dir / "ssh_host_ed25519_key"
        self.identity_file = base_dir / "client" / "id_ed25519"
        self.config_file = self.etc_dir / "sshd_config"
        self.pid_file = self.etc_dir / "sshd.pid"
        self.log_file = self.etc_dir / "sshd.log"
        self.authorized_keys = self.etc_dir / "authorized_keys"
        self.auto_tmux = auto_tmux
        self.home_dir = base_dir / "home"
        self.login_hook = self.etc_dir / "login-hook.sh"
        self.bin_dir = base_dir / "bin"
        self.vendor_tmux_socket = f"vast-auto-{self.port}-{os.getpid()}"
        self._proc: subprocess.Popen[bytes] | None = None
        self.root_dir.mkdir(parents=True, exist_ok=True)
        generate_key(self.host_key, "tether-test-host")
        generate_key(self.identity_file, "tether-test-user")
        self.identity_file.parent.chmod(0o700)
        self.authorized_keys.write_text(self.identity_file.with_name("id_ed25519.pub").read_text())
        if auto_tmux:
            self.home_dir.mkdir(parents=True, exist_ok=True)

    def authorize(self, keys: list[str]) -> None:
        """Accept exactly these public keys (OpenSSH lines), besides the host's own test key; takes effect on the
        next login."""
        own = self.identity_file.with_name("id_ed25519.pub").read_text().strip()
        lines = [own, *(k.strip() for k in keys if k.strip())]
        atomic_write(self.authorized_keys, "\n".join(lines) + "\n", durable=False)

    def install_bin(self, name: str, script: str) -> None:
        """Put an executable ``name`` first on the PATH of this host's sessions (hosts with the vendor's login, as
        the emulator's are): the emulator gives each host the ``nvidia-smi`` (and, on a bad machine, the ``df``)
        that its machine shows."""
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        path = self.bin_dir / name
        path.write_text(script)
        path.chmod(0o755)

    def run_onstart(self, script: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> int:
        """Run a start script on the host, as the container's start would (cwd: the root, HOME: the host's home when
        it has one, ``env`` added to the environment: the container's variables); its output goes to
        ``sshd/onstart.log``. The exit code."""
        env = {**os.environ, **(env or {})}
        if self.auto_tmux:
            env["HOME"] = str(self.home_dir)
        if self.bin_dir.is_dir():
            env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        with (self.etc_dir / "onstart.log").open("ab") as log:
            done = subprocess.run(
                ["/bin/sh", "-c", script],
                cwd=self.root_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                timeout=timeout,
                check=False,
            )
        return done.returncode

    def _write_login_hook(self) -> None:
        home = shlex.quote(str(self.home_dir))
        sock = shlex.quote(self.vendor_tmux_socket)
        self.login_hook.write_text(
            "\n".join(
                [
                    "#!/bin/sh",
                    "# The Vast emulator's auto-tmux login (a model of the vendor's): unless ~/.no_auto_tmux exists, a",
                    "# login with a terminal lands in the vendor's tmux session instead of the command it asked for.",
                    f"export HOME={home}",
                    f'export PATH={shlex.quote(str(self.bin_dir))}:"$PATH"',
                    'cd "$HOME" || exit 1',
                    'if [ ! -e "$HOME/.no_auto_tmux" ]; then',
                    '  if [ -n "$SSH_TTY" ]; then',
                    f"    exec tmux -L {sock} new-session -A -s ssh_tmux",
                    "  fi",
                    f'  export TMUX="/tmp/tmux-$(id -u)/{self.vendor_tmux_socket},0,0"',
                    "fi",
                    'if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec "${SHELL:-/bin/sh}" -c "$SSH_ORIGINAL_COMMAND"; fi',
                    'exec "${SHELL:-/bin/sh}" -l',
                    "",
                ]
            )
        )
        self.login_hook.chmod(0o755)

    @property
    def address(self) -> str:
        """``user@127.0.0.1:port``, as a ``[hosts.X]`` entry would carry it."""
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def host_public_key(self) -> str:
        """The server's current public host key line (``ssh-ed25519 AAAA… comment``)."""
        return self.host_key.with_name(self.host_key.name + ".pub").read_text().strip()

    def _write_config(self) -> None:
        self.config_file.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.host}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.pid_file}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "MaxSessions 64",
                    "MaxStartups 64:30:128",
                    "PrintMotd no",
                    "Subsystem sftp internal-sftp",
                    *([f"ForceCommand {self.login_hook}"] if self.auto_tmux else []),
                    "",
                ]
            )
        )
        if self.auto_tmux:
            self._write_login_hook()

    def start(self) -> None:
        """Start sshd and wait (with a deadline) until it answers with an SSH banner. When the port this host chose
        was taken in the meantime (another test process may bind the same free port first), it chooses another."""
        for _ in range(5):
            try:
                self._start_once()
                return
            except _PortTaken:
                old = self.port
                while self.port == old:
                    self.port = free_port()
        self._start_once()

    def _start_once(self) -> None:
        if self.pid is not None:
            return
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        self._write_config()
        logged = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.sshd, "-D", "-e", "-f", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                with self.log_file.open("rb") as log:
                    log.seek(logged)
                    said = log.read().decode(errors="replace")
                if self._own_port and "Address already in use" in said:
                    raise _PortTaken(self.port)
                raise TetherError(
                    f"sshd on port {self.port} exited at start with code {code}.",
                    hint=f"See its log: {self.log_file}",
                )
            if self._banner():
                return
            time.sleep(0.02)
        self.stop()
        raise TetherError(
            f"sshd on port {self.port} did not answer within {START_DEADLINE:g} s.",
            hint=f"See its log: {self.log_file}",
        )

    def _banner(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                return sock.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def stop(self) -> None:
        """End this sshd and every connection it accepted (only processes it started); safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            sessions = _children_of(proc.pid)
            for pid in [proc.pid, *sessions]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_DEADLINE)
            deadline = time.monotonic() + STOP_DEADLINE
            for pid in sessions:
                if not _wait_gone(pid, deadline):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        self.end_watchdogs()

    def end_watchdogs(self) -> None:
        """End the server-side watchdogs watching a folder of this host (they detach from sshd, as on a real server,
        where a stopped container takes them down with it)."""
        end_watchdogs_under(self.base_dir)

    def restart(self, new_port: bool = False) -> None:
        """Stop and start again, on a fresh port if ``new_port`` (existing connections are cut)."""
        self.stop()
        if new_port:
            old = self.port
            while self.port == old:
                self.port = free_port()
        self.start()

    def rotate_host_key(self) -> None:
        """Give the server a new host key and restart it on the same port: clients now see a changed key."""
        generate_key(self.host_key, "tether-test-host")
        self.restart(new_port=False)

    def transport(self, *, label: str | None = None, **options: Any) -> SSHTransport:
        """An :class:`SSHTransport` logged in to this host with its user key (options go to SSHTransport)."""
        target = parse_address(self.address, identity_file=self.identity_file, label=label)
        return SSHTransport(target, **options)

    def kill_tmux(self) -> None:
        """End the tmux server tether uses for this host's root (no-op if none runs)."""
        from tether.transport.tmux import kill_server_argv, socket_name

        tmux = shutil.which("tmux")
        if tmux is not None:
            subprocess.run(
                kill_server_argv(socket_name(str(self.root_dir)), tmux=tmux),
                capture_output=True,
                timeout=10,
                check=False,
            )
            if self.auto_tmux:
                subprocess.run(
                    [tmux, "-L", self.vendor_tmux_socket, "kill-server"], capture_output=True, timeout=10, check=False
                )

    def __enter__(self) -> SshdHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def end_watchdogs_under(base: Path) -> None:
    """End the server-side watchdogs (``python -m tether.server watchdog --root R``) whose root is ``base`` or a
    folder inside it, by their pids (found in /proc)."""
    bases = {str(base), str(base.resolve())}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if "tether.server" not in argv or "watchdog" not in argv or "--root" not in argv:
            continue
        root = argv[argv.index("--root") + 1] if argv.index("--root") + 1 < len(argv) else ""
        if any(root == b or root.startswith(b + os.sep) for b in bases):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGTERM)
