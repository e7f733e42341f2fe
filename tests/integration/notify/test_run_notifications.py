"""Who announces a run's end, once: the server's wrapper (no tether process running here), or this machine when
the server could not (a run that died, a local run). Real sshd, tmux, rsync and a loopback webhook receiver."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

from tests.helpers import tether, tether_json, wait_status, write_project
from tether import schemas
from tether.testing.sshd import SshdHost
from tether.testing.webhook import Received, WebhookReceiver

TOKEN = "hooktok-8d1f2e3a4b5c"


def project_on(tmp_path: Path, host: SshdHost, hook: WebhookReceiver, items: int = 5) -> Path:
    bad = (
        '[experiments.bad]\ncommand = ["python3", "-c", "import sys, time; time.sleep(4); sys.exit(3)"]\n'
        'results = "bad_results"\n\n'
    )
    block = bad + (
        f'[hosts.lab1]\naddress = "{host.address}"\nidentity_file = "{host.identity_file}"\n'
        f'remote_root = "{host.root_dir}"\n\n[notify]\nurls = ["json://127.0.0.1:{hook.port}/hook/{TOKEN}"]\n'
    )
    return write_project(tmp_path / "proj", items=items, extra=block)


def messages(got: list[Received]) -> list[str]:
    return [str(r.json()["message"]) for r in got]


def test_the_server_announces_each_end_once_with_no_tether_process_running(tmp_path: Path, sshd_host: SshdHost) -> None:
    with WebhookReceiver() as hook:
        project = project_on(tmp_path, sshd_host, hook)
        outputs = [tether("up", "lab1", "--json", cwd=project)]
        assert outputs[0].returncode == 0, outputs[0].stderr
        notify_json = sshd_host.root_dir / ".tether" / "notify.json"
        assert stat.S_IMODE(notify_json.stat().st_mode) == 0o600
        assert json.loads(notify_json.read_text())["host"] == "lab1"

        started = tether("run", "exp", "--on", "lab1", "--json", "--", "--items", "5", cwd=project)
        outputs.append(started)
        run_id = json.loads(started.stdout)["run_id"]
        # `tether run` has exited: nothing of tether runs on this machine but the run on the server
        got = hook.wait(1, timeout=60)
        assert messages(got) == [f"proj exp: run {run_id} completed on lab1 (5/5 items); `tether pull lab1`"]
        assert got[0].json()["type"] == "success" and got[0].path == f"/hook/{TOKEN}"

        failing = tether("run", "bad", "--on", "lab1", "--json", cwd=project)
        outputs.append(failing)
        failed_id = json.loads(failing.stdout)["run_id"]
        got = hook.wait(2, timeout=60)
        assert got[1].json()["title"] == "tether proj: run failed" and got[1].json()["type"] == "failure"
        assert messages(got)[1] == f"proj bad: run {failed_id} failed on lab1 (exit code 3); `tether logs {failed_id}`"

        # the controller sees both ends and announces neither again (the server did: `announced_by`)
        progress = tether("progress", "lab1", "--json", cwd=project)
        outputs.append(progress)
        schemas.validate("progress", json.loads(progress.stdout))
        runs = {r["id"]: r for r in json.loads(progress.stdout)["hosts"][0]["runs"]}
        assert runs[run_id]["status"] == "completed" and runs[failed_id]["status"] == "failed"
        assert runs[run_id]["announced_by"] == "server"
        outputs.append(tether("status", "--json", cwd=project))
        schemas.validate("status", json.loads(outputs[-1].stdout))
        assert len(hook.requests) == 2

    for out in outputs:
        assert TOKEN not in out.stdout and TOKEN not in out.stderr
    for path in (sshd_host.root_dir / ".tether" / "runs").rglob("*"):
        if path.is_file():
            assert TOKEN not in path.read_text(errors="replace"), path
    assert TOKEN not in (sshd_host.root_dir / "SETUP_LOG.txt").read_text()
    home = Path(os.environ["TETHER_HOME"])
    for path in home.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_a_run_that_died_is_announced_once_by_this_machine(tmp_path: Path, sshd_host: SshdHost) -> None:
    with WebhookReceiver() as hook:
        project = project_on(tmp_path, sshd_host, hook, items=10_000)
        assert tether("up", "lab1", cwd=project).returncode == 0
        run_id = tether_json("run", "exp", "--on", "lab1", "--", "--delay", "0.05", cwd=project)["run_id"]
        wait_status(project, run_id, {"running"}, host="lab1")
        record = json.loads((sshd_host.root_dir / ".tether" / "runs" / run_id / "run.json").read_text())
        os.kill(record["child_pid"], signal.SIGKILL)  # the test's own run, on this loopback host
        os.kill(record["pid"], signal.SIGKILL)
        wait_status(project, run_id, {"dead"}, host="lab1")
        got = hook.wait(1)
        assert messages(got)[0].startswith(f"proj exp: run {run_id} died on lab1")
        assert "`tether run exp` resumes it" in messages(got)[0]
        assert got[0].json()["type"] == "failure"
        # later observations, by any command, say nothing again
        assert tether("progress", "--json", cwd=project).returncode == 0
        assert tether("status", "--json", cwd=project).returncode == 0
        assert len(hook.requests) == 1


def test_a_local_run_is_announced_by_this_machine_once(tmp_path: Path) -> None:
    with WebhookReceiver() as hook:
        project = write_project(tmp_path / "proj", items=3)
        env = {"TETHER_NOTIFY_URLS": f"ntfy://127.0.0.1:{hook.port}/{TOKEN}"}
        result = tether("run", "exp", "--local", "--follow", "--json", cwd=project, env=env)
        assert result.returncode == 0, result.stderr
        run_id = json.loads(result.stdout)["run_id"]
        got = hook.wait(1)
        assert tether("progress", "--local", "--json", cwd=project, env=env).returncode == 0
        assert len(hook.requests) == 1  # progress saw the end again and said nothing
    body = got[0].json()
    assert body["topic"] == TOKEN
    assert body["message"] == f"proj exp: run {run_id} completed on local (3/3 items); results are in place"
    assert TOKEN not in result.stdout + result.stderr
