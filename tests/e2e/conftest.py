"""End-to-end helpers: a project configured to use the Vast emulator of the ``cloud`` / ``make_cloud`` fixtures
(``tether.testing.pytest_plugin``: real sshd hosts with the vendor's auto-tmux login, the user's key on the
emulated account)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import write_project
from tether.testing.cloud import Cloud
from tether.testing.pytest_plugin import MakeCloud

__all__ = ["Cloud", "MakeCloud", "vast_project"]


def vast_project(
    tmp_path: Path,
    cloud: Cloud,
    *,
    items: int = 30,
    policy: str = "",
    profiles: str = "",
    wait_minutes: float = 1,
    ssh_wait_seconds: float = 30,
) -> Path:
    extra = f"""
[vast]
identity_file = "{cloud.key}"
remote_root = "{cloud.base}/instance-{{instance_id}}/root"
wait_minutes = {wait_minutes}
ssh_wait_seconds = {ssh_wait_seconds}
poll_seconds = 0.2
retries = 2
backoff_seconds = 0.2

[policy]
allow_spending = true
{policy}
{profiles}
"""
    return write_project(tmp_path / "proj", items=items, extra=extra)
