"""Exact argv of the ssh builders, address parsing and classification of ssh failures."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tether.errors import ConfigError
from tether.transport.ssh import (
    MAX_CONTROL_PATH,
    SSHTarget,
    accept_host_key_argv,
    classify_ssh_failure,
    control_argv,
    control_dir,
    is_retryable,
    parse_address,
    put_bytes_argv,
    remote_command,
    ssh_argv,
    ssh_base_options,
    ssh_error,
)

HOME = Path("/h")


def target(**kw: object) -> SSHTarget:
    base: dict[str, object] = {
        "host": "10.0.0.5",
        "user": "root",
        "port": 2222,
        "identity_file": Path("/keys/id"),
        "known_hosts": Path("/h/known_hosts/lab1"),
        "control_dir": Path("/h/cm"),
        "label": "lab1",
    }
    base.update(kw)
    return SSHTarget(**base)  # type: ignore[arg-type]


def test_parse_user_host_port() -> None:
    t = parse_address("root@10.0.0.5:2222", identity_file="/keys/id", home=HOME)
    assert (t.user, t.host, t.port, t.identity_file) == ("root", "10.0.0.5", 2222, Path("/keys/id"))
    assert t.label == "10.0.0.5:2222"
    assert t.known_hosts == Path("/h/known_hosts/10.0.0.5_2222")
    assert t.control_dir == Path("/h/cm")
    assert t.destination == "root@10.0.0.5"
    assert t.known_hosts_name == "[10.0.0.5]:2222"


def test_parse_alias_passes_through() -> None:
    t = parse_address("lab-gpu", home=HOME)
    assert (t.user, t.host, t.port, t.identity_file) == (None, "lab-gpu", None, None)
    assert t.destination == "lab-gpu"
    assert t.known_hosts_name == "lab-gpu"
    argv = ssh_argv(t, "true")
    assert "-p" not in argv and "-i" not in argv
    assert argv[-2:] == ["lab-gpu", "true"]


def test_parse_label_names_known_hosts_file() -> None:
    t = parse_address("ubuntu@host.example.org", label="lab1", home=HOME)
    assert t.known_hosts == Path("/h/known_hosts/lab1")
    assert t.label == "lab1"
    assert t.known_hosts_name == "host.example.org"


def test_parse_ipv6() -> None:
    t = parse_address("root@[::1]:22", home=HOME)
    assert (t.host, t.port) == ("::1", 22)
    assert t.known_hosts_name == "::1"


@pytest.mark.parametrize("bad", ["", "-oProxyCommand=x", "root@host:99999", "root@host:port", "a b", "root@"])
def test_parse_rejects_bad_addresses(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(bad, home=HOME)


def test_base_options_exact() -> None:
    assert ssh_base_options(target()) == [
        "-p", "2222",
        "-i", "/keys/id", "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", "UserKnownHostsFile=/h/known_hosts/lab1",
        "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
        "-o", "ControlMaster=auto",
        "-o", "ControlPath=/h/cm/%C",
        "-o", "ControlPersist=60",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip


def test_host_key_checking_is_never_disabled() -> None:
    joined = " ".join(ssh_base_options(target()))
    assert "StrictHostKeyChecking=no" not in joined
    assert "/dev/null" not in joined


def test_ssh_argv_exact() -> None:
    t = target()
    assert ssh_argv(t, "echo hi") == ["ssh", *ssh_base_options(t), "-T", "root@10.0.0.5", "echo hi"]
    assert ssh_argv(t, "tmux attach", tty=True)[-3] == "-t"
    assert control_argv(t, "exit") == ["ssh", *ssh_base_options(t), "-O", "exit", "root@10.0.0.5"]
    assert control_argv(t, "check")[-2:] == ["check", "root@10.0.0.5"]


def test_remote_command_quotes_each_word() -> None:
    assert remote_command(["echo", "a b", "$HOME", "it's"]) == "echo 'a b' '$HOME' 'it'\"'\"'s'"
    cmd = remote_command(["python3", "train.py"], cwd="/workspace/my proj", env={"A": "1 2", "B": "x"})
    assert cmd == "cd -- '/workspace/my proj' && env -- 'A=1 2' B=x python3 train.py"
    assert shlex.split(cmd.split(" && ", 1)[1]) == ["env", "--", "A=1 2", "B=x", "python3", "train.py"]


def test_remote_command_refuses_bad_env_names() -> None:
    with pytest.raises(ValueError):
        remote_command(["true"], env={"A;rm -rf /": "1"})


def test_control_dir_short_home_and_long_home() -> None:
    assert control_dir(Path("/h")) == Path("/h/cm")
    deep = Path("/tmp/" + "d" * 90)
    short = control_dir(deep, uid=1000)
    assert str(short).startswith("/tmp/tether-1000/")
    assert len(str(short)) + 1 + 40 <= MAX_CONTROL_PATH
    assert control_dir(deep, uid=1000) == short  # stable for the same home
    assert control_dir(Path("/tmp/" + "e" * 90), uid=1000) != short  # distinct homes do not share sockets


def test_put_bytes_argv_never_carries_data() -> None:
    argv = put_bytes_argv("/workspace/p/.env", 0o600)
    assert argv[:2] == ["sh", "-c"]
    assert argv[3:] == ["sh", "/workspace/p/.env", "600"]
    script = argv[2]
    assert 'cat > "$tmp"' in script and script.index("chmod") < script.index("mv -f")


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        ("ssh: connect to host 127.0.0.1 port 1: Connection refused", "unreachable"),
        ("ssh: connect to host 10.1.1.1 port 22: Connection timed out", "unreachable"),
        ("root@127.0.0.1: Permission denied (publickey).", "auth"),
        (
            "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\n"
            "Host key for [127.0.0.1]:2222 has changed and you have requested strict checking.\n"
            "Host key verification failed.",
            "host_key",
        ),
        ("ssh: Could not resolve hostname nope: Name or service not known", "unresolved"),
        ("Connection closed by 127.0.0.1 port 2222", "dropped"),
        ("kex_exchange_identification: read: Connection reset by peer", "dropped"),
        ("Traceback (most recent call last): ValueError", None),
    ],
)
def test_classify_ssh_failure(stderr: str, kind: str | None) -> None:
    assert classify_ssh_failure(stderr) == kind


def test_only_transient_failures_are_retryable() -> None:
    assert is_retryable("unreachable") and is_retryable("dropped")
    assert not any(is_retryable(k) for k in ("auth", "host_key", "unresolved"))


def test_host_key_error_hint_is_the_exact_accept_command() -> None:
    t = target()
    err = ssh_error("host_key", t, "Host key for [10.0.0.5]:2222 has changed and you have requested strict")
    assert "changed" in err.message
    assert err.hint is not None
    command = err.hint.split("with: ", 1)[1]
    assert shlex.split(command) == ["ssh-keygen", "-R", "[10.0.0.5]:2222", "-f", "/h/known_hosts/lab1"]
    assert accept_host_key_argv(t) == shlex.split(command)


def test_error_messages_name_the_failure() -> None:
    t = target()
    assert "refused authentication" in ssh_error("auth", t, "Permission denied").message
    unreachable = ssh_error("unreachable", t, "Connection refused", attempts=3)
    assert "Cannot reach lab1 at 10.0.0.5:2222 after 3 attempts: connection refused" in unreachable.message
