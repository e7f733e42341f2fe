"""`tether notify --test` through the real CLI and Apprise, to a loopback webhook receiver."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import tether, tether_checked, write_project
from tether.testing.webhook import WebhookReceiver, closed_port

TOKEN = "tok-5e3a9c1d77b2"


def test_notify_test_says_which_urls_answered_and_never_shows_a_token(tmp_path: Path) -> None:
    with WebhookReceiver() as hook:
        project = write_project(
            tmp_path / "proj", extra=f'[notify]\nurls = ["ntfy://127.0.0.1:{hook.port}/{TOKEN}-topic"]\n'
        )
        env = {
            "TETHER_NOTIFY_URLS": f"json://127.0.0.1:{hook.port}/hook/{TOKEN}, json://127.0.0.1:{closed_port()}/{TOKEN}"
        }
        doc = tether_checked("notify", "--test", schema="notify", cwd=project, env=env)
        got = hook.wait(2)
        human = tether("notify", "--test", cwd=project, env=env)
        listing = tether_checked("notify", schema="notify", cwd=project, env=env)
    assert doc["tested"] is True
    assert [(u["url"], u["server"], u["answered"]) for u in doc["urls"]] == [
        ("ntfy://127.0.0.1/***", True, True),
        ("json://127.0.0.1/***", True, True),
        ("json://127.0.0.1/***", True, False),
    ]
    assert doc["urls"][2]["error"]
    assert listing == {"tested": False, "urls": [{k: u[k] for k in ("url", "server")} for u in doc["urls"]]}
    paths = sorted(r.path for r in got[:2])
    assert paths[0] == "/" and paths[1] == f"/hook/{TOKEN}"  # Apprise posts ntfy to the server, topic in the body
    json_body = next(r for r in got if r.path.startswith("/hook")).json()
    assert json_body["title"] == "tether proj: test" and json_body["message"].startswith("proj notify: a test")
    assert human.returncode == 0 and "2 of 3 notification URL(s) answered" in human.stderr
    for text in (human.stdout, human.stderr, str(doc), str(listing)):
        assert TOKEN not in text


def test_notify_test_exit_codes(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj")
    none = tether_checked("notify", "--test", schema="notify", cwd=project, code=2)
    assert none["kind"] == "ConfigError" and "No notification URL" in none["error"]
    env = {
        "TETHER_NOTIFY_URLS": f"json://127.0.0.1:{closed_port()}/{TOKEN} mailto://nobody:{TOKEN}@127.0.0.1:{closed_port()}"
    }
    failed = tether_checked("notify", "--test", schema="notify", cwd=project, env=env, code=1)
    assert failed["kind"] == "NotifyError" and "None of the 2" in failed["error"]
    assert TOKEN not in str(failed)
    bad = write_project(tmp_path / "bad", extra='[notify]\nurls = []\ntopic = "x"\n')
    unknown = tether_checked("notify", "--test", schema="notify", cwd=bad, code=2)
    assert "notify.topic: unknown key" in unknown["error"]
