"""Remote runs over real SSH: `tether up/push/run --on/progress/pull/sync` against real sshd, rsync and tmux."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

from tests.helpers import run_status, tether, tether_json, wait_status, write_project
from tether.testing.sshd import SshdHost

SECRET = "sk-test-DO-NOT-LEAK-4242"


def host_block(name: str, host: SshdHost, **extra: str) -> str:
    lines = [
        f"[hosts.{name}]",
        f'address = "{host.address}"',
        f'identity_file = "{host.identity_file}"',
        f'remote_root = "{host.root_dir}"',
    ]
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def make_project(tmp_path: Path, *hosts: tuple[str, SshdHost], items: int = 20, extra: str = "") -> Path:
    blocks = "".join(host_block(n, h) for n, h in hosts)
    project = write_project(tmp_path / "proj", items=items, extra=blocks + extra)
    (project / ".env").write_text(f"OPENAI_API_KEY={SECRET}\n")
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "results").mkdir()
    (project / "results" / "old.json").write_text("{}")
    (project / "notes.tmp").write_text("scratch")
    (project / ".tetherignore").write_text("# local scratch\n*.tmp\n")
    return project


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_up_sets_up_once_and_never_leaks_the_env(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = make_project(tmp_path, ("lab1", sshd_host))
    first = tether_json("up", "lab1", cwd=project)
    assert first["setup"] == "ran" and first["env"].startswith("uploaded")
    root = sshd_host.root_dir
    code = root / "proj"
    env_file = code / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text() == f"OPENAI_API_KEY={SECRET}\n"
    log = (root / "SETUP_LOG.txt").read_text()
    assert log.startswith("Setup completed:") and ("No GPU" in log or "NVIDIA" in log)
    assert SECRET not in log
    assert (code / "exp.py").is_file() and (code / "tether.toml").is_file()
    # never pushed: .git, results folders, .tetherignore patterns
    assert not (code / ".git").exists() and not (code / "results").exists() and not (code / "notes.tmp").exists()
    assert (root / ".tether" / "lib" / "tether" / "server" / "wrapper.py").is_file()
    second = tether_json("up", "lab1", cwd=project)
    assert second["setup"] == "already done"
    assert second["push"]["files"] == 0
    # A server you own gets the rental's preflight too: figures, and warnings only (never a destroy).
    assert second["preflight"]["disk_free_gb"] > 0 and "gpus" in second["preflight"]
    assert second["watchdog"]["idle_stop_s"] == 30 * 60 and "never stopped" in second["watchdog"]["does"]
    # the secret is in no file tether keeps on this machine either
    home = Path(os.environ["TETHER_HOME"])
    for path in home.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert SECRET.encode() not in path.read_bytes(), path


def test_run_progress_pull_roundtrip(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = make_project(tmp_path, ("lab1", sshd_host), items=40)
    assert tether("up", "lab1", cwd=project).returncode == 0
    run_id = tether_json("run", "exp", "--on", "lab1", "--", "--items", "40", cwd=project)["run_id"]
    run = wait_status(project, run_id, {"completed"}, host="lab1")
    assert run["completed"] == 40 and run["exit_code"] == 0
    remote_results = sshd_host.root_dir / "proj" / "results" / "results.json"
    assert remote_results.is_file()
    pulled = tether_json("pull", "lab1", cwd=project)["pulls"][0]
    assert pulled["verified"] is True and "results/results.json" in pulled["changed"]
    local = project / "results" / "results.json"
    assert sha(local) == sha(remote_results)
    assert (project / "results" / "old.json").read_text() == "{}"  # local-only files are kept
    again = tether_json("pull", "lab1", cwd=project)["pulls"][0]
    assert again["verified"] is True and again["changed"] == [] and again["files"] == 0
    logs = tether("logs", run_id, cwd=project)
    assert logs.returncode == 0 and "summary 40 0" in logs.stdout
    assert SECRET not in logs.stdout


def test_the_wrapper_gives_the_experiment_its_env_without_argv(tmp_path: Path, sshd_host: SshdHost) -> None:
    extra = '[experiments.envcheck]\ncommand = "python3 envcheck.py"\nresults = "r_env"\n'
    project = make_project(tmp_path, ("lab1", sshd_host), extra=extra)
    (project / "envcheck.py").write_text(
        "import os, hashlib\nprint('key-sha', hashlib.sha256(os.environ['OPENAI_API_KEY'].encode()).hexdigest())\n"
        "print('argv', open('/proc/self/cmdline','rb').read())\n"
    )
    assert tether("up", "lab1", cwd=project).returncode == 0
    run_id = tether_json("run", "envcheck", "--on", "lab1", cwd=project)["run_id"]
    wait_status(project, run_id, {"completed"}, host="lab1")
    out = tether("logs", run_id, cwd=project).stdout
    assert hashlib.sha256(SECRET.encode()).hexdigest() in out
    assert SECRET not in out
    record = json.loads((sshd_host.root_dir / ".tether" / "runs" / run_id / "run.json").read_text())
    assert SECRET not in json.dumps(record)


def test_progress_reads_runbook_partial_files_and_two_hosts_side_by_side(
    tmp_path: Path, sshd_hosts: tuple[SshdHost, SshdHost]
) -> None:
    a, b = sshd_hosts
    extra = '[experiments.legacy]\ncommand = "python3 legacy.py"\nresults = "legacy"\n'
    project = make_project(tmp_path, ("a", a), ("b", b), extra=extra)
    (project / "legacy.py").write_text(
        "import json, os, time\nos.makedirs('legacy', exist_ok=True)\n"
        "json.dump({'completed': 25, 'total': 100, 'results': [{}]*25}, open('legacy/results_partial.json','w'))\n"
        "time.sleep(60)\n"
    )
    for name in ("a", "b"):
        assert tether("up", name, cwd=project).returncode == 0, name
    legacy = tether_json("run", "legacy", "--on", "a", cwd=project)["run_id"]
    other = tether_json("run", "exp", "--on", "b", cwd=project)["run_id"]

    def legacy_progress() -> dict[str, object] | None:
        run = run_status(project, legacy, "a")
        return run if run and run["completed"] == 25 else None

    from tests.helpers import wait_for

    run = wait_for(legacy_progress, 30, "the runbook partial file to show")
    assert run["total"] == 100 and run["status"] == "running"
    assert run["checkpoints"][0]["source"] == "runbook_partial"
    wait_status(project, other, {"completed"}, host="b")
    every = tether_json("progress", cwd=project)
    hosts = {h["host"]: [r["id"] for r in h["runs"]] for h in every["hosts"]}
    assert hosts == {"a": [legacy], "b": [other]}
    assert tether_json("cancel", legacy, cwd=project)["status"] == "cancelled"


def test_a_command_missing_on_the_server_is_reported_failed_with_its_log(tmp_path: Path, sshd_host: SshdHost) -> None:
    extra = '[experiments.ghost]\ncommand = "no-such-binary-on-server"\nresults = "r_ghost"\n'
    project = make_project(tmp_path, ("lab1", sshd_host), extra=extra)
    assert tether("up", "lab1", cwd=project).returncode == 0
    result = tether("run", "ghost", "--on", "lab1", cwd=project)
    assert result.returncode == 1
    assert "failed at once" in result.stderr and "command not found: no-such-binary-on-server" in result.stderr
    runs = tether_json("progress", "lab1", cwd=project)["hosts"][0]["runs"]
    assert [r["status"] for r in runs] == ["failed"] and "no-such-binary-on-server" in runs[0]["log_tail"]


def test_unknown_host_is_refused_with_the_known_ones(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = make_project(tmp_path, ("lab1", sshd_host))
    result = tether("push", "lab9", cwd=project)
    assert result.returncode == 2
    assert "Unknown host 'lab9'" in result.stderr and "lab1" in result.stderr


def test_run_before_up_says_to_set_up_first(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = make_project(tmp_path, ("lab1", sshd_host))
    result = tether("run", "exp", "--on", "lab1", cwd=project)
    assert result.returncode == 2 and "tether up lab1" in result.stderr
    assert not (sshd_host.root_dir / ".tether" / "runs").exists()


def test_missing_env_file_is_refused_before_anything_changes(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = make_project(tmp_path, ("lab1", sshd_host))
    text = (
        (project / "tether.toml")
        .read_text()
        .replace("setup_packages = []", 'setup_packages = []\nenv_file = "keys.env"')
    )
    (project / "tether.toml").write_text(text)
    result = tether("up", "lab1", cwd=project)
    assert result.returncode == 2 and "keys.env" in result.stderr and "does not exist" in result.stderr
    assert list(sshd_host.root_dir.iterdir()) == []


def test_python_missing_on_the_server_is_named(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = write_project(tmp_path / "proj", extra=host_block("lab1", sshd_host, python="python3-not-here"))
    result = tether("up", "lab1", cwd=project)
    assert result.returncode == 1
    assert "python3-not-here is not installed on lab1" in result.stderr


def test_unreachable_host_fails_fast_with_a_clear_message(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = make_project(tmp_path, ("lab1", sshd_host))
    sshd_host.stop()
    started = time.monotonic()
    result = tether("up", "lab1", cwd=project)
    assert result.returncode == 1
    assert "lab1" in result.stderr and ("refused" in result.stderr or "unreachable" in result.stderr.lower())
    assert time.monotonic() - started < 60


def test_sync_once_pulls_and_reports_changes(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = make_project(tmp_path, ("lab1", sshd_host), items=5)
    assert tether("up", "lab1", cwd=project).returncode == 0
    run_id = tether_json("run", "exp", "--on", "lab1", cwd=project)["run_id"]
    wait_status(project, run_id, {"completed"}, host="lab1")
    result = tether("sync", "lab1", "--once", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "lab1: 1 changed results/results.json" in result.stderr
    assert (project / "results" / "results.json").is_file()
    bad = tether("sync", "lab1", "--every", "soon", cwd=project)
    assert bad.returncode == 2 and "not a duration" in bad.stderr
