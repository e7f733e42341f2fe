"""SSHTransport against two real sshd hosts side by side: run, put_bytes, push, pull, tmux."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tether.errors import CommandFailed
from tether.testing.sshd import SshdHost
from tether.transport.ssh import SSHTransport
from tether.transport.tmux import TmuxSessions, socket_name

Connect = Callable[..., SSHTransport]


def test_run_reaches_each_host_with_cwd_env_and_exit_codes(
    sshd_hosts: tuple[SshdHost, SshdHost], connect: Connect, recorder: Any
) -> None:
    a, b = sshd_hosts
    ta, tb = connect(a), connect(b)
    assert ta.run(["pwd"], cwd=str(a.root_dir)).text().strip() == str(a.root_dir)
    assert tb.run(["pwd"], cwd=str(b.root_dir)).text().strip() == str(b.root_dir)
    out = ta.run(["sh", "-c", 'printf "%s|%s" "$GREETING" "$1"', "sh", "it's $HOME; rm -rf /"], env={"GREETING": "a b"})
    assert out.text() == "a b|it's $HOME; rm -rf /"
    assert ta.run(["cat"], input=b"\x00binary\xff").stdout == b"\x00binary\xff"

    failed = ta.run(["sh", "-c", "echo oops >&2; exit 7"], check=False)
    assert failed.returncode == 7 and failed.stderr == b"oops\n"
    with pytest.raises(CommandFailed) as info:
        ta.run(["sh", "-c", "echo oops >&2; exit 7"])
    assert info.value.returncode == 7
    assert "`sh` exited with code 7" in info.value.message and "oops" in info.value.output

    # A command that itself exits 255 is a command failure, not an ssh failure, and is not retried.
    t255 = connect(a, runner=recorder)
    assert t255.run(["sh", "-c", "exit 255"], check=False).returncode == 255
    commands = [argv for argv in recorder.argvs if "-O" not in argv]
    assert len(commands) == 1  # one run; the other argv is the `ssh -O check` that found the connection alive


def test_put_bytes_is_atomic_private_and_keeps_the_secret_out_of_argv(
    sshd_hosts: tuple[SshdHost, SshdHost], connect: Connect, recorder: Any
) -> None:
    a, b = sshd_hosts
    ta = connect(a, runner=recorder)
    secret = b"VAST_API_KEY=sk-very-secret-value-0123456789\nHF_TOKEN=hf_abcdef\n"
    target = a.root_dir / "proj" / ".env"
    target.parent.mkdir()
    target.write_text("OLD=1\n")
    target.chmod(0o644)

    ta.put_bytes(secret, str(target))

    assert target.read_bytes() == secret
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == [".env"]  # no temp file left behind
    assert not (b.root_dir / "proj").exists()  # the other host is untouched
    for argv in recorder.argvs:
        joined = " ".join(argv)
        assert "sk-very-secret" not in joined and "hf_abcdef" not in joined
    assert secret in recorder.inputs  # it travelled through stdin

    ta.put_bytes(b"x", str(a.root_dir / "new" / "deep" / "file"), mode=0o640)
    assert stat.S_IMODE((a.root_dir / "new" / "deep" / "file").stat().st_mode) == 0o640


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_push_sends_only_changes_and_pull_brings_results_home(sshd_host: SshdHost, connect: Connect) -> None:
    t = connect(sshd_host)
    code = sshd_host.base_dir.parent / "code"
    _tree(code, {"train.py": os.urandom(200_000), "lib/util.py": os.urandom(50_000), ".git/HEAD": b"ref"})
    remote = str(sshd_host.root_dir / "proj")

    first = t.push(code, remote, excludes=[".git"])
    assert first.files_transferred == 2 and first.bytes_transferred >= 250_000
    assert (sshd_host.root_dir / "proj" / "lib" / "util.py").read_bytes() == (code / "lib" / "util.py").read_bytes()
    assert not (sshd_host.root_dir / "proj" / ".git").exists()

    again = t.push(code, remote, excludes=[".git"])
    assert again.files_transferred == 0 and again.bytes_transferred == 0
    assert again.total_size == first.total_size

    (code / "train.py").write_bytes((code / "train.py").read_bytes()[:-10] + b"0123456789")
    # rsync's quick check compares size and mtime: an edit within the same second as the first write, of the same
    # size, would look unchanged. A real edit comes later; say so explicitly.
    later = (code / "train.py").stat().st_mtime + 5
    os.utime(code / "train.py", (later, later))
    delta = t.push(code, remote, excludes=[".git"])
    assert delta.files_transferred == 1 and delta.bytes_transferred < 50_000

    (code / "lib" / "util.py").unlink()
    t.push(code, remote, excludes=[".git"], delete=True)
    assert not (sshd_host.root_dir / "proj" / "lib" / "util.py").exists()

    results = sshd_host.root_dir / "proj" / "results"
    _tree(results, {"a/results.json": b'{"completed": 1}', "a/journal.jsonl": b"{}\n", "big.bin": os.urandom(10)})
    home = sshd_host.base_dir.parent / "home-results"
    pulled = t.pull(str(results), home, includes=["*/", "*.json", "*.jsonl"], excludes=["*"])
    assert pulled.files_transferred == 2
    assert (home / "a" / "results.json").read_bytes() == b'{"completed": 1}'
    assert not (home / "big.bin").exists()


def test_tmux_sessions_start_inspect_kill_and_stay_per_host(
    sshd_hosts: tuple[SshdHost, SshdHost], connect: Connect
) -> None:
    a, b = sshd_hosts
    tmux_a = TmuxSessions(connect(a), str(a.root_dir))
    tmux_b = TmuxSessions(connect(b), str(b.root_dir))
    assert tmux_a.socket == socket_name(str(a.root_dir)) != tmux_b.socket
    marker = a.root_dir / "started"
    tmux_a.start(
        "exp-1",
        ["sh", "-c", 'echo "hello $WHO from $(pwd)"; touch started; exec sleep 60'],
        cwd=str(a.root_dir),
        env={"WHO": "tmux user"},
    )
    assert tmux_a.exists("exp-1")
    assert tmux_a.sessions() == ["exp-1"]
    assert tmux_b.sessions() == [] and not tmux_b.exists("exp-1")

    with pytest.raises(CommandFailed, match="Could not start tmux session 'exp-1'"):
        tmux_a.start("exp-1", ["true"], cwd=str(a.root_dir))

    deadline_hits = 0
    while not marker.exists():  # the session's own proof of life; bounded by the test timeout
        deadline_hits += 1
        assert deadline_hits < 500
        tmux_a.exists("exp-1")
    screen = ""
    for _ in range(50):
        screen = tmux_a.capture("exp-1")
        if "hello" in screen:
            break
    assert f"hello tmux user from {a.root_dir}" in screen

    assert tmux_a.attach_argv("exp-1")[-1].endswith("attach-session -t =exp-1")
    assert tmux_a.kill("exp-1") is True
    assert not tmux_a.exists("exp-1")
    assert tmux_a.kill("exp-1") is False  # safe to call twice
    assert tmux_a.sessions() == []


def test_sha256_of_pulled_files_match(sshd_host: SshdHost, connect: Connect) -> None:
    t = connect(sshd_host)
    remote = sshd_host.root_dir / "out"
    _tree(remote, {f"f{i}.bin": os.urandom(100_000) for i in range(3)})
    local = sshd_host.base_dir.parent / "local-out"
    t.pull(str(remote), local)
    for i in range(3):
        name = f"f{i}.bin"
        assert (
            hashlib.sha256((local / name).read_bytes()).digest()
            == hashlib.sha256((remote / name).read_bytes()).digest()
        )


def test_a_push_to_a_new_folder_is_one_round_trip(sshd_host: SshdHost, connect: Connect, recorder: Any) -> None:
    code = sshd_host.base_dir / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "m.py").write_text("x = 1\n")
    remote = sshd_host.root_dir / "new deep" / "proj"
    t = connect(sshd_host, runner=recorder)
    t.push(code, str(remote))
    assert (remote / "pkg" / "m.py").read_text() == "x = 1\n"
    assert [argv[0] for argv in recorder.argvs if "-O" not in argv] == ["rsync"]  # no `mkdir` call before it
