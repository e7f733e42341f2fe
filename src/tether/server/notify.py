"""Notifications sent from a server itself, so the news arrives while the laptop is closed (stdlib, Python 3.8).

``tether up`` and ``tether push`` write ``<root>/.tether/notify.json`` (mode 0600, through stdin, like the
``.env``): ``{"project", "host", "code_dir", "urls"}``. The run wrapper announces the end of a run with it, and the
watchdog a server it stops: ``send(root, kind, text)``. Both never raise and wait a few seconds at most.

The server posts these schemes itself (the controller sends every other scheme Apprise knows):

=====================================================  ==========================================================
URL                                                    what is posted
=====================================================  ==========================================================
``json://host[:port]/path``, ``jsons://`` (https)      JSON ``{"version", "title", "message", "attachments",
                                                       "type"}`` (Apprise's json plugin)
``form://host[:port]/path``, ``forms://``              a form ``version, title, message, type``
``ntfy://host[:port]/topic``, ``ntfys://``;            the message as text to ``http(s)://host/topic``, the
``ntfy://topic`` (ntfy.sh)                             title in ``X-Title``
``slack://TokenA/TokenB/TokenC``,                      JSON ``{"text"}`` to the Slack webhook
``https://hooks.slack.com/services/...``
``discord://id/token``,                                JSON ``{"content"}`` to the Discord webhook
``https://discord.com/api/webhooks/id/token``
=====================================================  ==========================================================

A URL holds its secret (a token, a topic): nothing here prints one. Errors name the URL by :func:`redact` only.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any, NamedTuple

NOTIFY_FILE = ".tether/notify.json"
"""Under a workspace root: where the notification URLs live on a server (mode 0600)."""
TIMEOUT_S = 5.0
"""Per URL: a notification never holds up the end of a run or a watchdog for long."""
TITLES = {
    "run_completed": "run completed",
    "run_failed": "run failed",
    "run_died": "run died",
    "server_preempted": "server preempted",
    "server_replaced": "server replaced",
    "server_stopped": "server stopped",
    "server_idle": "server idle and billing",
    "managed_done": "managed run done",
    "managed_paused": "managed run paused",
    "budget_warning": "budget at 80 %",
    "budget_reached": "budget reached",
    "destroy_refused": "destroy refused",
    "test": "test",
}
"""Every event kind and its title (the controller's :data:`tether.notify.EventKind` is the same set)."""
_TYPES = {
    "run_completed": "success",
    "managed_done": "success",
    "run_failed": "failure",
    "run_died": "failure",
    "destroy_refused": "failure",
    "budget_reached": "failure",
    "test": "info",
}
_HOST_SCHEMES = {
    base + tls
    for base in ("json", "form", "xml", "ntfy", "http", "mailto", "gotify", "matrix", "mmost", "rocket", "apprise")
    for tls in ("", "s")
}
"""Schemes whose host part is a real host name (shown by :func:`redact`); in others it may be a token."""
SLACK_HOOKS = "https://hooks.slack.com/services/"
DISCORD_HOOKS = "https://discord.com/api/webhooks/"


def notify_type(kind: str) -> str:
    """Apprise's message type of an event kind: info, success, warning or failure."""
    return _TYPES.get(kind, "warning")


def title(project: str, kind: str) -> str:
    return f"tether {project}: {TITLES.get(kind, kind.replace('_', ' '))}"


def line(project: str, subject: str, text: str) -> str:
    """The one line of every notification: project, experiment or server, what happened, what to do."""
    return f"{project} {subject}: {text}"


def redact(url: str) -> str:
    """A URL with only its scheme and host kept: ``ntfy://ntfy.sh/***``. Never the path, user, token or query."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        return "***"
    scheme = (parts.scheme or "?").lower()
    if scheme not in _HOST_SCHEMES or (scheme.startswith("ntfy") and not parts.path.strip("/")):
        host = ""  # many services put a token or a topic where the host would be (tgram://BOTTOKEN/...)
    return f"{scheme}://{host}/***" if host else f"{scheme}://***"


def secret_parts(url: str) -> list[str]:
    """The pieces of a URL that may be secret (user, password, path segments, query values), longest first."""
    out = {url}
    try:
        parts = urllib.parse.urlsplit(url.strip())
        out.update(p for p in (parts.username, parts.password, parts.netloc.rpartition("@")[0]) if p)
        if parts.scheme in ("slack", "discord", "ntfy", "ntfys") and parts.hostname:
            out.update((parts.hostname, _raw_host(parts)))
        segments = [s for s in parts.path.split("/") if s]
        out.update(segments)
        out.update(urllib.parse.unquote(s) for s in segments)
        out.update(v for _, v in urllib.parse.parse_qsl(parts.query) if v)
        if parts.path.strip("/"):
            out.add(parts.path)
    except ValueError:
        pass
    return sorted((p for p in out if len(p) >= 4), key=len, reverse=True)


def scrub(text: str, urls: list[str]) -> str:
    """``text`` with every secret part of ``urls`` replaced by ``***``."""
    for url in urls:
        for part in secret_parts(url):
            text = text.replace(part, "***")
    return text


class Request(NamedTuple):
    url: str
    headers: dict[str, str]
    body: bytes


def _auth(parts: urllib.parse.SplitResult) -> dict[str, str]:
    if parts.username is None:
        return {}
    import base64

    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": "Basic " + token}


def _http(parts: urllib.parse.SplitResult, secure: bool) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{'https' if secure else 'http'}://{host}{port}"


def _raw_host(parts: urllib.parse.SplitResult) -> str:
    """The host part as written (``hostname`` lowercases it; a token or a topic is case-sensitive)."""
    return urllib.parse.unquote(parts.netloc.rpartition("@")[2].split(":", 1)[0])


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def requests_for(url: str, head: str, message: str, kind: str) -> list[Request] | None:
    """The HTTP POSTs a URL stands for, or None when the server does not speak its scheme (pure)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 - a bad port raises here, not later
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    segments = [urllib.parse.unquote(s) for s in parts.path.split("/") if s]
    json_type = {"Content-Type": "application/json", "User-Agent": "tether"}
    if scheme in ("json", "jsons", "form", "forms"):
        if not parts.hostname:
            return None
        target = _http(parts, scheme.endswith("s")) + (parts.path or "/")
        if parts.query:
            target += "?" + "&".join(
                f"{k}={urllib.parse.quote(v)}" for k, v in urllib.parse.parse_qsl(parts.query) if k[:1] not in "+-:"
            )
        fields: dict[str, Any] = {"version": "1.0", "title": head, "message": message, "type": notify_type(kind)}
        if scheme.startswith("json"):
            body = json.dumps({**fields, "attachments": []}).encode()
            return [Request(target.rstrip("?"), {**json_type, **_auth(parts)}, body)]
        form = urllib.parse.urlencode(fields).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "tether", **_auth(parts)}
        return [Request(target.rstrip("?"), headers, form)]
    if scheme in ("ntfy", "ntfys"):
        headers = {"Content-Type": "text/plain; charset=utf-8", "X-Title": _ascii(head), "User-Agent": "tether"}
        headers.update(_auth(parts))
        if not segments:  # ntfy://topic: a topic on ntfy.sh
            if not _raw_host(parts):
                return None
            return [Request("https://ntfy.sh/" + urllib.parse.quote(_raw_host(parts)), headers, message.encode())]
        base = _http(parts, scheme == "ntfys")
        return [Request(f"{base}/{urllib.parse.quote(t)}", headers, message.encode()) for t in segments]
    text = f"{head}\n{message}"
    if scheme == "slack":
        tokens = ([_raw_host(parts)] if _raw_host(parts) else []) + segments
        tokens = [t for t in tokens if not t.startswith(("#", "@"))]
        if len(tokens) < 3 or tokens[0].startswith("xox"):
            return None  # a bot token (OAuth) is for the controller's Apprise
        hook = SLACK_HOOKS + "/".join(urllib.parse.quote(t) for t in tokens[:3])
        return [Request(hook, json_type, json.dumps({"text": text}).encode())]
    if scheme == "discord":
        tokens = ([_raw_host(parts)] if _raw_host(parts) else []) + segments
        if len(tokens) < 2:
            return None
        hook = DISCORD_HOOKS + "/".join(urllib.parse.quote(t) for t in tokens[:2])
        return [Request(hook, json_type, json.dumps({"content": text}).encode())]
    if scheme == "https":
        host = (parts.hostname or "").lower()
        if host == "hooks.slack.com" and parts.path.startswith("/services/"):
            return [Request(url.strip(), json_type, json.dumps({"text": text}).encode())]
        if host in ("discord.com", "discordapp.com") and parts.path.startswith("/api/webhooks/"):
            return [Request(url.strip(), json_type, json.dumps({"content": text}).encode())]
    return None


def supports(url: str) -> bool:
    """Whether a server can send to ``url`` itself (else only the controller's Apprise can)."""
    return requests_for(url, "", "", "test") is not None


def post(request: Request, timeout: float = TIMEOUT_S) -> None:
    """POST one request; raises OSError (urllib's errors) when it is not answered with a 2xx."""
    import urllib.request  # here: the progress scan and the wrapper's start do not pay for it

    req = urllib.request.Request(request.url, data=request.body, headers=request.headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read(65536)


def _reason(exc: BaseException) -> str:
    """Why a POST failed, without the URL: ``HTTP 404``, ``connection refused``, ``timed out``."""
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else OSError(str(exc.reason))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__ if not str(exc) else str(exc)


def send_urls(urls: list[str], head: str, message: str, kind: str) -> list[tuple[str, bool, str | None]]:
    """Send to every URL the server speaks; per URL: (redacted URL, answered, why not). Never raises."""
    out: list[tuple[str, bool, str | None]] = []
    for url in urls:
        requests = requests_for(url, head, message, kind)
        if requests is None:
            continue
        error: str | None = None
        for request in requests:
            try:
                post(request)
            except Exception as exc:  # a notification never breaks its caller; say why without the URL
                error = scrub(_reason(exc), [url])
        out.append((redact(url), error is None, error))
    return out


def notify_path(root: str) -> str:
    return os.path.join(root, NOTIFY_FILE)


def load(root: str) -> dict[str, Any] | None:
    """``<root>/.tether/notify.json`` as ``{"project", "host", "code_dir", "urls"}``, or None."""
    try:
        with open(notify_path(root), encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    urls = doc.get("urls")
    doc["urls"] = [u for u in urls if isinstance(u, str) and u.strip()] if isinstance(urls, list) else []
    for key in ("project", "host", "code_dir"):
        if not isinstance(doc.get(key), str):
            doc[key] = ""
    return doc


def server_urls(doc: dict[str, Any] | None) -> list[str]:
    """The URLs of a loaded notify.json the server can send to itself."""
    return [u for u in (doc or {}).get("urls", []) if supports(u)]


def send(root: str, kind: str, text: str, subject: str = "") -> list[tuple[str, bool, str | None]]:
    """Announce ``kind`` ("server_stopped", "run_completed"...) with one line ``text`` (what happened; what to do)
    to the URLs in ``<root>/.tether/notify.json`` the server speaks. Never raises; at most a few seconds per URL."""
    try:
        doc = load(root)
        if doc is None:
            return []
        project = doc["project"] or "tether"
        return send_urls(server_urls(doc), title(project, kind), line(project, subject or doc["host"], text), kind)
    except Exception:  # the caller (a run's end, the watchdog) must go on whatever happens here
        return []
