"""The server's own sender (stdlib): each scheme it speaks, posted to a real loopback receiver."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from tether.server import notify as server_notify
from tether.testing.webhook import WebhookReceiver, closed_port

TOKEN = "tk_9f8e7d6c5b4a3210"


def test_json_and_form_post_apprise_shaped_bodies() -> None:
    with WebhookReceiver() as hook:
        answers = server_notify.send_urls(
            [f"json://127.0.0.1:{hook.port}/hooks/{TOKEN}", f"form://u:{TOKEN}@127.0.0.1:{hook.port}/f"],
            "tether proj: run completed",
            "proj exp-1: run completed; pull it",
            "run_completed",
        )
        got = hook.wait(2)
    assert [a[1] for a in answers] == [True, True]
    assert all(TOKEN not in a[0] for a in answers)
    by_path = {r.path: r for r in got}
    body = by_path[f"/hooks/{TOKEN}"].json()
    assert body == {
        "version": "1.0",
        "title": "tether proj: run completed",
        "message": "proj exp-1: run completed; pull it",
        "attachments": [],
        "type": "success",
    }
    form = by_path["/f"]
    assert form.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form.form() == {
        "version": "1.0",
        "title": "tether proj: run completed",
        "message": "proj exp-1: run completed; pull it",
        "type": "success",
    }
    assert form.headers["authorization"].startswith("Basic ")


def test_ntfy_posts_the_text_to_each_topic() -> None:
    with WebhookReceiver() as hook:
        answers = server_notify.send_urls(
            [f"ntfy://127.0.0.1:{hook.port}/{TOKEN}/second"], "tether proj: run failed", "proj x: failed", "run_failed"
        )
        got = hook.wait(2)
    assert answers == [("ntfy://127.0.0.1/***", True, None)]
    assert sorted(r.path for r in got) == sorted([f"/{TOKEN}", "/second"])
    assert all(r.method == "POST" and r.text() == "proj x: failed" for r in got)
    assert got[0].headers["x-title"] == "tether proj: run failed"


def test_slack_and_discord_urls_become_their_webhooks() -> None:
    slack = server_notify.requests_for("slack://T000/B000/XXXX/#general", "t", "m", "test")
    assert slack is not None and slack[0].url == "https://hooks.slack.com/services/T000/B000/XXXX"
    assert json.loads(slack[0].body) == {"text": "t\nm"}
    native = server_notify.requests_for("https://hooks.slack.com/services/T1/B1/X1", "t", "m", "test")
    assert native is not None and native[0].url == "https://hooks.slack.com/services/T1/B1/X1"
    discord = server_notify.requests_for("discord://1234/abcd", "t", "m", "test")
    assert discord is not None and discord[0].url == "https://discord.com/api/webhooks/1234/abcd"
    assert json.loads(discord[0].body) == {"content": "t\nm"}
    assert server_notify.requests_for("https://discord.com/api/webhooks/9/z", "t", "m", "test") is not None
    # what the server does not speak is left to the controller's Apprise
    for url in ("mailto://user:pw@example.org", "tgram://bottoken/chat", "slack://xoxb-1234/#c", "https://x.org/a"):
        assert not server_notify.supports(url), url
    # the same bodies reach a real HTTP server intact
    with WebhookReceiver() as hook:
        for request in (*slack, *discord):
            server_notify.post(request._replace(url=f"{hook.url}/x"))
        got = hook.wait(2)
    assert [r.json() for r in got] == [{"text": "t\nm"}, {"content": "t\nm"}]


def test_failures_say_why_without_the_secret() -> None:
    with WebhookReceiver(status=500) as hook:
        answers = server_notify.send_urls(
            [f"json://127.0.0.1:{hook.port}/{TOKEN}", f"ntfy://127.0.0.1:{closed_port()}/{TOKEN}"], "t", "m", "test"
        )
    assert [a[1] for a in answers] == [False, False]
    assert answers[0][2] == "HTTP 500"
    assert answers[1][2] and "refused" in answers[1][2]
    assert all(TOKEN not in str(a) for a in answers)


def test_send_reads_notify_json_and_never_raises(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert server_notify.send(str(root), "server_stopped", "nothing ran for 30 minutes") == []  # no file: nothing
    (root / ".tether").mkdir(parents=True)
    path = root / ".tether" / "notify.json"
    path.write_text("{not json")
    assert server_notify.send(str(root), "server_stopped", "x") == []
    with WebhookReceiver() as hook:
        doc = {"project": "proj", "host": "lab1", "code_dir": "/w/proj", "urls": [f"json://127.0.0.1:{hook.port}/s"]}
        path.write_text(json.dumps(doc))
        os.chmod(path, 0o600)
        answers = server_notify.send(str(root), "server_stopped", "stopped by its watchdog; `tether up lab1`")
        got = hook.wait(1)
    assert answers == [("json://127.0.0.1/***", True, None)]
    assert got[0].json()["message"] == "proj lab1: stopped by its watchdog; `tether up lab1`"
    assert got[0].json()["title"] == "tether proj: server stopped"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_redact_keeps_scheme_and_host_only() -> None:
    assert server_notify.redact(f"ntfy://ntfy.sh/{TOKEN}") == "ntfy://ntfy.sh/***"
    assert server_notify.redact(f"ntfy://{TOKEN}") == "ntfy://***"
    assert server_notify.redact(f"slack://{TOKEN}/B/C") == "slack://***"
    assert server_notify.redact(f"jsons://user:{TOKEN}@example.org:8443/p?token={TOKEN}") == "jsons://example.org/***"
    assert TOKEN not in server_notify.scrub(f"failed to send to /{TOKEN}?a={TOKEN}", [f"json://h/{TOKEN}?a={TOKEN}"])
