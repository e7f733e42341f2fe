"""Dashboard: the data endpoint's time and the page's load time with 50 runs on 5 real sshd hosts.

Five sshd hosts on loopback, each with tether's server side and 10 finished runs (run records and progress files
as the wrapper and the checkpoint library write them); a project naming the five as ``[hosts.*]``; local state
knowing the 50 runs. It measures, as medians over repeats:

- ``progress_s``: :func:`tether.runs.progress` alone (what ``tether progress`` does, in this process), the baseline,
  measured in the same run, and ``progress_cli_s``: the ``tether progress --json`` command itself (a process);
- ``refresh_s``: one :func:`tether.dashboard.snapshot.refresh`, what the poller does every ``--poll`` (5 s): one
  progress scan per host, the local state, and its share of the agent registries due (in the steady state, every
  registry due: one of the five each update); ``refresh_ratio`` = ``refresh_s / progress_s``;
- ``snapshot_s``: one :func:`tether.dashboard.snapshot.build`, the whole observation the poller makes every 30 s (the
  status observation: scans, money; the registries kept fresh by the updates); ``snapshot_ratio`` = ``snapshot_s /
  progress_s``; and ``first_s`` / ``first_ratio``: the first one, when the dashboard starts, which reads every
  registry (beside the scans).
- ``page_load_s``: headless Chromium (Debian's, through Playwright) opening the page until all 50 rows are drawn,
  with the poller's snapshot ready.

The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, median, note, timed

HOSTS = 5
RUNS_PER_HOST = 10
REPEATS = 5
POLL_S = 5.0  # the dashboard's default --poll


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    os.environ["TETHER_HOME"] = str(tmp / "home")
    from tether import config, runs
    from tether.context import Ctx
    from tether.dashboard.server import Dashboard
    from tether.dashboard.snapshot import REGISTRY_S, Cache, build, refresh
    from tether.hosts import resolve
    from tether.provision import check_python, install_server_side
    from tether.state import RunRecord, open_state
    from tether.testing.sshd import SshdHost

    hosts = [SshdHost(tmp / f"sshd-{n}") for n in range(HOSTS)]
    try:
        for host in hosts:
            host.start()
        project_dir = tmp / "proj"
        project_dir.mkdir()
        text = '[project]\nname = "proj"\n\n[experiments.exp]\ncommand = "true"\nresults = "results"\n'
        for n, host in enumerate(hosts):
            text += (
                f'\n[hosts.h{n}]\naddress = "{host.address}"\nidentity_file = "{host.identity_file}"\n'
                f'remote_root = "{host.root_dir}"\n'
            )
        (project_dir / "tether.toml").write_text(text)
        project = config.load(project_dir / "tether.toml")
        now = time.time()
        with open_state() as st:
            for n, host in enumerate(hosts):
                target = resolve(project, f"h{n}", st)
                _version, python = check_python(target)
                st.set_host_facts(f"h{n}", python=python)
                install_server_side(resolve(project, f"h{n}", st))
                for k in range(RUNS_PER_HOST):
                    run_id = f"exp-h{n}-{k:02d}"
                    results = host.root_dir / "proj" / "results" / run_id
                    results.mkdir(parents=True)
                    (results / "results.progress.json").write_text(
                        json.dumps({"name": "results", "completed": 100, "failed": 0, "total": 100, "finished": True})
                    )
                    run_dir = host.root_dir / ".tether" / "runs" / run_id
                    run_dir.mkdir(parents=True)
                    (run_dir / "log").write_text("done\n")
                    record = {
                        "id": run_id,
                        "experiment": "exp",
                        "status": "completed",
                        "pid": 1,
                        "exit_code": 0,
                        "started": now - 600,
                        "ended": now - 60,
                        "log": str(run_dir / "log"),
                        "results_dir": str(results),
                    }
                    (run_dir / "run.json").write_text(json.dumps(record))
                    st.add_run(
                        RunRecord(
                            run_id,
                            "exp",
                            f"h{n}",
                            ["true"],
                            "/",
                            str(results),
                            str(run_dir / "log"),
                            "s",
                            now - 600,
                            now - 60,
                            0,
                            "completed",
                        )
                    )
            ctx = Ctx(project, st)
            runs.progress(ctx)  # warm every control master
            progress_times = [timed(lambda: runs.progress(ctx))[0] for _ in range(REPEATS)]
            cache = Cache()
            first_s, _doc = timed(lambda: build(ctx, cache))  # once, when the dashboard starts: every registry read
            snapshot_times, docs = zip(*(timed(lambda: build(ctx, cache)) for _ in range(REPEATS)), strict=True)

            def update() -> Any:
                """An update in the steady state: every registry is due, the update reads its share of them."""
                for name, (at, found) in list(cache.listings.items()):
                    cache.listings[name] = (at - REGISTRY_S, found)
                return refresh(ctx, docs[-1], cache, every_s=POLL_S)

            refresh_times = [timed(update)[0] for _ in range(REPEATS)]
            progress_times += [timed(lambda: runs.progress(ctx))[0] for _ in range(REPEATS)]  # before and after
        cli = [sys.executable, "-m", "tether", "progress", "--json"]
        cli_times = [
            timed(lambda: subprocess.run(cli, cwd=project_dir, check=True, capture_output=True))[0]
            for _ in range(REPEATS)
        ]
        shown = sum(len(group["runs"]) for group in docs[-1]["runs"])
        assert shown == HOSTS * RUNS_PER_HOST, shown
        progress_s = median(progress_times)
        note(
            f"snapshot {median(list(snapshot_times)):.3f} s, refresh {median(refresh_times):.3f} s, progress "
            f"{progress_s:.3f} s (tether progress --json: {median(cli_times):.3f} s)"
        )

        page_load: float | None = None
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        if Path(chromium).exists():
            from playwright.sync_api import sync_playwright

            board = Dashboard(project, port=0, poll_s=3600).start()
            try:
                board.poller.wait_newer(0, 60)
                loads = []
                with sync_playwright() as pw:
                    browser = pw.chromium.launch(
                        executable_path=chromium,
                        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
                    )
                    for _ in range(REPEATS):
                        page = browser.new_page()
                        t0 = time.perf_counter()
                        page.goto(board.url)
                        page.locator("tr[data-run]").nth(shown - 1).wait_for()
                        loads.append(time.perf_counter() - t0)
                        page.close()
                    browser.close()
                page_load = median(loads)
            finally:
                board.stop()
        emit(
            {
                "hosts": HOSTS,
                "runs": HOSTS * RUNS_PER_HOST,
                "progress_s": round(progress_s, 4),
                "progress_cli_s": round(median(cli_times), 4),
                "refresh_s": round(median(refresh_times), 4),
                "refresh_ratio": round(median(refresh_times) / progress_s, 3),
                "first_s": round(first_s, 4),
                "first_ratio": round(first_s / progress_s, 3),
                "snapshot_s": round(median(list(snapshot_times)), 4),
                "snapshot_ratio": round(median(list(snapshot_times)) / progress_s, 3),
                "page_load_s": None if page_load is None else round(page_load, 4),
            }
        )
    finally:
        for host in hosts:
            host.kill_tmux()
            host.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
