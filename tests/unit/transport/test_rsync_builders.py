"""Exact argv of the rsync builders, stats parsing and exit-code classification."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.errors import SSHError, SyncError
from tether.transport.base import Backoff, Completed, SyncStats
from tether.transport.rsync import (
    RETRYABLE_EXIT_CODES,
    classify_exit,
    parse_stats,
    pull_argv,
    push_argv,
    run_rsync,
    sync_error,
)

RSH = "ssh -p 2222 -o BatchMode=yes"


def test_push_argv_exact() -> None:
    argv = push_argv(Path("/src/proj"), "root@h:/workspace/proj", rsh=RSH, excludes=[".git", "*.pyc"], delete=True)
    assert argv == [
        "rsync", "-a", "--partial-dir=.rsync-partial", "--delay-updates", "--stats",
        "-e", RSH,
        "--delete-delay",
        "--exclude=.git", "--exclude=*.pyc",
        "/src/proj/", "root@h:/workspace/proj/",
    ]  # fmt: skip


def test_push_argv_makes_the_remote_folder_in_the_same_connection() -> None:
    argv = push_argv(Path("/src/proj"), "h:/w/my proj", rsh=RSH, make_dir="/w/my proj")
    assert "--rsync-path=mkdir -p -- '/w/my proj' && rsync" in argv
    assert argv[-2:] == ["/src/proj/", "h:/w/my proj/"]
    assert not any(a.startswith("--rsync-path") for a in push_argv(Path("/a"), "h:/b", rsh=RSH))


def test_push_argv_local_without_delete() -> None:
    assert push_argv(Path("/a"), "/b/") == [
        "rsync", "-a", "--partial-dir=.rsync-partial", "--delay-updates", "--stats", "/a/", "/b/",
    ]  # fmt: skip


def test_pull_argv_exact_includes_before_excludes() -> None:
    argv = pull_argv("h:/workspace/p/results", Path("/l/results"), rsh=RSH, includes=["*.json"], excludes=["*"])
    assert argv == [
        "rsync", "-a", "--partial-dir=.rsync-partial", "--delay-updates", "--stats", "--safe-links",
        "-e", RSH,
        "--include=*.json", "--exclude=*",
        "h:/workspace/p/results/", "/l/results/",
    ]  # fmt: skip


@pytest.mark.parametrize("build", ["push", "pull"])
def test_links_are_never_followed_on_either_side(build: str) -> None:
    """No -L/--copy-links (a link's target would be copied) and no -K/--keep-dirlinks (a link here followed)."""
    if build == "push":
        argv = push_argv(Path("/src/proj"), "h:/w/p", rsh=RSH, excludes=["x"], delete=True)
    else:
        argv = pull_argv("h:/w/p/results", Path("/l/results"), rsh=RSH, includes=["a"], excludes=["b"])
    flags = [word for word in argv if word.startswith("-") and word != RSH]
    followers = {"-L", "--copy-links", "-K", "--keep-dirlinks", "--copy-unsafe-links", "--copy-dirlinks", "-k"}
    assert not followers & set(flags)
    assert not any(f.startswith("-") and not f.startswith("--") and set(f[1:]) & set("LKk") for f in flags)
    assert ("--safe-links" in flags) == (build == "pull")


STATS = """
Number of files: 4 (reg: 3, dir: 1)
Number of created files: 3 (reg: 3)
Number of regular files transferred: 3
Total file size: 12,582,912 bytes
Total transferred file size: 12,582,912 bytes
Literal data: 12,000,001 bytes
Matched data: 0 bytes
Total bytes sent: 12,586,137
Total bytes received: 76
"""


def test_parse_stats() -> None:
    assert parse_stats(STATS) == SyncStats(files_transferred=3, bytes_transferred=12_000_001, total_size=12_582_912)


def test_parse_stats_human_readable_and_missing() -> None:
    stats = parse_stats("Number of regular files transferred: 0\nTotal file size: 1.50K bytes\n")
    assert stats == SyncStats(files_transferred=0, bytes_transferred=0, total_size=1536)


@pytest.mark.parametrize("code", [10, 12, 30, 35, 255])
def test_connection_codes_are_retryable(code: int) -> None:
    assert code in RETRYABLE_EXIT_CODES
    assert classify_exit(code, "rsync: connection unexpectedly closed") == "retry"


@pytest.mark.parametrize("code", [1, 2, 3, 5, 11, 13, 22, 23])
def test_other_codes_are_fatal(code: int) -> None:
    assert classify_exit(code, "rsync error") == "fatal"


def test_ok_codes_and_disk_full() -> None:
    assert classify_exit(0, "") == "ok"
    assert classify_exit(24, "file has vanished") == "ok"
    assert classify_exit(11, 'rsync: write failed on "/w/x": No space left on device (28)') == "disk_full"
    assert classify_exit(12, "write failed: No space left on device (28)") == "disk_full"
    assert classify_exit(23, "Disk quota exceeded") == "disk_full"


def test_disk_full_names_the_full_side() -> None:
    result = Completed(11, b"", b'rsync: [receiver] write failed on "/w/big": No space left on device (28)\n')
    push = sync_error("disk_full", result, direction="push", where="lab1", remote=True, attempts=1)
    assert "the disk of lab1 is full" in push.message
    pull = sync_error("disk_full", result, direction="pull", where="lab1", remote=True, attempts=1)
    assert "the local disk is full" in pull.message


def test_a_fatal_error_names_the_cause_not_the_summary() -> None:
    stderr = (
        b"cannot delete non-empty directory: x\n"
        b"could not make way for new regular file: x\n"
        b"rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1394)\n"
    )
    error = sync_error("fatal", Completed(23, b"", stderr), direction="pull", where="lab1", remote=True, attempts=1)
    assert error.message == (
        "Pulling from lab1 failed with rsync exit code 23: could not make way for new regular file: x"
    )
    only_summary = Completed(23, b"", b"rsync error: some files/attrs were not transferred (code 23)\n")
    error = sync_error("fatal", only_summary, direction="pull", where="lab1", remote=True, attempts=1)
    assert error.message.endswith(": rsync error: some files/attrs were not transferred (code 23)")


class Script:
    """A runner that replays canned rsync outcomes: the unit under test is the retry loop, not rsync."""

    def __init__(self, *results: Completed) -> None:
        self.results = list(results)
        self.calls = 0

    def __call__(self, argv: list[str], **_: object) -> Completed:
        self.calls += 1
        return self.results.pop(0)


NO_WAIT = Backoff(retries=2, first=0.0)


def test_retry_loop_retries_connection_failures_then_succeeds() -> None:
    runner = Script(Completed(12, b"", b"connection unexpectedly closed"), Completed(0, STATS.encode(), b""))
    stats = run_rsync(["rsync"], runner=runner, backoff=NO_WAIT, direction="pull", where="h", remote=True)
    assert runner.calls == 2 and stats.files_transferred == 3


def test_retry_loop_is_bounded() -> None:
    runner = Script(*[Completed(255, b"", b"Connection reset by peer")] * 3)
    with pytest.raises(SyncError, match="after 3 attempts"):
        run_rsync(["rsync"], runner=runner, backoff=NO_WAIT, direction="pull", where="h", remote=True)
    assert runner.calls == 3


def test_retry_loop_does_not_retry_fatal_or_ssh_refusals() -> None:
    runner = Script(Completed(23, b"", b"rsync: some files could not be transferred"))
    with pytest.raises(SyncError, match="exit code 23"):
        run_rsync(["rsync"], runner=runner, backoff=NO_WAIT, direction="push", where="h", remote=True)
    assert runner.calls == 1
    runner = Script(Completed(255, b"", b"Permission denied (publickey)."))
    with pytest.raises(SSHError):
        run_rsync(
            ["rsync"],
            runner=runner,
            backoff=NO_WAIT,
            direction="push",
            where="h",
            remote=True,
            fatal_check=lambda err: SSHError("denied") if "Permission denied" in err else None,
        )
    assert runner.calls == 1
