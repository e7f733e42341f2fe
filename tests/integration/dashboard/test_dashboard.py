"""The dashboard through a real server and a real browser (Debian's headless Chromium driven by Playwright): the
token guards every byte, progress moves while a run computes, a killed run turns dead within one poll, log text is
text, the cost chart has a point per observation; its data endpoint against a real sshd host and an unreachable one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import tether, tether_json, wait_for, wait_status, write_project
from tether import config
from tether.context import Ctx
from tether.dashboard.server import Dashboard
from tether.dashboard.snapshot import build
from tether.paths import local_root
from tether.state import InstanceRecord, open_state
from tether.testing.sshd import SshdHost

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def board(tmp_path: Path) -> Iterator[tuple[Dashboard, Path]]:
    project_dir = write_project(tmp_path / "proj", items=100_000)
    project = config.load(project_dir / "tether.toml")
    dash = Dashboard(project, port=0, poll_s=0.5).start()
    try:
        yield dash, project_dir
    finally:
        dash.stop()


def test_the_token_guards_every_route(board: tuple[Dashboard, Path]) -> None:
    dash, _ = board
    base = f"http://127.0.0.1:{dash.port}"
    for path in ("/", "/api/snapshot", "/api/log?run=x", "/static/app.js", "/nope"):
        for suffix in ("", "?token=wrong", "&token=wrong" if "?" in path else "?token="):
            status, body = get(base + path + suffix)
            assert status == 403 and body == b"", (path, suffix)
    status, body = get(dash.url)
    assert status == 200 and b"tether dashboard" in body
    assert dash.url.startswith("http://127.0.0.1:")


def test_a_port_in_use_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = tether("dashboard", "--port", str(port), cwd=project, timeout=30)
    assert result.returncode == 2
    assert f"Port {port} on 127.0.0.1 is in use already" in result.stderr and "Traceback" not in result.stderr


def _png_colours(path: Path) -> int:
    """How many distinct byte values the screenshot's pixels hold (a blank page has one or two)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat)))


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_page_lives_in_a_real_browser(board: tuple[Dashboard, Path], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    dash, project = board
    (project / "exp.py").write_text(
        (project / "exp.py")
        .read_text()
        .replace(
            "a = p.parse_args()", 'a = p.parse_args()\nprint("<script>window.pwned=1</script> [/bold]", flush=True)'
        )
    )
    run_id = tether_json("run", "exp", "--local", "--", "--delay", "0.01", cwd=project)["run_id"]
    wait_status(project, run_id, {"running"})
    # Three observations of a rented server in the ledger: three points on the chart (plus now).
    with open_state() as st:
        for n, (state, ts) in enumerate(
            [("running", time.time() - 7200), ("running", time.time() - 3600), ("stopped", time.time() - 600)]
        ):
            st.upsert_instance(
                InstanceRecord("box", "vast", "7", None, "/workspace", state, 0.5, 0.02, ts - n, ts, {}), source="test"
            )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            refused = page.request.get(f"http://127.0.0.1:{dash.port}/")
            assert refused.status == 403 and refused.body() == b""
            page.goto(dash.url)
            row = f'tr[data-run="{run_id}"]'
            page.wait_for_selector(row, timeout=20_000)

            def progress() -> float:
                return float(page.get_attribute(f"{row} [role=progressbar]", "aria-valuenow") or 0)

            first = progress()
            wait_for(lambda: progress() > first, 30, "the progress bar to advance")
            page.click(f"{row} a.log")
            page.locator("#log", has_text="<script>").wait_for(timeout=60_000)
            assert page.evaluate("window.pwned") is None
            assert "[/bold]" in (page.text_content("#log") or "")
            points = page.locator("#chart circle.point").count()
            with open_state() as st:
                observations = len({e.ts for e in st.events()})
            assert points == observations + 1  # one per observation, and now
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert _png_colours(shot) > 20

            record = json.loads((local_root() / ".tether" / "runs" / run_id / "run.json").read_text())
            for pid in (record["child_pid"], record["pid"]):
                os.kill(int(pid), signal.SIGKILL)
            page.wait_for_selector(f'{row} [data-state="dead"]', timeout=60_000)

            # A managed run is one row that opens into its shards.
            _record_managed_run()
            summary = page.locator('summary[data-managed="exp-m1"]')
            summary.wait_for(timeout=60_000)
            text = summary.text_content() or ""
            assert "exp-m1" in text and "running" in text and "150/300" in text and "2 shards" in text
            assert "1 recoveries" in text
            shard_row = page.locator('details.managed tr[data-shard="1"]')
            assert not shard_row.is_visible()
            summary.click()
            assert shard_row.is_visible()
            assert "restarting" in (shard_row.text_content() or "") and "server was preempted" in (
                shard_row.text_content() or ""
            )
        finally:
            browser.close()


def _record_managed_run() -> None:
    """A managed run of two shards as its controller records it: one running, one restarting after a preemption."""
    from tether.state import ManagedRunRecord, ManagedShardRecord

    now = time.time()
    run = ManagedRunRecord(
        "exp-m1",
        "exp",
        2,
        [],
        "api",
        [],
        None,
        120.0,
        "journal",
        "running",
        None,
        now - 600,
        None,
        None,
        None,
        None,
        False,
        now,
    )
    shards = [
        ManagedShardRecord(
            "exp-m1",
            0,
            "running",
            "exp-m1-s0-1",
            False,
            "r0",
            1,
            0,
            0,
            100,
            150,
            90,
            now,
            now,
            None,
            0,
            None,
            None,
            now,
        ),
        ManagedShardRecord(
            "exp-m1",
            1,
            "restarting",
            "exp-m1-s1-1",
            False,
            "r1",
            1,
            1,
            1,
            50,
            150,
            50,
            now,
            now,
            "preempted",
            0,
            "server was preempted",
            None,
            now,
        ),
    ]
    with open_state() as st:
        st.add_managed_run(run, shards)


def test_the_data_endpoint_reads_real_hosts_and_survives_an_unreachable_one(
    tmp_path: Path, sshd_host: SshdHost
) -> None:
    project_dir = write_project(
        tmp_path / "proj",
        items=3,
        extra=f"""
[hosts.lab1]
address = "{sshd_host.address}"
identity_file = "{sshd_host.identity_file}"
remote_root = "{sshd_host.root_dir}"

[hosts.gone]
address = "root@127.0.0.1:1"
remote_root = "/workspace"
""",
    )
    assert tether("up", "lab1", cwd=project_dir).returncode == 0
    remote = tether_json("run", "exp", "--on", "lab1", cwd=project_dir)["run_id"]
    wait_status(project_dir, remote, {"completed"}, host="lab1")
    local = tether_json("run", "exp", "--local", cwd=project_dir)["run_id"]
    wait_status(project_dir, local, {"completed"})
    with open_state() as st:  # a run recorded on a host that cannot be reached
        st.db.execute(
            "INSERT INTO runs(id, experiment, host, argv, cwd, results_dir, log_path, session, started, status)"
            " VALUES ('exp-old', 'exp', 'gone', '[]', '/w', '/w/results', '/w/log', 's', 1, 'running')"
        )
        doc: dict[str, Any] = build(Ctx(config.load(project_dir / "tether.toml"), st))
    runs = {r["id"]: r for group in doc["runs"] for r in group["runs"]}
    assert runs[remote]["host"] == "lab1" and runs[remote]["status"] == "completed" and runs[remote]["completed"] == 3
    assert runs[local]["host"] == "local" and runs[local]["status"] == "completed"
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert hosts["gone"]["error"] and hosts["lab1"]["error"] is None
    assert doc["money"]["total_usd"] == 0 and doc["managed"] == []
    json.dumps(doc)  # one JSON document


def test_a_page_left_open_for_hours_keeps_the_server_bounded(tmp_path: Path) -> None:
    """Hours of polling compressed into hundreds of polls, with pages that come and go: the server's memory and
    thread count stop growing (each stream ends when its page goes; the poller keeps one snapshot, not a history)."""
    import threading
    import tracemalloc

    project_dir = write_project(tmp_path / "proj", items=3)
    project = config.load(project_dir / "tether.toml")
    baseline = threading.active_count()
    dash = Dashboard(project, port=0, poll_s=0.01).start()
    events = dash.url.replace("/?token=", "/api/events?token=")
    try:
        streams = [urllib.request.urlopen(events, timeout=10) for _ in range(20)]
        for s in streams:
            assert s.readline().startswith(b"event: snapshot")
        for s in streams:
            s.close()
        wait_for(lambda: threading.active_count() <= baseline + 3 or None, timeout=30)  # server, poller, one in flight
        tracemalloc.start()
        start = dash.poller.version
        wait_for(lambda: dash.poller.version >= start + 50 or None, timeout=120)
        early = tracemalloc.take_snapshot()
        wait_for(lambda: dash.poller.version >= start + 400 or None, timeout=600)
        late = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in late.compare_to(early, "filename"))
        assert grown < 512 * 1024, f"{grown} bytes more after 350 more polls"
        with urllib.request.urlopen(events, timeout=10) as s:  # and a page opened now still gets the latest
            assert s.readline().startswith(b"event: snapshot")
    finally:
        dash.stop()
