"""A loopback TCP proxy whose connections a test can cut, to break a transfer in the middle for real.

:class:`CutProxy` listens on ``127.0.0.1:<port>`` and forwards each connection to a target port. ``cut()`` resets
every current connection at once; ``cut_after(n)`` lets ``n`` more bytes through (both directions together) and
then cuts every connection, once. New connections after a cut are forwarded normally, so a retry can succeed.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

CHUNK = 64 * 1024


class CutProxy:
    """Forward ``127.0.0.1:self.port`` to ``target_host:target_port`` in background threads."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._budget: int | None = None
        self._done: set[socket.socket] = set()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.cuts = 0
        self.connections = 0
        self.bytes_forwarded = 0
        self.cut_happened = threading.Event()
        accept = threading.Thread(target=self._accept_loop, name=f"cutproxy-{self.port}", daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._pairs.append((client, upstream))
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                pump = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                pump.start()
                self._threads.append(pump)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(CHUNK)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                self._half_closed(src, dst)
                return
            cut_now = False
            with self._lock:
                if self._budget is not None:
                    if len(data) >= self._budget:
                        data = data[: self._budget]
                        self._budget = None
                        cut_now = True
                    else:
                        self._budget -= len(data)
                self.bytes_forwarded += len(data)
            with contextlib.suppress(OSError):
                dst.sendall(data)  # a failure means the peer is gone; the other pump sees it too
            if cut_now:
                self.cut()
                return

    def _half_closed(self, src: socket.socket, dst: socket.socket) -> None:
        """Forget a connection once both of its directions have ended."""
        with self._lock:
            self._done.add(src)
            pair = next((p for p in self._pairs if src in p), None)
            if pair is None or not all(sock in self._done for sock in pair):
                return
            self._pairs.remove(pair)
            self._done.difference_update(pair)
        for sock in pair:
            sock.close()

    def cut_after(self, n: int) -> None:
        """Let ``n`` more bytes through, then cut every connection (once)."""
        with self._lock:
            self._budget = n

    def cut(self) -> None:
        """Reset every current connection now (both sides see the connection die)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            if pairs:
                self.cuts += 1
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    # Linger 0: close sends a TCP reset, as a dropped link would end the session.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        if pairs:
            self.cut_happened.set()

    def close(self) -> None:
        """Stop listening, cut every connection and wait (bounded) for the threads to end."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.cut()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> CutProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
