"""A managed run's news through the CLI on the Vast.ai emulator, each once: paused by its budget (with why), a
lost server replaced, done; the shard's own end comes from its server."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.e2e.conftest import Cloud, vast_project
from tests.e2e.managed_helpers import FAST, journal_lines, running_instance, start_tether, vanish
from tests.helpers import tether, wait_for
from tether.testing.webhook import WebhookReceiver

TOKEN = "mgdtok-a1b2c3d4e5f6"


def test_paused_replaced_and_done_are_each_said_once(tmp_path: Path, cloud: Cloud) -> None:
    with WebhookReceiver() as hook:
        project = vast_project(tmp_path, cloud, items=60)
        toml = project / "tether.toml"
        text = toml.read_text().replace("--items 60", "--items 60 --delay 0.1")
        toml.write_text(text + f'\n[notify]\nurls = ["json://127.0.0.1:{hook.port}/{TOKEN}"]\n')
        paused = tether("run", "exp", "--managed", "--max-usd", "0.0001", *FAST, cwd=project, env=cloud.env)
        assert paused.returncode == 3, paused.stderr
        ctl = start_tether("run", "exp", "--managed", "--max-usd", "1", *FAST, cwd=project, env=cloud.env)
        first = running_instance(cloud, 0)
        wait_for(lambda: journal_lines(cloud, first.id) >= 10, 60, "the shard to record items")
        vanish(cloud, first.id)
        out, err = ctl.communicate(timeout=240)
        assert ctl.returncode == 0, err
        got = hook.requests
    titles = Counter(r.json()["title"].split(": ", 1)[1] for r in got)
    assert titles == Counter({"managed run paused": 1, "server replaced": 1, "managed run done": 1, "run completed": 1})
    lines = {r.json()["title"].split(": ", 1)[1]: r.json()["message"] for r in got}
    assert "past --max-usd $0.0001" in lines["managed run paused"]
    assert "`tether run exp --managed` picks it up" in lines["managed run paused"]
    assert "(server vanished) for a new server" in lines["server replaced"]
    assert (
        lines["managed run done"].startswith("proj exp: managed run ")
        and " completed for $" in lines["managed run done"]
    )
    assert TOKEN not in paused.stdout + paused.stderr + out + err
