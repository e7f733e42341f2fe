"""The dashboard's HTTP server: the page, its data, its live updates, all behind one random token.

- ``GET /?token=T``: the page; ``/static/<file>?token=T``: its script and style (shipped in the package).
- ``GET /api/snapshot?token=T``: the latest snapshot (:func:`tether.dashboard.snapshot.build`) as JSON.
- ``GET /api/events?token=T``: server-sent events, one ``snapshot`` event each time the poller has a new one.
- ``GET /api/log?token=T&run=ID``: the run's last log lines, as text.

Anything else, or any request without the right token, answers 403 with an empty body. One :class:`Poller`
thread observes the project every ``poll_s`` seconds (one round trip per host), whatever the number of open pages;
each page's event stream only waits for the poller's next version, so memory does not grow with time or pages.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tether.config import Project
from tether.context import Ctx
from tether.dashboard.snapshot import build
from tether.errors import ConfigError, TetherError
from tether.hosts import resolve
from tether.state import open_state

STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
LOG_LINES = 200


class Poller:
    """Builds a snapshot every ``poll_s`` seconds in its own thread (with its own state connection)."""

    def __init__(self, project: Project, poll_s: float, *, state_path: Path | None = None) -> None:
        self.project = project
        self.poll_s = poll_s
        self.state_path = state_path
        self.version = 0
        self.snapshot: dict[str, Any] = {"time": None, "loading": True}
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tether-dashboard-poller", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        with self.changed:
            self.changed.notify_all()
        self.thread.join(timeout=5)

    def poll_once(self) -> None:
        with open_state(self.state_path) as st:
            try:
                doc = build(Ctx(self.project, st))
            except TetherError as exc:
                doc = {**self.snapshot, "error": str(exc), "time": time.time()}
        with self.changed:
            self.snapshot = doc
            self.version += 1
            self.changed.notify_all()

    def wait_newer(self, version: int, timeout: float) -> tuple[int, dict[str, Any]]:
        with self.changed:
            self.changed.wait_for(lambda: self.version != version or self.stopping.is_set(), timeout)
            return self.version, self.snapshot

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.poll_once()
            self.stopping.wait(self.poll_s)


def static_file(name: str) -> bytes | None:
    """A file shipped in ``tether/dashboard/static`` (None if there is no such file)."""
    if "/" in name or name.startswith("."):
        return None
    ref = resources.files("tether.dashboard").joinpath("static", name)
    return ref.read_bytes() if ref.is_file() else None


def make_handler(token: str, poller: Poller, project: Project, state_path: Path | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "tether-dashboard"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # requests are not logged (tokens are in URLs)
            return None

        def _authorised(self, query: dict[str, list[str]]) -> bool:
            given = (query.get("token") or [""])[0]
            return hmac.compare_digest(given.encode(), token.encode())

        def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if not self._authorised(query):
                self._send(HTTPStatus.FORBIDDEN, b"")
                return
            if url.path == "/":
                page = (static_file("index.html") or b"").replace(b"{{token}}", token.encode())
                self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            elif url.path.startswith("/static/"):
                name = url.path[len("/static/") :]
                body = static_file(name)
                suffix = Path(name).suffix
                if body is None or suffix not in STATIC_TYPES:
                    self._send(HTTPStatus.FORBIDDEN, b"")
                else:
                    self._send(HTTPStatus.OK, body, STATIC_TYPES[suffix])
            elif url.path == "/api/snapshot":
                self._send(HTTPStatus.OK, json.dumps(poller.snapshot, default=str).encode(), "application/json")
            elif url.path == "/api/events":
                self._events()
            elif url.path == "/api/log":
                self._log((query.get("run") or [""])[0])
            else:
                self._send(HTTPStatus.FORBIDDEN, b"")

        def _events(self) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            version = -1
            with contextlib.suppress(OSError):
                while not poller.stopping.is_set():
                    version, doc = poller.wait_newer(version, 15.0)
                    data = json.dumps(doc, default=str)
                    self.wfile.write(f"event: snapshot\ndata: {data}\n\n".encode())
                    self.wfile.flush()

        def _log(self, run_id: str) -> None:
            try:
                with open_state(state_path) as st:
                    rec = st.find_run(run_id)
                    target = resolve(project, rec.host, st)
                    result = target.transport.run(["tail", "-n", str(LOG_LINES), rec.log_path], check=False)
                text = result.text() if result.returncode == 0 else f"(no log yet for {rec.id})"
            except TetherError as exc:
                text = f"(log unavailable: {exc})"
            self._send(HTTPStatus.OK, text.encode("utf-8", "replace"))

    return Handler


class Dashboard:
    """The server, its poller and its token. ``start()`` binds (ConfigError, exit 2, when the port is taken)."""

    def __init__(
        self,
        project: Project,
        *,
        host: str = "127.0.0.1",
        port: int = 8787,
        poll_s: float = 30.0,
        token: str | None = None,
        state_path: Path | None = None,
    ) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self.poller = Poller(project, poll_s, state_path=state_path)
        handler = make_handler(self.token, self.poller, project, state_path)
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"Port {port} on {host} is in use already; nothing was started.", "Pick another with --port."
                ) from None
            raise ConfigError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.", None) from None
        self.httpd.daemon_threads = True
        self.host, self.port = host, int(self.httpd.server_address[1])
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"

    def start(self) -> Dashboard:
        self.poller.start()
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="tether-dashboard", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.poller.stop()
        self.httpd.shutdown()
        self.httpd.server_close()

    def serve(self, on_ready: Callable[[str], None] = lambda _url: None) -> None:
        """Serve until interrupted (Ctrl-C)."""
        self.start()
        on_ready(self.url)
        try:
            while self.thread is not None and self.thread.is_alive():
                self.thread.join(1.0)
        finally:
            self.stop()


__all__ = ["Dashboard", "Poller"]
