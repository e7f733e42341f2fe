"""`tether up` spends as few SSH round trips as it can: setup.sh is stored and run in one (set-up time on a fresh
rental is mostly round trips)."""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.helpers import write_project
from tether import config, provision, vocab
from tether.context import Ctx
from tether.hosts import Target, remote_server_argv
from tether.state import open_state
from tether.testing.sshd import SshdHost
from tether.transport.base import Completed, run_process
from tether.transport.ssh import SSHTransport, parse_address


class Recorder:
    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> Completed:
        self.argvs.append(list(argv))
        return run_process(argv, **kwargs)


def test_setup_is_stored_and_run_in_one_round_trip(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = config.load(write_project(tmp_path / "proj", items=5) / "tether.toml")
    recorder = Recorder()
    root = str(sshd_host.root_dir)
    ssh = parse_address(sshd_host.address, identity_file=sshd_host.identity_file, label="lab1")
    target = Target(
        name="lab1",
        transport=SSHTransport(ssh, label="lab1", runner=recorder),
        root=root,
        code_dir=f"{root}/proj",
        server_argv=remote_server_argv(root),
    )
    try:
        with open_state() as st:
            assert provision.up(Ctx(project, st), target)["setup"] == "ran"
            setup_calls = [a for a in recorder.argvs if any(vocab.SETUP_SCRIPT in part for part in a)]
            assert len(setup_calls) == 1, setup_calls
            script = sshd_host.root_dir / vocab.SETUP_SCRIPT
            assert stat.S_IMODE(script.stat().st_mode) == 0o700
            assert (sshd_host.root_dir / "SETUP_LOG.txt").read_text().startswith("Setup completed:")
            assert provision.up(Ctx(project, st), target)["setup"] == "already done"
    finally:
        target.transport.close()
