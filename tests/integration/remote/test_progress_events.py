"""What `up` and `pull` report to a live display while they work (tether.progress events on ctx.report), against a
real sshd host: each step in order, the files and bytes a pull moved, and every row finished at the end."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import write_project
from tether import config, provision, pull
from tether.context import Ctx
from tether.hosts import Target, remote_server_argv
from tether.progress import Count, End, Event, Step
from tether.state import open_state
from tether.testing.sshd import SshdHost
from tether.transport.ssh import SSHTransport, parse_address


def steps(events: list[Event], row: str) -> list[str]:
    return [e.text for e in events if isinstance(e, Step) and e.row == row]


def test_up_and_pull_report_their_steps_counts_and_end(tmp_path: Path, sshd_host: SshdHost) -> None:
    project = config.load(write_project(tmp_path / "proj", items=5) / "tether.toml")
    root = str(sshd_host.root_dir)
    ssh = parse_address(sshd_host.address, identity_file=sshd_host.identity_file, label="lab1")
    target = Target(
        name="lab1",
        transport=SSHTransport(ssh, label="lab1"),
        root=root,
        code_dir=f"{root}/proj",
        server_argv=remote_server_argv(root),
    )
    events: list[Event] = []
    try:
        with open_state() as st:
            ctx = Ctx(project, st, report=events.append)
            provision.up(ctx, target)
            said = steps(events, "lab1")
            assert said[0].startswith("checking ") and said[1].startswith("setup.sh")
            assert any("pushing the code" in s for s in said)
            assert events[-1] == End("lab1")

            results = sshd_host.root_dir / "proj" / "results"
            results.mkdir(parents=True)
            for n in range(3):
                (results / f"part{n}.json").write_text("x" * 1000)
            events.clear()
            report = pull.pull(ctx, target)
            assert report.verified and report.files == 3
            said = steps(events, "lab1")
            assert said[0].startswith("reading the server's manifest")
            assert "copying results (3 files, 3 kB on the server)" in said
            assert said[-1] == "verifying 3 files against the server's sha256"
            counts = [e for e in events if isinstance(e, Count)]
            assert counts and counts[-1].done == 3 and counts[-1].unit == "files moved"
            assert counts[-1].nbytes is not None and counts[-1].nbytes >= 3000
            assert events[-1] == End("lab1")
    finally:
        target.transport.close()
