"""The page reads at a glance, in a real browser (Debian's headless Chromium driven by Playwright): a long reason
wraps instead of widening the page, the cost chart has a time axis and one distinct, labelled colour per series, the
log opens under the row clicked, empty tables say "none", every column has a header, no terminal option is offered,
the autopilot's next step is a sentence, a finished managed run's shards are synced as far as they are done, and a
change reaches the page through its own updates (pushed at once for local state, every 5 s at most for hosts)."""

from __future__ import annotations

import inspect
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import tether, tether_json, wait_for, wait_status, write_project
from tether import config
from tether.dashboard.server import Dashboard
from tether.state import InstanceRecord, ManagedRunRecord, ManagedShardRecord, open_state

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
WIDTH = 1400
LONG_REASON = "shard 0: the experiment failed the same way 3 times: " + "Traceback line x" * 125  # 2000+ chars


def record_finished_project(now: float) -> None:
    """What a project's state holds after a day of work: nine servers observed over hours (a chart of many series),
    and a managed run that failed with a long reason, whose first shard finished: its final pull brought all 60
    items home (its last journal sync had counted 49; the pull counts them all as synced)."""
    with open_state() as st:
        for n in range(9):
            for k, state in enumerate(("running", "running", "stopped")):
                ts = now - 6 * 3600 + n * 600 + k * 3600
                st.upsert_instance(
                    InstanceRecord(
                        f"box-{n}", "vast", str(n), None, "/workspace", state, 0.3 + n / 10, 0.01, ts, ts, {}
                    ),
                    source="test",
                )
        run = ManagedRunRecord(
            "exp-m9", "exp", 2, [], "api", [], None, 120.0, "journal", "failed", LONG_REASON, now - 3600, now - 60,
            None, None, None, False, now,
        )  # fmt: skip
        shards = [
            ManagedShardRecord(
                "exp-m9", 0, "completed", "exp-m9-s0-1", False, "r0", 1, 0, 0, 60, 60, 60, now, now, None, 0,
                None, None, now,
            ),
            ManagedShardRecord(
                "exp-m9", 1, "failed", "exp-m9-s1-1", False, "r1", 3, 0, 0, 10, 60, 10, now, now, "exit 1", 3,
                LONG_REASON, None, now,
            ),
        ]  # fmt: skip
        st.add_managed_run(run, shards)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    return write_project(tmp_path / "proj", items=3)


def open_page(browser: Any, dash: Dashboard) -> Any:
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    page.goto(dash.url)
    page.wait_for_selector("body[data-version]", timeout=60_000)
    return page


def test_a_finished_project_reads_at_a_glance(browser: Any, project_dir: Path) -> None:
    record_finished_project(time.time())
    dash = Dashboard(config.load(project_dir / "tether.toml"), port=0).start()
    try:
        page = open_page(browser, dash)
        page.locator('summary[data-managed="exp-m9"]').wait_for(timeout=60_000)
        page.click('summary[data-managed="exp-m9"]')

        # A 2000-character reason wraps: the page is no wider than the window.
        assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
        assert LONG_REASON in (page.text_content('summary[data-managed="exp-m9"]') or "")

        # The finished shard: synced as far as done.
        shard = page.locator('details.managed tr[data-shard="0"]')
        assert shard.locator("td.done").text_content() == "60/60"
        assert shard.locator("td.synced").text_content() == "60/60"

        # The chart: labelled ticks on a time axis (hours of history: round local times) and on the money axis.
        x_ticks = page.locator("#chart text.x-tick").all_text_contents()
        assert len(x_ticks) >= 3 and all(":" in t for t in x_ticks), x_ticks
        assert len(page.locator("#chart text.y-tick").all_text_contents()) >= 2
        # one distinct colour per series, each with a legend entry on one line
        strokes = page.eval_on_selector_all(
            "#chart polyline", "ls => ls.reverse().map(l => [l.dataset.series, getComputedStyle(l).stroke])"
        )
        names = [name for name, _ in strokes]
        assert len(strokes) >= 10 and len({c for _, c in strokes}) == len(strokes), strokes  # total + 9 servers
        # read in one step: the page rebuilds the legend at each update, so reads one by one can straddle one
        entries = page.eval_on_selector_all(
            "#legend .legend-entry",
            """es => es.map(e => ({series: e.dataset.series, text: e.textContent,
                height: e.getBoundingClientRect().height,
                line: parseFloat(getComputedStyle(e).lineHeight) || 20,
                swatch: getComputedStyle(e.querySelector('.swatch')).backgroundColor}))""",
        )
        assert [e["series"] for e in entries][: len(names)] == names
        for entry in entries:
            assert entry["height"] <= entry["line"] * 1.5, entry  # not wrapped
            if entry["series"] != "max_total_usd":
                assert entry["swatch"] not in ("", "rgba(0, 0, 0, 0)"), entry

        # Every column has a header; the servers' results column says where results are.
        headers = page.locator("#servers thead th").all_text_contents()
        assert all(h.strip() for h in headers) and "results" in headers
        # The runs table is empty: it says so.
        assert page.locator("#runs tr.none").text_content() == "none"
        # The autopilot's next step is a sentence.
        said = page.evaluate("nextText({action: 'none', in_s: 1560, reason: ''})")
        assert said == "stops in 26m if still idle"
        assert page.evaluate("nextText({action: 'none', in_s: null, reason: ''})") == "nothing planned"
        assert "none in" not in (page.text_content("#servers") or "")
        assert "--debug" not in (page.text_content("body") or "")
    finally:
        dash.stop()


def test_empty_tables_say_none(browser: Any, project_dir: Path) -> None:
    dash = Dashboard(config.load(project_dir / "tether.toml"), port=0).start()
    try:
        page = open_page(browser, dash)
        assert page.locator("#runs tr.none").text_content() == "none"
        assert page.locator("#servers tbody tr.none").text_content() == "none"
        assert page.locator("#gpus .none").text_content() == "none"
        assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    finally:
        dash.stop()


def test_the_log_opens_under_the_row_clicked_and_stays_there(browser: Any, project_dir: Path) -> None:
    ids = [tether_json("run", "exp", "--local", cwd=project_dir)["run_id"] for _ in range(3)]
    for run_id in ids:
        wait_status(project_dir, run_id, {"completed"})
    dash = Dashboard(config.load(project_dir / "tether.toml"), port=0, poll_s=1).start()
    try:
        page = open_page(browser, dash)
        middle = f'tr[data-run="{ids[1]}"]'
        page.wait_for_selector(middle, timeout=60_000)
        page.click(f"{middle} a.log")
        log = page.locator("#log-row")
        log.wait_for(timeout=60_000)
        assert page.eval_on_selector(middle, "r => r.nextElementSibling.id") == "log-row"
        assert log.get_attribute("data-log") == ids[1]
        # measured in one step: the page rebuilds its tables at each update, so two separate reads can straddle one
        gap = page.eval_on_selector(
            middle, "r => r.nextElementSibling.getBoundingClientRect().top - r.getBoundingClientRect().bottom"
        )
        assert abs(gap) <= 2  # right under it
        # the page's next updates keep it there
        version = page.get_attribute("body", "data-version")
        wait_for(lambda: page.get_attribute("body", "data-version") != version, 60, "the page to update")
        assert page.eval_on_selector(middle, "r => r.nextElementSibling.id") == "log-row"
        page.click("#log-row a.close")
        assert page.locator("#log-row").count() == 0
    finally:
        dash.stop()


def test_a_change_reaches_the_page_through_its_own_updates(browser: Any, project_dir: Path) -> None:
    """Hosts are scanned every 5 s at most by default (the CLI's --poll too), local state is pushed as soon as its
    files change: a new managed run and a new run appear without reloading the page."""
    project = config.load(project_dir / "tether.toml")
    assert inspect.signature(Dashboard).parameters["poll_s"].default <= 5
    help_text = tether("dashboard", "--help", cwd=project_dir).stdout
    assert "[default: 5s]" in help_text
    dash = Dashboard(project, port=0).start()
    try:
        page = open_page(browser, dash)
        doc = page.evaluate("lastDoc")
        assert doc["poll_s"] <= 5 and doc["watch_s"] <= 1  # what sets how soon a change shows
        record_finished_project(time.time())  # local state only: pushed when its files change
        page.locator('summary[data-managed="exp-m9"]').wait_for(timeout=60_000)
        run_id = tether_json("run", "exp", "--local", cwd=project_dir)["run_id"]  # seen by the next scan
        page.locator(f'tr[data-run="{run_id}"]').wait_for(timeout=60_000)
        with urllib.request.urlopen(dash.url.replace("/?token=", "/api/events?token="), timeout=30) as stream:
            assert stream.readline().startswith(b"event: snapshot")  # pushed, not polled by the page
    finally:
        dash.stop()
