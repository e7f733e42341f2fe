"""The controller's sender: Apprise to a real loopback receiver; each event once; never raising, never a token."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_project
from tether import config, notify
from tether.context import Ctx
from tether.state import open_state
from tether.testing.webhook import WebhookReceiver, closed_port

TOKEN = "coretok-1a2b3c4d5e6f"


def test_each_event_is_sent_once_across_processes_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with WebhookReceiver() as hook:
        project_dir = write_project(tmp_path / "proj", extra=f'[notify]\nurls = ["json://127.0.0.1:{hook.port}/a"]\n')
        monkeypatch.setenv(notify.ENV_URLS, f"json://127.0.0.1:{hook.port}/b, json://127.0.0.1:{hook.port}/a")
        project = config.load(project_dir / "tether.toml")
        assert notify.configured_urls(project) == [f"json://127.0.0.1:{hook.port}/a", f"json://127.0.0.1:{hook.port}/b"]
        for _ in range(2):  # two commands (each its own state connection) see the same pause
            with open_state() as st:
                notify.announce_managed(Ctx(project, st), "m1", "exp", "paused", "budget: $3 over", 1.5)
        with open_state() as st:
            notify.announce_managed(Ctx(project, st), "m1", "exp", "completed", None, 4.25)
            notify.announce_replaced(Ctx(project, st), "m1", 2, "box-s2", "server vanished")
        got = hook.wait(6)
    assert len(got) == 6
    messages = sorted({r.json()["message"] for r in got})
    assert messages == [
        "proj box-s2: shard 2 of managed run m1 leaves box-s2 (server vanished) for a new server; nothing to do",
        "proj exp: managed run m1 completed for $4.25; its merged results are in the results folder",
        "proj exp: managed run m1 paused: budget: $3 over; `tether run exp --managed` picks it up",
    ]


def test_a_failure_to_notify_is_said_once_without_the_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = config.load(write_project(tmp_path / "proj") / "tether.toml")
    monkeypatch.setenv(notify.ENV_URLS, f"json://127.0.0.1:{closed_port()}/{TOKEN} nosuchscheme://{TOKEN}")
    event = notify.Event("run_failed", "proj", "exp", "run x failed; `tether logs x`")
    first = notify.notify(project, event)
    second = notify.notify(project, event)
    assert [a.answered for a in first + second] == [False, False, False, False]
    assert first[0].url == "json://127.0.0.1/***" and first[1].url == "nosuchscheme://***"
    assert "not a notification URL" in str(first[1].error)
    err = capsys.readouterr().err
    assert err.count("could not notify") == 2 and TOKEN not in err
    assert all(TOKEN not in str(a.to_json()) for a in first + second)


def test_both_sides_name_the_same_event_kinds() -> None:
    from tether.server import notify as server_notify

    assert set(notify.KINDS) == set(server_notify.TITLES)


def test_an_announcement_never_breaks_its_caller(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = config.load(write_project(tmp_path / "proj") / "tether.toml")
    with open_state() as st:
        notify.announce_status(Ctx(project, st), object())  # not a report: said, not raised
    assert "could not notify (announce_status: AttributeError)" in capsys.readouterr().err
