"""How the batch runner reads errors: HTTP status, Retry-After, request id, and whether a retry can succeed.

The error shapes are those of the OpenAI/Anthropic SDKs (``status_code``, ``response.headers``, ``request_id``),
Google's (an int ``code`` and a str ``status``), httpx/requests (``response.status_code``), aiohttp (``status``,
``headers``) and urllib's real ``HTTPError``; the integration tests drive the real openai client.
"""

from __future__ import annotations

import asyncio
import email.message
import email.utils
import io
import json
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from tests.unit.checkpoint.ckpt_helpers import journal_records
from tether.checkpoint import CheckpointWarning, RetryAfter, backoff_delay, read_progress, retry_after_of, run_batch
from tether.checkpoint._http import (
    asked_delay,
    failure_fields,
    is_pushback,
    is_transient,
    parse_seconds,
    request_id_of,
    status_of,
)
from tether.errors import CheckpointError


class Response:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.headers = Caseless(headers or {})


class Caseless(dict[str, str]):
    """A case-insensitive header mapping, as httpx.Headers and requests' CaseInsensitiveDict are."""

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.items():
            if k.lower() == key.lower():
                return v
        return default


class APIStatusError(Exception):
    """The shape of openai/anthropic APIStatusError: status_code, response (with headers), request_id."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"Error code: {status}")
        self.response = Response(status, headers)
        self.status_code = status
        self.request_id = self.response.headers.get("x-request-id")


class RateLimitError(APIStatusError):
    pass


class HTTPStatusError(Exception):
    """httpx.HTTPStatusError / requests.HTTPError: the status only on the response."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.response = Response(status, headers)


class GoogleClientError(Exception):
    def __init__(self, code: int, status: str) -> None:
        super().__init__(f"{code} {status}")
        self.code = code
        self.status = status


class APITimeoutError(Exception):
    pass


class RemoteProtocolError(Exception):
    pass


def http_error(status: int, headers: dict[str, str]) -> urllib.error.HTTPError:
    msg = email.message.Message()
    for k, v in headers.items():
        msg[k] = v
    return urllib.error.HTTPError("http://x", status, "status", msg, io.BytesIO(b""))


# ----------------------------------------------------------------------------------------------- status, ids
def test_status_is_read_from_every_client_shape() -> None:
    assert status_of(APIStatusError(429)) == 429
    assert status_of(HTTPStatusError(503)) == 503
    assert status_of(GoogleClientError(429, "RESOURCE_EXHAUSTED")) == 429
    assert status_of(http_error(404, {})) == 404
    assert status_of(KeyError("x")) is None
    assert status_of(ConnectionResetError()) is None


def test_request_id_from_the_attribute_or_the_headers() -> None:
    assert request_id_of(APIStatusError(400, {"x-request-id": "req_1"})) == "req_1"
    assert request_id_of(HTTPStatusError(529, {"request-id": "req_ant"})) == "req_ant"  # Anthropic's header
    assert request_id_of(KeyError("x")) is None
    assert failure_fields(RateLimitError(429, {"x-request-id": "req_9"})) == {
        "error_type": "RateLimitError",
        "status": 429,
        "request_id": "req_9",
    }
    assert failure_fields(KeyError("x")) == {"error_type": "KeyError"}


# ----------------------------------------------------------------------------------------------- Retry-After
def test_retry_after_is_read_from_the_response_headers_of_an_sdk_error() -> None:
    assert retry_after_of(RateLimitError(429, {"retry-after": "7"})) == 7.0
    assert retry_after_of(RateLimitError(429, {"Retry-After": "2.5"})) == 2.5  # any case
    # retry-after-ms is the more precise and wins
    assert retry_after_of(RateLimitError(429, {"retry-after": "1", "retry-after-ms": "250"})) == 0.25
    assert retry_after_of(http_error(429, {"Retry-After": "3"})) == 3.0  # urllib: exc.headers
    assert retry_after_of(RetryAfter(4)) == 4.0


def test_retry_after_as_an_http_date() -> None:
    now = time.time()
    when = email.utils.formatdate(now + 30, usegmt=True)
    asked, where = asked_delay(RateLimitError(429, {"retry-after": when}), now=now)
    assert asked is not None and 29 <= asked <= 31 and when in where


def test_rate_limit_reset_headers_when_there_is_no_retry_after() -> None:
    exc = RateLimitError(
        429,
        {
            "x-ratelimit-remaining-requests": "12",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
        },
    )
    assert retry_after_of(exc) == 360.0  # the exhausted budget (tokens) says when
    assert retry_after_of(RateLimitError(429, {"x-ratelimit-reset-requests": "20ms"})) == pytest.approx(0.02)
    # a reset header on a success-like error is not a request to wait
    assert retry_after_of(APIStatusError(400, {"x-ratelimit-reset-requests": "20ms"})) is None


@pytest.mark.parametrize("garbage", ["soon", "", "NaN", "12 apples", "Wed, 99 Foo 2026"])
def test_garbage_retry_after_is_ignored(garbage: str) -> None:
    assert retry_after_of(RateLimitError(429, {"retry-after": garbage})) is None
    # ... and the wait is an exponential backoff
    assert 0.5 <= backoff_delay(RateLimitError(429, {"retry-after": garbage}), 0, base=1.0, cap=60.0) <= 1.0


def test_parse_seconds_reads_durations_and_iso_times() -> None:
    assert parse_seconds("1h2m3.5s", 0.0, durations=True) == 3723.5
    assert parse_seconds("250ms", 0.0, durations=True) == 0.25
    assert parse_seconds("2026-01-01T00:00:10Z", 1767225600.0) == 10.0  # Anthropic's RFC 3339 resets


def test_zero_negative_and_huge_retry_after_are_bounded() -> None:
    # 0 ("now") and negative fall back to exponential backoff, so a server that insists is not hammered
    for value in ("0", "-5"):
        delays = [backoff_delay(RateLimitError(429, {"retry-after": value}), 1, base=1.0, cap=60.0) for _ in range(50)]
        assert all(1.0 <= d <= 2.0 for d in delays)
    # huge is capped at max_retry_after
    assert backoff_delay(RateLimitError(429, {"retry-after": "86400"}), 0, 1.0, 60.0, max_retry_after=30) <= 33.0


# ----------------------------------------------------------------------------------------------- retryable
@pytest.mark.parametrize(
    "exc",
    [
        RateLimitError(429),
        APIStatusError(529),  # Anthropic overloaded
        APIStatusError(503),
        APIStatusError(500),
        HTTPStatusError(502),
        GoogleClientError(429, "RESOURCE_EXHAUSTED"),
        http_error(503, {}),
        APITimeoutError("Request timed out."),
        RemoteProtocolError("Server disconnected"),
        TimeoutError(),
        ConnectionResetError(),
        urllib.error.URLError(ConnectionRefusedError(111, "refused")),
        RetryAfter(1),
    ],
    ids=repr,
)
def test_what_can_succeed_is_transient(exc: BaseException) -> None:
    assert is_transient(exc) or isinstance(exc, RetryAfter)


@pytest.mark.parametrize(
    "exc",
    [
        APIStatusError(400),
        APIStatusError(401),
        APIStatusError(403),
        HTTPStatusError(404),
        http_error(401, {}),
        GoogleClientError(400, "INVALID_ARGUMENT"),
        KeyError("answer"),
        TypeError("bad"),
        ValueError("bad"),
        urllib.error.URLError("unknown url type: htp"),
    ],
    ids=repr,
)
def test_what_cannot_succeed_is_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_x_should_retry_has_the_last_word() -> None:
    assert not is_transient(APIStatusError(500, {"x-should-retry": "false"}))
    assert is_transient(APIStatusError(400, {"x-should-retry": "true"}))


def test_pushback_is_rate_limit_or_overload() -> None:
    assert is_pushback(RateLimitError(429)) and is_pushback(APIStatusError(529)) and is_pushback(APIStatusError(503))
    assert not is_pushback(APIStatusError(500)) and not is_pushback(TimeoutError())


# ----------------------------------------------------------------------------------------------- the runner
def test_a_programming_error_fails_at_once_and_is_journaled_with_its_type(tmp_path: Path) -> None:
    calls: list[int] = []

    def fn(i: int) -> int:
        calls.append(i)
        raise KeyError("answer")

    summary = run_batch(fn, [1], tmp_path, retries=3, backoff=0.001, progress=False)
    assert calls == [1] and summary.failed == 1 and summary.failed_by == {"KeyError": 1}
    line = journal_records(tmp_path / "results.journal.jsonl")[-1]
    assert line["error_type"] == "KeyError" and line["attempts"] == 1 and "status" not in line


def test_a_client_error_fails_at_once_with_its_status_and_request_id(tmp_path: Path) -> None:
    calls: list[int] = []

    def fn(i: int) -> int:
        calls.append(i)
        raise APIStatusError(400 if i else 401, {"x-request-id": f"req_{i}"})

    summary = run_batch(fn, [0, 1, 2], tmp_path, retries=3, backoff=0.001, progress=False)
    assert sorted(calls) == [0, 1, 2]
    assert summary.failed_by == {"400": 2, "401": 1}
    lines = {r["id"]: r for r in journal_records(tmp_path / "results.journal.jsonl")}
    assert lines[0]["status"] == 401 and lines[0]["request_id"] == "req_0"
    assert lines[0]["error_type"] == "APIStatusError"
    progress = read_progress(tmp_path)
    assert progress is not None and progress["failed"] == 3 and progress["failed_by"] == {"400": 2, "401": 1}


def test_retry_on_overrides_the_judgment(tmp_path: Path) -> None:
    calls: list[int] = []

    def fn(i: int) -> int:
        calls.append(i)
        if len(calls) < 3:
            raise KeyError("flaky")
        return i

    summary = run_batch(fn, [1], tmp_path, retries=3, backoff=0.001, retry_on=(KeyError,), progress=False)
    assert summary.completed == 1 and len(calls) == 3


def test_transient_errors_are_retried_then_journaled_with_the_attempts(tmp_path: Path) -> None:
    calls: list[int] = []

    def fn(i: int) -> int:
        calls.append(i)
        raise RateLimitError(429, {"x-request-id": "req_x"})

    summary = run_batch(fn, [1], tmp_path, retries=2, backoff=0.001, progress=False)
    assert len(calls) == 3 and summary.failed == 1 and summary.pushbacks == 3
    line = journal_records(tmp_path / "results.journal.jsonl")[-1]
    assert (line["status"], line["attempts"], line["request_id"]) == (429, 3, "req_x")


def test_a_huge_retry_after_is_capped_and_said_once(tmp_path: Path) -> None:
    seen: dict[int, int] = {}

    def fn(i: int) -> int:
        seen[i] = seen.get(i, 0) + 1
        if seen[i] == 1:
            raise RateLimitError(429, {"retry-after": "86400"})
        return i

    with pytest.warns(CheckpointWarning, match=r"asked to wait 86400 s .*waiting 0.05 s instead") as record:
        summary = run_batch(fn, [1, 2, 3], tmp_path, concurrency=3, max_retry_after=0.05, progress=False)
    assert summary.completed == 3
    assert len([w for w in record if "86400" in str(w.message)]) == 1


def test_a_negative_retry_after_is_said_once_and_backed_off(tmp_path: Path) -> None:
    seen: dict[int, int] = {}

    def fn(i: int) -> int:
        seen[i] = seen.get(i, 0) + 1
        if seen[i] == 1:
            raise RateLimitError(429, {"retry-after": "-3"})
        return i

    with pytest.warns(CheckpointWarning, match="delay of -3 s") as record:
        summary = run_batch(fn, [1, 2], tmp_path, concurrency=2, backoff=0.001, progress=False)
    assert summary.completed == 2 and len(record) == 1


def test_adaptive_concurrency_settles_where_the_provider_stops_pushing_back(tmp_path: Path) -> None:
    """A provider that takes 4 calls at once and refuses the rest: the window drops from 16 and settles near 4."""
    state = {"in_flight": 0}

    async def fn(i: int) -> int:
        state["in_flight"] += 1
        try:
            if state["in_flight"] > 4:
                raise RateLimitError(429)  # no Retry-After: the window alone must adapt
            await asyncio.sleep(0.005)
            return i
        finally:
            state["in_flight"] -= 1

    options: dict[str, Any] = {"concurrency": 16, "retries": 8, "backoff": 0.002, "progress": False}
    adaptive = run_batch(fn, range(200), tmp_path / "a", **options)
    assert adaptive.completed == 200 and adaptive.failed == 0
    assert adaptive.min_concurrency <= 5 and adaptive.concurrency <= 6
    fixed = run_batch(fn, range(200), tmp_path / "f", adaptive=False, **options)
    assert fixed.min_concurrency == fixed.concurrency == 16


def test_tpm_budget_paces_calls_by_their_cost(tmp_path: Path) -> None:
    starts: list[float] = []

    async def fn(i: int) -> int:
        starts.append(time.monotonic())
        return i

    # 600 tokens a minute = 10 a second; items cost 5 tokens: at most one bucket (10 tokens) at once, then 2/s
    run_batch(fn, list(range(6)), tmp_path, concurrency=6, tpm=600, cost=lambda i: 5, progress=False)
    assert len(starts) == 6
    assert starts[-1] - starts[0] >= 4 * 0.5 - 0.01  # 2 from the full bucket, then one per 0.5 s


def test_cost_without_tpm_and_a_bad_cost_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cost= is given but tpm= is not"):
        run_batch(lambda i: i, [1], tmp_path, cost=lambda i: 1, progress=False)
    with pytest.raises(CheckpointError, match="cost\\(\\) returned -1"):
        run_batch(lambda i: i, [1], tmp_path, tpm=100, cost=lambda i: -1, progress=False)
    with pytest.raises(CheckpointError, match="tpm must be a positive number"):
        run_batch(lambda i: i, [1], tmp_path, tpm=0, progress=False)


def test_a_client_that_retries_by_itself_is_warned_about_once(tmp_path: Path) -> None:
    class Client:
        max_retries = 2

        def with_options(self, **kw: Any) -> Client:
            new = Client()
            new.max_retries = kw["max_retries"]
            return new

    client = Client()

    def fn(i: int) -> int:
        assert client is not None
        return i

    with pytest.warns(CheckpointWarning, match=r"'client' retries by itself \(max_retries=2\).*up to 12 calls"):
        run_batch(fn, [1, 2], tmp_path / "a", progress=False)

    from tether.checkpoint import without_sdk_retries

    quiet = without_sdk_retries(client)

    def fn2(i: int) -> int:
        assert quiet is not None
        return i

    run_batch(fn2, [1, 2], tmp_path / "b", progress=False)  # no warning (warnings are errors here)
    assert quiet.max_retries == 0
    with pytest.raises(CheckpointError, match="Cannot turn off the retries of a object"):
        without_sdk_retries(object())


def test_failed_by_survives_a_resume(tmp_path: Path) -> None:
    def fn(i: int) -> int:
        raise APIStatusError(400)

    run_batch(fn, [1, 2], tmp_path, progress=False)
    from tether.checkpoint import Checkpoint

    with Checkpoint(tmp_path) as ck:
        assert ck.failed_by == {"400": 2}
    assert json.loads((tmp_path / "results.progress.json").read_text())["failed_by"] == {"400": 2}
