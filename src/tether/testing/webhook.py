"""A loopback HTTP server that receives webhooks and records each request (method, path, headers, body).

``with WebhookReceiver() as hook:`` listens on ``127.0.0.1`` (a free port: ``hook.port``, ``hook.url``), answers
every request with ``status`` (200 unless told), and keeps what came in ``hook.requests``; ``hook.wait(n)`` polls
until ``n`` requests arrived or its deadline passes. Tests point notification URLs at it:
``json://127.0.0.1:PORT/hook``, ``ntfy://127.0.0.1:PORT/topic``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.text()).items()}


class WebhookReceiver:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver._lock:
                    receiver._requests.append(
                        Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            do_POST = do_PUT = do_GET = _record

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    def wait(self, count: int = 1, timeout: float = 30.0) -> list[Received]:
        """The requests once ``count`` have arrived; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.requests
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout}s for {count} webhook request(s), got {len(got)}")
            time.sleep(0.05)  # polling what another process posts, with a deadline

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
