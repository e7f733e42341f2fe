"""Events about servers and money, through the CLI on the Vast.ai emulator, each received exactly once: a run's end
(from the server), a destroy refused because results are not home, a server idle and billing past its stop timer,
a budget at 80 % and at 100 %, a preemption."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tests.e2e.conftest import Cloud, vast_project
from tests.helpers import tether, tether_json, wait_status
from tether.testing.webhook import Received, WebhookReceiver

TOKEN = "vasthook-77aa88bb99cc"


def kinds(got: list[Received]) -> Counter[str]:
    return Counter(r.json()["title"].split(": ", 1)[1] for r in got)


def test_every_server_and_money_event_arrives_once(tmp_path: Path, cloud: Cloud) -> None:
    with WebhookReceiver() as hook:
        project = vast_project(
            tmp_path, cloud, items=3, policy='idle_stop_minutes = 0.001\nmax_total_usd = 1000\nidle_stop = "never"'
        )
        toml = project / "tether.toml"
        toml.write_text(toml.read_text() + f'\n[notify]\nurls = ["json://127.0.0.1:{hook.port}/{TOKEN}"]\n')
        outputs = [tether("up", "box", "--profile", "api", "--json", cwd=project, env=cloud.env)]
        assert outputs[0].returncode == 0, outputs[0].stderr
        iid = int(json.loads(outputs[0].stdout)["rented"]["instance_id"])
        run_id = tether_json("run", "exp", "--on", "box", cwd=project, env=cloud.env)["run_id"]
        wait_status(project, run_id, {"completed"}, host="box")
        hook.wait(1)

        for _ in range(2):  # refused twice, said once
            outputs.append(tether("destroy", "box", "--json", cwd=project, env=cloud.env))
            assert outputs[-1].returncode == 3
        assert kinds(hook.requests)["destroy refused"] == 1

        hourly = tether_json("ls", cwd=project, env=cloud.env)["instances"][0]["hourly_now"]
        # spent past a tiny total; burning at 90 % of the hourly limit
        toml.write_text(
            toml.read_text().replace("max_total_usd = 1000", f"max_total_usd = 1e-9\nmax_hourly_usd = {hourly / 0.9}")
        )
        for _ in range(2):
            outputs.append(tether("status", "--json", cwd=project, env=cloud.env))
            assert outputs[-1].returncode == 0, outputs[-1].stderr
        cloud.emulator.preempt(iid)
        for command in ("ls", "status", "status"):  # `ls` sees it first; `status` does not say it again
            outputs.append(tether(command, "--json", cwd=project, env=cloud.env))
            assert outputs[-1].returncode == 0, outputs[-1].stderr
            assert kinds(hook.requests)["server preempted"] == 1
        got = hook.requests

    assert kinds(got) == Counter(
        {
            "run completed": 1,
            "destroy refused": 1,
            "server idle and billing": 1,
            "budget reached": 1,
            "budget at 80 %": 1,
            "server preempted": 1,
        }
    )
    lines = {r.json()["title"].split(": ", 1)[1]: r.json()["message"] for r in got}
    assert (
        lines["destroy refused"].startswith("proj box: destroy refused: ")
        and "tether pull box" in lines["destroy refused"]
    )
    assert (
        lines["server idle and billing"].startswith("proj box: idle ")
        and "`tether down box`" in lines["server idle and billing"]
    )
    assert lines["budget reached"].startswith("proj max_total_usd: $")
    assert lines["budget at 80 %"].startswith("proj max_hourly_usd: burning $") and "(90%)" in lines["budget at 80 %"]
    assert (
        lines["server preempted"].startswith("proj box: preempted (outbid)")
        and "`tether up box`" in lines["server preempted"]
    )
    for out in outputs:
        assert TOKEN not in out.stdout + out.stderr
