"""A real sshd host for a benchmark: a temp dir, ``TETHER_HOME`` inside it, a warm control master, clean-up.

``bench_host()`` is a context manager yielding :class:`BenchHost` (the running :class:`SshdHost`, its
:class:`SSHTransport` and a tether :class:`Target` whose root is the host's root directory). On exit it ends the
control master, the tmux server tether would use for that root, and the sshd (only processes it started), and
removes the temp dir.

It sets ``os.environ["TETHER_HOME"]`` before tether reads it (tether reads it at call time, never at import).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tether.hosts import Target, remote_server_argv
from tether.provision import check_python
from tether.testing.sshd import SshdHost
from tether.transport.ssh import SSHTransport, ssh_argv


@dataclass
class BenchHost:
    host: SshdHost
    transport: SSHTransport
    target: Target
    tmp: Path

    @property
    def root(self) -> Path:
        return self.host.root_dir

    def ssh_argv(self, remote_command: str) -> list[str]:
        """The exact ssh argv tether itself uses for this host (same ControlMaster/ControlPath settings)."""
        return ssh_argv(self.transport.target, remote_command)


def run_timed(
    argv: Sequence[str], *, input: bytes | None = None, env: Mapping[str, str] | None = None
) -> tuple[float, bytes]:
    """Run ``argv`` (no shell; ``env`` replaces the environment) and return (seconds, stdout).

    A non-zero exit raises RuntimeError with the end of its stderr.
    """
    t0 = time.perf_counter()
    proc = subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        check=False,
        timeout=300,
        env=None if env is None else dict(env),
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    return elapsed, proc.stdout


@contextmanager
def bench_host(prefix: str) -> Iterator[BenchHost]:
    """Start one sshd host in a fresh temp dir, with ``TETHER_HOME`` there; yields a warm :class:`BenchHost`."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    previous_home = os.environ.get("TETHER_HOME")
    os.environ["TETHER_HOME"] = str(tmp / "home")
    host = SshdHost(tmp / "sshd")
    transport: SSHTransport | None = None
    try:
        host.start()
        transport = host.transport(label="bench")
        root = str(host.root_dir)
        target = Target(
            name="bench",
            transport=transport,
            root=root,
            code_dir=f"{root}/proj",
            server_argv=remote_server_argv(root),
        )
        transport.run(["true"])  # accept the host key and start the control master
        # As `tether up` does: record the interpreter's real path, so the server side starts as it would after up.
        _version, executable = check_python(target)
        target.server_argv = remote_server_argv(root, executable)
        yield BenchHost(host=host, transport=transport, target=target, tmp=tmp)
    finally:
        if transport is not None:
            transport.close()
        host.kill_tmux()
        host.stop()
        if previous_home is None:
            os.environ.pop("TETHER_HOME", None)
        else:
            os.environ["TETHER_HOME"] = previous_home
        shutil.rmtree(tmp, ignore_errors=True)
