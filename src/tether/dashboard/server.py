"""The dashboard's HTTP server: the page, its data, its live updates, all behind one random token.

- ``GET /?token=T``: the page; ``/static/<file>?token=T``: its script and style (shipped in the package).
- ``GET /api/snapshot?token=T``: the latest snapshot (:func:`tether.dashboard.snapshot.build`) as JSON.
- ``GET /api/events?token=T``: server-sent events, one ``snapshot`` event each time the poller has a new one.
- ``GET /api/log?token=T&run=ID``: the run's last log lines, as text.

Anything else, any request without the right token, any method but GET (HEAD, POST, PUT, DELETE, PATCH,
OPTIONS, ...), a malformed request, and any request whose Host header names neither the bound address nor
localhost (DNS rebinding) answers 403 (a malformed request: its 4xx) with an empty body. ``--open`` hands the
browser a page only this user can read (:meth:`Dashboard.write_opener`) that forwards it to the URL with the
token, so the token is never on a command line (where every local user could read it). One :class:`Poller`
thread observes the project, whatever the number of open pages: every host's runs every ``poll_s`` seconds (5 by
default; one round trip per host, as ``tether progress``), the whole observation every :data:`FULL_S`, and local
state as soon as it changes; each page's event stream only waits for the poller's next version (pushed at once),
so a change shows within ``poll_s`` and memory does not grow with time or pages.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import html
import ipaddress
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlparse

from tether.config import Project
from tether.context import Ctx
from tether.dashboard.snapshot import Cache, build, refresh, refresh_local
from tether.errors import ConfigError, TetherError
from tether.hosts import resolve
from tether.paths import PRIVATE_FILE, private_dir, private_home, tether_home
from tether.scope import Scope
from tether.state import open_state

STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
LOG_LINES = 200

Depth = Literal["full", "runs", "local"]


#: How often the poller looks whether local state changed (a stat of its files, no query).
WATCH_S = 0.5
#: How often the whole observation (the provider, the agent registries, what is not home) is made at most.
FULL_S = 30.0


class Poller:
    """Observes the project in its own thread (with its own state connection), at three depths: the whole
    observation (:func:`~tether.dashboard.snapshot.build`) every ``full_s`` (at least ``poll_s``); the runs of every
    host (:func:`~tether.dashboard.snapshot.refresh`: one round trip per host, what ``tether progress`` does)
    every ``poll_s``; and what local state says (managed runs, money, the chart) as soon as it changes, seen by
    looking at its files every :data:`WATCH_S`."""

    def __init__(
        self,
        project: Project,
        poll_s: float,
        *,
        state_path: Path | None = None,
        full_s: float = FULL_S,
        scope: Scope | None = None,
    ) -> None:
        self.project = project
        self.scope = scope or Scope.of(project)
        self.poll_s = poll_s
        self.full_s = max(full_s, poll_s)
        self.state_path = state_path
        self.version = 0
        self.snapshot: dict[str, Any] = {"time": None, "loading": True}
        self.cache = Cache()
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tether-dashboard-poller", daemon=True)
        self._full_at: float | None = None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        with self.changed:
            self.changed.notify_all()
        self.thread.join(timeout=5)

    def poll_once(self, depth: Depth = "full") -> None:
        """One observation at ``depth`` (``full`` while there is none yet), published to every page."""
        if self.snapshot.get("loading"):
            depth = "full"
        with open_state(self.state_path) as st:
            ctx = Ctx(self.project, st)
            try:
                if depth == "full":
                    self._full_at = time.monotonic()
                    doc = build(ctx, self.cache, self.scope)
                elif depth == "runs":
                    doc = refresh(ctx, self.snapshot, self.cache, every_s=self.poll_s, scope=self.scope)
                else:
                    doc = refresh_local(ctx, self.snapshot, self.cache, self.scope)
                doc.pop("error", None)
            except TetherError as exc:
                doc = {**self.snapshot, "error": str(exc), "time": time.time()}
        doc["poll_s"], doc["full_s"], doc["watch_s"] = self.poll_s, self.full_s, WATCH_S
        with self.changed:
            self.snapshot = doc
            self.version += 1
            self.changed.notify_all()

    def wait_newer(self, version: int, timeout: float) -> tuple[int, dict[str, Any]]:
        with self.changed:
            self.changed.wait_for(lambda: self.version != version or self.stopping.is_set(), timeout)
            return self.version, self.snapshot

    def _state_files(self) -> tuple[tuple[int, int] | None, ...]:
        """The state files' modification times and sizes (the database and its write-ahead log): what a write by
        any process changes."""
        db = self.state_path if self.state_path is not None else tether_home() / "state.db"
        out: list[tuple[int, int] | None] = []
        for path in (db, db.with_name(db.name + "-wal")):
            try:
                info = path.stat()
            except OSError:
                out.append(None)
            else:
                out.append((info.st_mtime_ns, info.st_size))
        return tuple(out)

    def _loop(self) -> None:
        depth: Depth = "full"
        while not self.stopping.is_set():
            began = time.monotonic()
            self.poll_once(depth)
            seen = self._state_files()  # after the observation: its own writes are not a change
            due = began + self.poll_s
            depth = "runs"
            while not self.stopping.is_set() and time.monotonic() < due:
                self.stopping.wait(min(WATCH_S, max(0.0, due - time.monotonic())))
                now_files = self._state_files()
                if now_files != seen:
                    self.poll_once("local")
                    seen = self._state_files()
            if self._full_at is None or time.monotonic() - self._full_at >= self.full_s:
                depth = "full"


def static_file(name: str) -> bytes | None:
    """A file shipped in ``tether/dashboard/static`` (None if there is no such file)."""
    if "/" in name or name.startswith("."):
        return None
    ref = resources.files("tether.dashboard").joinpath("static", name)
    return ref.read_bytes() if ref.is_file() else None


_WILDCARDS = ("", "0.0.0.0", "::")


def _split_host(value: str) -> tuple[str, str | None]:
    """A Host header's name (lower case, IPv6 without brackets) and port (None when absent)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, (rest[1:] if rest.startswith(":") else None)
    name, colon, port = value.rpartition(":")
    return (name, port) if colon else (value, None)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(header_values: list[str], bound: str, port: int) -> bool:
    """Whether a request's Host headers (all of them) name this server: exactly one Host, whose name is the bound
    address or localhost (or, on a wildcard address, an IP literal: a rebinding attack needs a domain name) and
    whose port, when given, is the server's. Anything else (another domain pointed at 127.0.0.1 by DNS
    rebinding, no Host, two Hosts) is refused."""
    if len(header_values) != 1:
        return False
    name, given_port = _split_host(header_values[0])
    if given_port is not None and given_port != str(port):
        return False
    bound = bound.strip("[]").lower()
    names = {"localhost", bound}
    if bound == "localhost":
        names |= {"127.0.0.1", "::1"}
    return name in names or (bound in _WILDCARDS and _is_ip(name))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A reader that went away (a closed tab, a cancelled request) is no error to print; any other still is."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def make_handler(
    token: str,
    poller: Poller,
    project: Project,
    state_path: Path | None,
    *,
    bound: str = "127.0.0.1",
    on_page: Callable[[], None] = lambda: None,
) -> type[BaseHTTPRequestHandler]:
    """The request handler; ``bound`` is the address the server listens on (for the Host check), ``on_page``
    is called each time the page itself is served with the token."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "tether-dashboard"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # requests are not logged (tokens are in URLs)
            return None

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """A malformed request (400, 414, 431, 505, ...) answers its status with an empty body, never the
            standard HTML page that echoes the request."""
            self.close_connection = True
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()

        def __getattr__(self, name: str) -> Any:
            if name.startswith("do_"):  # any method but GET (POST, PUT, DELETE, PATCH, OPTIONS, FOO): refused
                return self._refuse
            raise AttributeError(name)

        def _refuse(self) -> None:
            self._drain()
            self._send(HTTPStatus.FORBIDDEN, b"")

        def _drain(self) -> None:
            """Read (at most 1 MiB of) a refused request's body, so that closing the connection does not reset it
            before the client has read the answer."""
            self.close_connection = True
            try:
                left = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
            except ValueError:
                return
            self.connection.settimeout(5.0)
            with contextlib.suppress(OSError):
                while left > 0:
                    chunk = self.rfile.read(min(left, 65536))
                    if not chunk:
                        break
                    left -= len(chunk)

        def do_HEAD(self) -> None:
            self._send(HTTPStatus.FORBIDDEN, b"")

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
            address: Any = self.server.server_address
            host_ok = host_allowed(self.headers.get_all("Host") or [], bound, int(address[1]))
            if not host_ok or not self._authorised(query):
                self._send(HTTPStatus.FORBIDDEN, b"")
                return
            if url.path == "/":
                page = (static_file("index.html") or b"").replace(b"{{token}}", token.encode())
                self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
                on_page()
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
                text = f"(log unavailable: {exc!s})"
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
        poll_s: float = 5.0,
        token: str | None = None,
        state_path: Path | None = None,
        scope: Scope | None = None,
    ) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self.poller = Poller(project, poll_s, state_path=state_path, scope=scope)
        self.opener: Path | None = None
        self._opener_lock = threading.Lock()
        handler = make_handler(self.token, self.poller, project, state_path, bound=host, on_page=self._remove_opener)
        try:
            self.httpd = _Server((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"Port {port} on {host} is in use already; nothing was started.", "Pick another with --port."
                ) from None
            raise ConfigError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.", None) from None
        self.host, self.port = host, int(self.httpd.server_address[1])
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"

    def write_opener(self) -> Path:
        """A page that forwards a browser to :attr:`url`, in a file only this user can read (0600, in a 0700
        folder under tether's home), for ``--open``: the browser is given this file's path, so the token never
        appears on a command line. The file is removed once the page was served with the token, and when the
        dashboard stops."""
        folder = private_dir(private_home() / "dashboard")
        path = folder / f"open-{self.port}-{secrets.token_hex(8)}.html"
        target = html.escape(self.url, quote=True)
        page = (
            '<!doctype html>\n<html><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">\n'
            f'<meta http-equiv="refresh" content="0; url={target}">\n<title>tether dashboard</title></head>\n'
            f'<body><a href="{target}">Open the dashboard</a></body></html>\n'
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, PRIVATE_FILE)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        with self._opener_lock:
            self.opener = path
        return path

    def _remove_opener(self) -> None:
        with self._opener_lock:
            path, self.opener = self.opener, None
        if path is not None:
            with contextlib.suppress(FileNotFoundError):  # already removed
                path.unlink()

    def start(self) -> Dashboard:
        self.poller.start()
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="tether-dashboard", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._remove_opener()
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
