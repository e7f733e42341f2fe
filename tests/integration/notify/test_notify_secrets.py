"""Notification URLs reach a server only through stdin: never in an argv tether starts (so never in a process
list), never in the server's logs or run records; the file they land in is 0600."""

from __future__ import annotations

import json
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.helpers import wait_for, write_project
from tether import config, provision, runs
from tether.context import Ctx
from tether.hosts import Target, remote_server_argv
from tether.state import open_state
from tether.testing.sshd import SshdHost
from tether.testing.webhook import WebhookReceiver
from tether.transport.base import Completed, run_process
from tether.transport.ssh import SSHTransport, parse_address

TOKEN = "argvtok-0f9e8d7c6b5a"


class Recorder:
    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> Completed:
        self.argvs.append(list(argv))
        return run_process(argv, **kwargs)


def test_notify_urls_never_reach_an_argv_or_a_log(tmp_path: Path, sshd_host: SshdHost) -> None:
    with WebhookReceiver() as hook:
        url = f"ntfy://127.0.0.1:{hook.port}/{TOKEN}"
        project_dir = write_project(tmp_path / "proj", items=3, extra=f'[notify]\nurls = ["{url}"]\n')
        project = config.load(project_dir / "tether.toml")
        recorder = Recorder()
        ssh = parse_address(sshd_host.address, identity_file=sshd_host.identity_file, label="lab1")
        root = str(sshd_host.root_dir)
        target = Target(
            name="lab1",
            transport=SSHTransport(ssh, label="lab1", runner=recorder),
            root=root,
            code_dir=f"{root}/proj",
            server_argv=remote_server_argv(root),
        )
        with open_state() as st:
            ctx = Ctx(project, st)
            provision.up(ctx, target)
            started = runs.start(ctx, target, "exp")
            wait_for(lambda: any(r.status == "completed" for r in runs.scan(target).runs), 60, "the run to end")
            scanned = json.dumps(runs.scan(target).to_json())
            target.transport.close()
        got = hook.wait(1)
    assert got[0].path == f"/{TOKEN}" and "completed on lab1" in got[0].text()
    assert len(recorder.argvs) > 5
    for argv in recorder.argvs:
        assert TOKEN not in "\0".join(argv), argv
    assert TOKEN not in scanned
    notify_json = sshd_host.root_dir / ".tether" / "notify.json"
    assert json.loads(notify_json.read_text())["urls"] == [url]
    assert stat.S_IMODE(notify_json.stat().st_mode) == 0o600
    for path in (sshd_host.root_dir / ".tether" / "runs" / started.run.id).iterdir():
        assert TOKEN not in path.read_text(errors="replace"), path
    log = (sshd_host.root_dir / ".tether" / "runs" / started.run.id / "log").read_text()
    assert "announced the run's end to 1 of 1 notification URL(s)" in log
