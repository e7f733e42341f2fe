"""rsync: pure argv builders for push and pull, stats parsing, exit-code classification and the retry loop.

Both directions use ``-a --partial-dir=.rsync-partial --delay-updates --stats``: a file being received is written
into a ``.rsync-partial`` directory beside it and all received files are renamed into place only at the end of
the transfer, so a cut connection never leaves a partial file where a whole (earlier) one was. Partial data
kept in ``.rsync-partial`` lets the next attempt resume. Connection-type failures (exit codes 10, 12, 30, 35,
255) are retried with backoff up to a bound; everything else fails at once. A full disk (``No space left on
device``, ``Disk quota exceeded``) is reported as such, naming the side that is full.

A pull also passes ``--safe-links``: a symbolic link in the results that points outside the folder being pulled
(absolute, or climbing out with ``..``) is not made here, so a later pull can never write through it; links inside
the folder are copied as links, never followed (no ``-L``/``--copy-links``). Neither direction uses
``--keep-dirlinks``, so a link to a folder that an earlier transfer left here is replaced by the real folder rather
than written through.

Exit code 24 (some source files vanished during the transfer, e.g. a progress file replaced while being read)
counts as success: everything else arrived, and the next pull brings the new file.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from tether.errors import SSHError, SyncError
from tether.transport.base import Backoff, Completed, Runner, SyncStats, sleep_before_retry

PARTIAL_DIR = ".rsync-partial"
#: rsync exit codes that mean the connection (not the data) failed: worth retrying.
RETRYABLE_EXIT_CODES = frozenset({10, 12, 30, 35, 255})
#: rsync exit codes that still mean the transfer is complete enough to report success.
SUCCESS_EXIT_CODES = frozenset({0, 24})
_DISK_FULL = ("No space left on device", "Disk quota exceeded")

Direction = Literal["push", "pull"]
ExitClass = Literal["ok", "retry", "disk_full", "fatal"]


def _common(rsh: str | None, *extra: str) -> list[str]:
    argv = ["rsync", "-a", f"--partial-dir={PARTIAL_DIR}", "--delay-updates", "--stats", *extra]
    if rsh is not None:
        argv += ["-e", rsh]
    return argv


def _dir(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def push_argv(
    local_dir: Path,
    dest: str,
    *,
    rsh: str | None = None,
    excludes: Sequence[str] = (),
    delete: bool = False,
    make_dir: str | None = None,
) -> list[str]:
    """rsync argv copying the contents of ``local_dir`` into ``dest`` (``host:path`` or a local path).

    ``make_dir``: a remote folder the receiving side makes (``mkdir -p``) before its rsync starts, in the same
    connection (``--rsync-path``), so a push to a new folder is one round trip, not two.
    """
    argv = _common(rsh)
    if make_dir is not None:
        argv.append(f"--rsync-path=mkdir -p -- {shlex.quote(make_dir)} && rsync")
    if delete:
        argv.append("--delete-delay")
    argv += [f"--exclude={pattern}" for pattern in excludes]
    return [*argv, _dir(str(local_dir)), _dir(dest)]


def pull_argv(
    source: str,
    local_dir: Path,
    *,
    rsh: str | None = None,
    includes: Sequence[str] = (),
    excludes: Sequence[str] = (),
) -> list[str]:
    """rsync argv copying the contents of ``source`` into ``local_dir``; includes are given before excludes.

    ``--safe-links``: links that point outside ``source`` are not made here (see the module's docstring).
    """
    argv = _common(rsh, "--safe-links")
    argv += [f"--include={pattern}" for pattern in includes]
    argv += [f"--exclude={pattern}" for pattern in excludes]
    return [*argv, _dir(source), _dir(str(local_dir))]


def _number(text: str) -> int:
    """``12,345`` or ``1.23M`` (rsync's human-readable forms) as an int."""
    match = re.fullmatch(r"([\d,.]+)([KMGTP]?)", text.strip())
    if not match:
        return 0
    digits, suffix = match.groups()
    scale = 1024 ** ("KMGTP".find(suffix) + 1) if suffix else 1
    return int(float(digits.replace(",", "")) * scale)


def parse_stats(output: str) -> SyncStats:
    """Read ``--stats`` output: regular files transferred, literal data sent, total file size."""

    def field(label: str) -> int:
        match = re.search(rf"^{re.escape(label)}:\s*([\d,.]+[KMGTP]?)", output, re.MULTILINE)
        return _number(match.group(1)) if match else 0

    return SyncStats(
        files_transferred=field("Number of regular files transferred"),
        bytes_transferred=field("Literal data"),
        total_size=field("Total file size"),
    )


def classify_exit(returncode: int, stderr: str) -> ExitClass:
    """``ok``, ``retry`` (connection-type failure), ``disk_full`` or ``fatal``."""
    if any(marker in stderr for marker in _DISK_FULL):
        return "disk_full"
    if returncode in SUCCESS_EXIT_CODES:
        return "ok"
    if returncode in RETRYABLE_EXIT_CODES:
        return "retry"
    return "fatal"


_CAUSE_WORDS = ("error", "cannot", "could not", "failed", "denied")


def _last_error_line(stderr: str) -> str:
    """The line that says why rsync failed: its last specific complaint, not the ``rsync error: ... (code N)``
    summary (which only says that something earlier went wrong), unless that is all there is."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith("rsync error:")]
    for line in reversed(causes):
        if line.startswith("rsync:") or any(word in line.lower() for word in _CAUSE_WORDS):
            return line
    for line in reversed(lines):
        if line.startswith("rsync") or "error" in line.lower():
            return line
    return lines[-1] if lines else ""


def sync_error(
    klass: ExitClass, result: Completed, *, direction: Direction, where: str, remote: bool, attempts: int
) -> SyncError:
    """The :class:`SyncError` for a failed transfer."""
    stderr = result.err_text()
    what = f"{'Pushing to' if direction == 'push' else 'Pulling from'} {where}"
    if klass == "disk_full":
        receiver_is_remote = remote and direction == "push"
        side = f"the disk of {where}" if receiver_is_remote else "the local disk"
        return SyncError(
            f"{what} failed: {side} is full (rsync: {_last_error_line(stderr) or 'no space left'}).",
            hint=(
                f"Free space on {where} (or give it a bigger disk), then push again; files already there are whole."
                if receiver_is_remote
                else "Free space on this machine, then pull again; files already here are whole."
            ),
        )
    detail = _last_error_line(stderr) or f"rsync exit code {result.returncode}"
    if klass == "retry":
        return SyncError(
            f"{what} failed after {attempts} attempts: the connection kept failing ({detail}).",
            hint="Check the network and that the host is up, then run it again; the transfer resumes and "
            "no file is left half-written.",
        )
    return SyncError(
        f"{what} failed with rsync exit code {result.returncode}: {detail}",
        hint="Fix the cause named by rsync and run it again.",
    )


def run_rsync(
    argv: Sequence[str],
    *,
    runner: Runner,
    backoff: Backoff,
    direction: Direction,
    where: str,
    remote: bool,
    fatal_check: Callable[[str], SSHError | None] | None = None,
    timeout: float | None = None,
) -> SyncStats:
    """Run rsync, retrying connection failures per ``backoff``; return its stats or raise SyncError/SSHError.

    ``fatal_check`` turns ssh failures that retrying cannot fix (authentication, changed host key) into an
    :class:`SSHError` raised at once.
    """
    delays = backoff.delays()
    attempt = 0
    while True:
        attempt += 1
        result = runner(list(argv), timeout=timeout)
        stderr = result.err_text()
        klass = classify_exit(result.returncode, stderr)
        if klass == "ok":
            return parse_stats(result.text())
        if fatal_check is not None and klass != "disk_full":
            ssh_failure = fatal_check(stderr)
            if ssh_failure is not None:
                raise ssh_failure
        if klass != "retry" or attempt > len(delays):
            raise sync_error(klass, result, direction=direction, where=where, remote=remote, attempts=attempt)
        sleep_before_retry(delays[attempt - 1])
