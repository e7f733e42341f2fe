"""The .env's values never appear in any argv tether starts while setting a server up, pushing, running and pulling,
nor in the server's SETUP_LOG.txt or the run's records."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.helpers import wait_for, write_project
from tether import config, provision, pull, runs
from tether.context import Ctx
from tether.hosts import Target, remote_server_argv
from tether.state import open_state
from tether.testing.sshd import SshdHost
from tether.transport.base import Completed, run_process
from tether.transport.ssh import SSHTransport, parse_address

SECRET = "sk-live-9f8e7d6c5b4a-never-in-argv"


class Recorder:
    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> Completed:
        self.argvs.append(list(argv))
        return run_process(argv, **kwargs)


def test_env_values_never_reach_an_argv(tmp_path: Path, sshd_host: SshdHost) -> None:
    project_dir = write_project(tmp_path / "proj", items=5)
    (project_dir / ".env").write_text(f"OPENAI_API_KEY={SECRET}\nOTHER='quoted {SECRET[:8]}'\n")
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
        summary = provision.up(ctx, target)
        assert summary["env"].startswith("uploaded")
        started = runs.start(ctx, target, "exp")
        wait_for(lambda: any(r.status == "completed" for r in runs.scan(target).runs), 60, "the run to complete")
        assert pull.pull(ctx, target).verified
        target.transport.close()
    assert len(recorder.argvs) > 5
    for argv in recorder.argvs:
        joined = "\0".join(argv)
        assert SECRET not in joined and SECRET[:8] not in joined, argv
    assert SECRET not in (sshd_host.root_dir / "SETUP_LOG.txt").read_text()
    run_dir = sshd_host.root_dir / ".tether" / "runs" / started.run.id
    for path in run_dir.iterdir():
        assert SECRET not in path.read_text(errors="replace"), path
    assert (sshd_host.root_dir / "proj" / ".env").read_text().startswith(f"OPENAI_API_KEY={SECRET}")
