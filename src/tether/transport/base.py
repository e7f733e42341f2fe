"""What every transport offers, and the one function through which transports start processes.

A transport reaches one host (this machine or an SSH server): it runs commands, writes small files (``.env``)
through stdin, pushes and pulls directories with rsync, and gives the argv for an interactive session.

All processes are started by :func:`run_process` (no shell, argv lists only). Transports call it through a
``runner`` attribute, so a caller (a test, a benchmark) can wrap it to observe every argv that is started.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tether.errors import CommandFailed
from tether.retry import Backoff as Backoff  # the one retry schedule; named here for the transports

#: How many bytes of a failed command's output are kept on the error.
OUTPUT_TAIL_BYTES = 4000


@dataclass(frozen=True)
class Completed:
    """A finished process: its exit code and what it wrote."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def text(self) -> str:
        """stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")

    def err_text(self) -> str:
        """stderr decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stderr.decode("utf-8", "replace")

    def output_tail(self, limit: int = OUTPUT_TAIL_BYTES) -> str:
        """The last ``limit`` bytes of stdout and stderr, for error messages."""
        out = self.stdout[-limit:].decode("utf-8", "replace")
        err = self.stderr[-limit:].decode("utf-8", "replace")
        return "\n".join(part for part in (out.rstrip(), err.rstrip()) if part)


@dataclass(frozen=True)
class SyncStats:
    """What one rsync transfer did.

    ``files_transferred``: regular files whose content was sent; ``bytes_transferred``: bytes that crossed the
    wire towards the receiver (deltas, not file sizes: an unchanged tree costs only its file list);
    ``total_size``: the size of all files in the source tree.
    """

    files_transferred: int
    bytes_transferred: int
    total_size: int


Runner = Callable[..., Completed]
"""Signature of :func:`run_process`: ``(argv, *, input, timeout, env, cwd) -> Completed``."""


class Transport(Protocol):
    """One host, reached the same way whether it is this machine or an SSH server."""

    label: str

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
        """Run ``argv`` on the host; with ``check`` a non-zero exit raises :class:`CommandFailed`."""
        ...

    def put_bytes(self, data: bytes, path: str, mode: int = 0o600) -> None:
        """Write ``data`` to ``path`` atomically with ``mode``; the data travels through stdin only."""
        ...

    def push(
        self, local_dir: Path, remote_dir: str, *, excludes: Sequence[str] = (), delete: bool = False
    ) -> SyncStats:
        """Make ``remote_dir`` hold the contents of ``local_dir`` (rsync)."""
        ...

    def pull(
        self, remote_dir: str, local_dir: Path, *, includes: Sequence[str] = (), excludes: Sequence[str] = ()
    ) -> SyncStats:
        """Copy the contents of ``remote_dir`` into ``local_dir``; a local file is never replaced by a partial one."""
        ...

    def interactive_argv(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` on the host attached to this terminal (for ``tether attach``)."""
        ...

    def close(self) -> None:
        """Release shared connections (a no-op where there are none)."""
        ...


def run_process(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Completed:
    """Start ``argv`` (no shell), feed ``input`` on stdin, wait at most ``timeout`` seconds.

    A program that does not exist gives exit code 127 and a "command not found" stderr, as a shell would, so
    callers treat local and remote commands alike. A timeout raises :class:`CommandFailed` (``returncode`` None)
    after killing the process.
    """
    full_env = None if env is None else {**os.environ, **env}
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as exc:
        if cwd is not None and not Path(cwd).is_dir():
            return Completed(1, b"", f"{argv[0]}: cannot enter directory {cwd}\n".encode())
        missing = exc.filename if isinstance(exc.filename, str) else argv[0]
        return Completed(127, b"", f"{missing}: command not found\n".encode())
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(
            f"`{first_word(argv)}` did not finish within {timeout:g} s and was stopped.",
            hint="Raise the timeout, or check whether the host is overloaded.",
            returncode=None,
            output=_tail_of(exc.stdout, exc.stderr),
        ) from None
    return Completed(proc.returncode, proc.stdout, proc.stderr)


def _tail_of(stdout: bytes | str | None, stderr: bytes | str | None) -> str:
    parts: list[str] = []
    for part in (stdout, stderr):
        if isinstance(part, bytes):
            parts.append(part[-OUTPUT_TAIL_BYTES:].decode("utf-8", "replace").rstrip())
        elif isinstance(part, str):
            parts.append(part[-OUTPUT_TAIL_BYTES:].rstrip())
    return "\n".join(p for p in parts if p)


def first_word(argv: Sequence[str]) -> str:
    """The program name of ``argv`` (its basename), for messages."""
    return os.path.basename(argv[0]) if argv else "(empty command)"


def command_failed(argv: Sequence[str], result: Completed, where: str) -> CommandFailed:
    """The :class:`CommandFailed` for ``argv`` that exited non-zero on host ``where``."""
    word = first_word(argv)
    if result.returncode == 127:
        return CommandFailed(
            f"`{word}` is not installed on {where} (command not found).",
            hint=f"Install {word} on {where}, or check the PATH its commands run with.",
            returncode=127,
            output=result.output_tail(),
        )
    tail = result.output_tail()
    last_line = tail.strip().splitlines()[-1] if tail.strip() else ""
    detail = f": {last_line}" if last_line else "."
    return CommandFailed(
        f"`{word}` exited with code {result.returncode} on {where}{detail}",
        hint="Fix the cause and run it again.",
        returncode=result.returncode,
        output=tail,
    )


def sleep_before_retry(seconds: float) -> None:
    """Wait between two attempts of a retried operation (there is nothing to poll for: the peer is away)."""
    time.sleep(seconds)
