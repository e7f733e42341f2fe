"""Failures are useful: `tether progress` says why items failed ("5 (3 x 429, 2 x 400)"), from the journal's lines."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import tether, tether_json, wait_status, write_project

EXPERIMENT = '''\
from tether.checkpoint import run_batch


class APIStatusError(Exception):
    """The shape of an SDK's HTTP error: a status code and a request id."""

    def __init__(self, status):
        super().__init__(f"Error code: {status}")
        self.status_code = status
        self.request_id = f"req_{status}"


def work(item):
    if item < 3:
        raise APIStatusError(429)
    if item < 5:
        raise APIStatusError(400)
    return item


run_batch(work, list(range(8)), retries=0, progress=False)
'''


def test_progress_counts_failed_items_by_status(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj", items=8)
    (project / "exp.py").write_text(EXPERIMENT)
    run_id = tether_json("run", "exp", "--local", cwd=project)["run_id"]
    run = wait_status(project, run_id, {"completed", "failed"})
    assert run["completed"] == 3 and run["failed"] == 5
    assert run["failed_by"] == {"429": 3, "400": 2}
    table = tether("progress", "--local", cwd=project)
    assert table.returncode == 0 and "5 (3 x 429, 2 x 400)" in table.stdout
