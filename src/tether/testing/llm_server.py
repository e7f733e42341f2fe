"""A loopback HTTP server speaking enough of the OpenAI chat-completions API for the real ``openai`` client.

It rate-limits like a provider: a token bucket of ``rps`` requests a second and one of ``tpm`` tokens a minute
(each holding ``burst_s`` seconds' worth), answering 429 with ``retry-after``, ``retry-after-ms`` and
``x-ratelimit-*`` headers beyond them; a share ``error_rate`` of the admitted requests is answered 500; an
admitted request takes ``latency_s`` plus ``per_token_s`` per completion token. ``always=(status, headers)``
answers every request with that status instead (e.g. ``(429, {"retry-after": "0"})`` or ``(401, {})``), and
``script=[(status, headers), ...]`` answers the first requests so (a 200 there is an ordinary answer). Either
takes a third element, the JSON body to answer with, such as a provider's own error bodies:
:func:`google_retry_body` (the Gemini API's 429 with a ``google.rpc.RetryInfo`` delay and no header) and
:func:`openai_quota_body` (OpenAI's 429 ``insufficient_quota``).
Every answer carries an ``x-request-id``. ``stats()`` counts requests by status and keeps their arrival times.

In a process of its own: ``python -m tether.testing.llm_server [--rps R] [--tpm T] [--error-rate E]
[--latency S] [--per-token S] [--seed N]`` prints ``{"url"}`` on one line; ``GET /stats`` returns the counts and
``POST /reset`` (a JSON object of the same knobs) starts afresh.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Bucket:
    def __init__(self, per_s: float, burst_s: float) -> None:
        self.rate = per_s
        self.capacity = max(per_s * burst_s, 1.0)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def take(self, n: float) -> float:
        """Take ``n`` if there is room and return 0.0; else take nothing and return the seconds until there is."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level >= n:
            self.level -= n
            return 0.0
        return (n - self.level) / self.rate


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a client opening 64 connections at once must not meet a full backlog


class FakeLLMServer:
    """The server; ``url`` is its base URL (``http://127.0.0.1:PORT/v1``). Use as a context manager or
    ``start()``/``stop()``."""

    def __init__(self, **knobs: Any) -> None:
        self._lock = threading.Lock()
        self._n = 0
        self.configure(**knobs)
        server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._server = server
        self.port = int(server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def configure(
        self,
        rps: float | None = None,
        tpm: float | None = None,
        burst_s: float = 1.0,
        error_rate: float = 0.0,
        latency_s: float = 0.0,
        per_token_s: float = 0.0,
        always: Sequence[Any] | None = None,
        script: Sequence[Sequence[Any]] | None = None,
        seed: int = 0,
    ) -> None:
        """Set the knobs and start afresh (full buckets, zero counts). ``script`` answers the first requests with
        those statuses and headers (and JSON bodies, when given), in order, before the usual behaviour."""
        with self._lock:
            self.script = [_answer(one) for one in (script or [])]
            self.rps, self.tpm, self.error_rate = rps, tpm, error_rate
            self.latency_s, self.per_token_s = latency_s, per_token_s
            self.always = _answer(always) if always is not None else None
            self._req_bucket = _Bucket(rps, burst_s) if rps else None
            self._tok_bucket = _Bucket(tpm / 60.0, burst_s) if tpm else None
            self._rng = random.Random(seed)
            self._by_status: dict[int, int] = {}
            self._arrivals: list[float] = []
            self._tokens = 0

    def start(self) -> FakeLLMServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-llm")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """``{"requests", "by_status": {"200": n, "429": n, ...}, "arrivals": [monotonic seconds], "tokens"}``."""
        with self._lock:
            return {
                "requests": len(self._arrivals),
                "by_status": {str(k): v for k, v in sorted(self._by_status.items())},
                "arrivals": list(self._arrivals),
                "tokens": self._tokens,
            }

    # ------------------------------------------------------------------------------------------- answering
    def decide(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any], float]:
        """(status, headers, JSON body, seconds to take) for one chat-completions request."""
        raw = body.get("messages")
        messages: list[Any] = raw if isinstance(raw, list) else []
        prompt_chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
        prompt_tokens = max(1, prompt_chars // 4)
        completion_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        if not isinstance(completion_tokens, int) or completion_tokens < 1:
            completion_tokens = 16
        cost = prompt_tokens + completion_tokens
        with self._lock:
            self._n += 1
            rid = f"req_{self._n:06d}"
            self._arrivals.append(time.monotonic())
            headers = {"x-request-id": rid}
            answer = self.script.pop(0) if self.script else self.always
            if answer is not None and answer[0] != 200:
                status, extra, doc = answer
                headers.update(extra)
                self._count(status)
                return status, headers, doc if doc is not None else _error_doc(status), 0.0
            wait = self._req_bucket.take(1) if self._req_bucket else 0.0
            kind = "requests"
            if not wait and self._tok_bucket is not None:
                wait = self._tok_bucket.take(cost)
                kind = "tokens"
                if wait and self._req_bucket is not None:
                    self._req_bucket.level += 1  # refused: the request is not charged either
            if wait:
                self._count(429)
                headers.update(
                    {
                        "retry-after": str(max(1, math.ceil(wait))),
                        "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
                        f"x-ratelimit-remaining-{kind}": "0",
                        f"x-ratelimit-reset-{kind}": f"{max(1, math.ceil(wait * 1000))}ms",
                    }
                )
                return 429, headers, _error_doc(429, kind), 0.0
            if self.error_rate and self._rng.random() < self.error_rate:
                self._count(500)
                return 500, headers, _error_doc(500), self.latency_s
            self._count(200)
            self._tokens += cost
        content = f"answer to {prompt_chars} characters"
        doc = {
            "id": "chatcmpl-" + rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model") or "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": cost,
            },
        }
        return 200, headers, doc, self.latency_s + self.per_token_s * completion_tokens

    def _count(self, status: int) -> None:
        self._by_status[status] = self._by_status.get(status, 0) + 1


_MESSAGES = {
    400: ("invalid_request_error", "Bad request."),
    401: ("invalid_request_error", "Incorrect API key provided."),
    403: ("permission_error", "Forbidden."),
    404: ("invalid_request_error", "The model does not exist."),
    429: ("requests", "Rate limit reached."),
    500: ("server_error", "The server had an error while processing your request."),
    503: ("server_error", "The engine is currently overloaded."),
}


def _answer(one: Sequence[Any]) -> tuple[int, dict[str, str], Any]:
    """``(status, headers)`` or ``(status, headers, body)`` as ``(status, headers, body or None)``."""
    status, headers = one[0], one[1]
    return int(status), {str(k): str(v) for k, v in dict(headers).items()}, one[2] if len(one) > 2 else None


def google_retry_body(delay: str = "3s", model: str = "gemini-2.0-flash") -> dict[str, Any]:
    """The Gemini API's answer to a request over a per-minute quota, as it sends it (with HTTP 429 and no
    Retry-After header): ``RESOURCE_EXHAUSTED``, the quota that was exceeded, a help link, and the delay to wait
    as a ``google.rpc.RetryInfo`` detail (``retryDelay``, a protobuf Duration such as ``"3s"`` or ``"0.5s"``)."""
    return {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details. For more "
            "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                            "quotaDimensions": {"location": "global", "model": model},
                            "quotaValue": "15",
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
            ],
        }
    }


def openai_quota_body() -> dict[str, Any]:
    """OpenAI's answer (with HTTP 429) when the account's credit or spending limit is used up: waiting cannot help."""
    return {
        "error": {
            "message": "You exceeded your current quota, please check your plan and billing details. For more "
            "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }


def _error_doc(status: int, kind: str = "requests") -> dict[str, Any]:
    etype, message = _MESSAGES.get(status, ("server_error", f"HTTP {status}."))
    if status == 429:
        message = f"Rate limit reached for {kind}."
    return {"error": {"message": message, "type": etype, "param": None, "code": None}}


def _handler_for(owner: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: a test or a benchmark reads stats(), not a log

        def _send(self, status: int, headers: dict[str, str], doc: Any) -> None:
            data = json.dumps(doc).encode("utf-8")
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else {}
            except ValueError:
                return None

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/stats":
                self._send(200, {}, owner.stats())
            else:
                self._send(404, {}, _error_doc(404))

        def do_POST(self) -> None:
            body = self._body()
            if self.path.rstrip("/") == "/reset":
                owner.configure(**(body if isinstance(body, dict) else {}))
                self._send(200, {}, {"ok": True})
                return
            if not self.path.startswith("/v1/chat/completions"):
                self._send(404, {}, _error_doc(404))
                return
            if not isinstance(body, dict):
                self._send(400, {}, _error_doc(400))
                return
            status, headers, doc, seconds = owner.decide(body)
            if seconds > 0:
                time.sleep(seconds)
            self._send(status, headers, doc)

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tether.testing.llm_server", description=__doc__)
    parser.add_argument("--rps", type=float, default=None)
    parser.add_argument("--tpm", type=float, default=None)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--per-token", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    server = FakeLLMServer(
        rps=args.rps,
        tpm=args.tpm,
        error_rate=args.error_rate,
        latency_s=args.latency,
        per_token_s=args.per_token,
        seed=args.seed,
    )
    print(json.dumps({"url": server.url}), flush=True)
    try:
        server._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
