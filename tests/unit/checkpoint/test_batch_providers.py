"""What the three SDKs say beyond headers: Google's RetryInfo delay in the error body, a google-genai client built
with its own retries, OpenAI's ``insufficient_quota``; and the progress line while a provider refuses every call.

The SDK errors are duck-typed fakes with the SDKs' own attribute names and the bodies the APIs send
(``tether.testing.llm_server`` builds them); waits are read from a recording clock, never from the wall clock.
The same behaviours over real HTTP are in tests/integration/checkpoint/test_batch_provider_bodies.py.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.unit.checkpoint.ckpt_helpers import (
    GenaiClient,
    GenaiClientError,
    HttpOptions,
    HttpRetryOptions,
    RecordingClock,
    journal_records,
)
from tether.checkpoint import BatchSummary, CheckpointWarning, arun_batch, without_sdk_retries
from tether.checkpoint._http import asked_delay, is_pushback, is_transient, quota_exhausted
from tether.checkpoint.batch import _Refusals, genai_retries
from tether.errors import CheckpointError
from tether.testing.llm_server import google_retry_body, openai_quota_body


def rate_limited(delay: str = "3s") -> GenaiClientError:
    """What google-genai raises for the Gemini API's 429: the body holds the delay, no header does."""
    response = httpx.Response(429, json=google_retry_body(delay), request=httpx.Request("POST", "https://g.test/"))
    return GenaiClientError(429, response.json(), response)


class OpenAIRateLimitError(Exception):
    """openai's RateLimitError: ``status_code``, ``code`` (from the body), ``body`` (the inner ``error`` object),
    ``response`` with its headers, ``request_id``."""

    def __init__(self, body: Any) -> None:
        super().__init__(f"Error code: 429 - {body}")
        self.response = httpx.Response(429, json={"error": body}, headers={"x-request-id": "req_q"})
        self.status_code = 429
        self.request_id = "req_q"
        self.body = body
        code = body.get("code") if isinstance(body, dict) else None
        self.code = str(code) if code is not None else None
        self.type = body.get("type") if isinstance(body, dict) else None


def quota_error() -> OpenAIRateLimitError:
    return OpenAIRateLimitError(openai_quota_body()["error"])


def run(fn: Any, items: list[Any], path: Path, clock: RecordingClock | None = None, **options: Any) -> BatchSummary:
    options.setdefault("progress", False)
    return asyncio.run(arun_batch(fn, items, path, clock=clock or RecordingClock(), **options))


# ---- RetryInfo ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "seconds"), [("3s", 3.0), ("0.5s", 0.5), ("1.200s", 1.2), ("56.123456789s", 56.123456789)]
)
def test_the_retry_info_delay_is_read_from_a_genai_error(delay: str, seconds: float) -> None:
    exc = rate_limited(delay)
    asked, where = asked_delay(exc)
    assert asked == pytest.approx(seconds) and where == f"RetryInfo retryDelay {delay}"
    assert is_pushback(exc) and is_transient(exc)
    assert quota_exhausted(exc) is None  # Google's "You exceeded your current quota" is a rate limit: waited for


def test_the_retry_info_is_read_in_each_form_of_the_body() -> None:
    inner = google_retry_body("2s")["error"]
    for body in (inner, [google_retry_body("2s")]):  # the inner object (a replayed answer), a list (a stream)
        assert asked_delay(GenaiClientError(429, {}))[0] is None
        exc = GenaiClientError(429, {})
        exc.details = body
        assert asked_delay(exc)[0] == 2.0
    proto = {
        "error": {
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": {"seconds": "2", "nanos": 500000000},
                }
            ]
        }
    }
    assert asked_delay(GenaiClientError(429, proto))[0] == 2.5
    plain = httpx.Response(429, json=google_retry_body("4s"), request=httpx.Request("POST", "https://g.test/"))
    assert asked_delay(httpx.HTTPStatusError("429", request=plain.request, response=plain))[0] == 4.0


def test_a_retry_after_header_is_read_before_the_body() -> None:
    response = httpx.Response(429, json=google_retry_body("3s"), headers={"retry-after": "7"})
    assert asked_delay(GenaiClientError(429, response.json(), response)) == (7.0, "retry-after: 7")


def test_the_batch_waits_the_retry_info_delay_not_its_own_backoff(tmp_path: Path) -> None:
    calls: list[int] = []

    def ask(item: int) -> str:
        calls.append(item)
        if len(calls) <= 2:
            raise rate_limited("3s")
        return "ok"

    clock = RecordingClock()
    summary = run(ask, [1], tmp_path, clock, backoff=0.01, max_backoff=0.01)
    assert summary.completed == 1 and summary.calls == 3 and summary.pushbacks == 2
    assert len(clock.waits) == 2  # the two retries' waits; the hold on new calls had passed by then
    assert all(3.0 <= w <= 3.3 for w in clock.waits)  # 3 s plus up to 10 %, never the 0.01 s backoff


def test_a_retry_info_delay_holds_every_new_call_too(tmp_path: Path) -> None:
    first = [True]

    async def ask(item: int) -> int:
        if first[0]:
            first[0] = False
            raise rate_limited("5s")
        return item

    clock = RecordingClock()
    summary = run(ask, [1, 2, 3], tmp_path, clock, concurrency=1)
    assert summary.completed == 3 and summary.calls == 4
    assert clock.now - 1000.0 >= 5.0 and all(w >= 5.0 for w in clock.waits)


# ---- google-genai clients that retry by themselves --------------------------------------------------------------


def test_genai_retries_are_read_from_the_options_the_client_was_built_with() -> None:
    assert genai_retries(GenaiClient()) == 0  # no retry_options: the SDK does not retry
    assert genai_retries(GenaiClient(HttpOptions(HttpRetryOptions()))) == 4  # attempts unset: 5
    assert genai_retries(GenaiClient(HttpOptions(HttpRetryOptions(attempts=3)))) == 2
    assert genai_retries(GenaiClient(HttpOptions(HttpRetryOptions(attempts=1)))) == 0
    client = GenaiClient(HttpOptions(HttpRetryOptions(attempts=3)))
    assert genai_retries(client.aio) == genai_retries(client.models) == genai_retries(client.aio.models) == 2
    assert genai_retries(object()) is None and genai_retries(httpx.Client()) is None


@pytest.mark.parametrize("where", ["client", "client.aio", "client.models"])
def test_a_genai_client_built_with_its_own_retries_is_warned_about_once(where: str, tmp_path: Path) -> None:
    client = GenaiClient(HttpOptions(HttpRetryOptions()))
    used = {"client": client, "client.aio": client.aio, "client.models": client.models}[where]

    def ask(item: int) -> Any:
        return (used, item)[1]

    with pytest.warns(CheckpointWarning, match=r"'used' retries by itself \(HttpRetryOptions: 5 attempts\)") as w:
        run(ask, [1, 2], tmp_path)
    assert len(w) == 1
    text = str(w[0].message)
    assert "up to 20 calls" in text and "HttpRetryOptions(attempts=1)" in text


@pytest.mark.parametrize("options", [None, HttpOptions(), HttpOptions(HttpRetryOptions(attempts=1))])
def test_a_genai_client_without_retries_is_not_warned_about(options: HttpOptions | None, tmp_path: Path) -> None:
    client = GenaiClient(options)

    def ask(item: int) -> Any:
        return (client, item)[1]

    assert run(ask, [1], tmp_path).completed == 1  # a warning would fail here (warnings are errors)


def test_without_sdk_retries_says_how_to_build_a_genai_client() -> None:
    with pytest.raises(CheckpointError, match=r"no with_options\(\)") as info:
        without_sdk_retries(GenaiClient(HttpOptions(HttpRetryOptions())))
    assert "HttpRetryOptions(attempts=1)" in (info.value.hint or "")


# ---- insufficient_quota --------------------------------------------------------------------------------------------


def test_a_used_up_quota_is_told_from_a_rate_limit() -> None:
    assert quota_exhausted(quota_error()) == openai_quota_body()["error"]["message"][:300]
    assert not is_transient(quota_error())
    whole = OpenAIRateLimitError(openai_quota_body())  # a body kept whole, with its "error" object
    whole.code = None
    assert quota_exhausted(whole) is not None
    plain = httpx.Response(429, json=openai_quota_body(), request=httpx.Request("POST", "https://o.test/"))
    assert quota_exhausted(httpx.HTTPStatusError("429", request=plain.request, response=plain)) is not None
    limited = OpenAIRateLimitError({"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"})
    assert quota_exhausted(limited) is None and is_transient(limited)


def test_a_used_up_quota_stops_the_batch_at_once_and_keeps_what_finished(tmp_path: Path) -> None:
    calls: list[int] = []

    def ask(item: int) -> int:
        calls.append(item)
        if len(calls) > 2:
            raise quota_error()
        return item * 10

    with pytest.raises(CheckpointError) as info:
        run(ask, list(range(10)), tmp_path, retries=5, retry_on=(Exception,))  # retry_on cannot make it retry
    assert calls == [0, 1, 2]  # the item that met it was not retried, and no other item was called
    message = info.value.message
    assert message.startswith("The provider refused a call because the account's quota is used up")
    assert "OpenAIRateLimitError 429 insufficient_quota: 'You exceeded your current quota" in message
    assert "2 of 10 items done and kept in the journal" in message
    assert "Billing" in (info.value.hint or "")
    records = journal_records(tmp_path / "results.journal.jsonl")
    assert [(r["id"], r["ok"]) for r in records] == [(0, True), (1, True), (2, False)]
    assert records[2]["status"] == 429 and records[2]["attempts"] == 1 and records[2]["request_id"] == "req_q"
    assert not (tmp_path / "results.json").exists()

    summary = run(lambda item: item * 10, list(range(10)), tmp_path)  # credit added: it resumes
    assert (summary.skipped, summary.completed, summary.failed) == (2, 8, 0) and summary.final_path is not None


def test_calls_in_flight_when_the_quota_runs_out_are_the_last(tmp_path: Path) -> None:
    calls: list[int] = []

    async def ask(item: int) -> int:
        calls.append(item)
        await asyncio.sleep(0)  # in flight together: each of the four meets the used-up quota
        raise quota_error()

    with pytest.raises(CheckpointError, match="0 of 20 items done"):
        run(ask, list(range(20)), tmp_path, concurrency=4)
    assert len(calls) == 4
    assert len(journal_records(tmp_path / "results.journal.jsonl")) == 4  # the 16 others are pending, not failed

    calls.clear()  # under rpm the three others wait for their turn: when it comes, the quota is known to be used up
    with pytest.raises(CheckpointError, match="0 of 20 items done"):
        run(ask, list(range(20)), tmp_path / "rpm", concurrency=4, rpm=600)
    assert calls == [0]


class ServerError(Exception):
    status_code = 500


class PatientClock(RecordingClock):
    """Its waits let the other calls of the batch run first (a recording clock's pass at once)."""

    async def sleep(self, seconds: float) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        await super().sleep(seconds)


def test_a_retry_waiting_when_the_quota_runs_out_is_not_made(tmp_path: Path) -> None:
    calls: list[int] = []

    async def ask(item: int) -> int:
        calls.append(item)
        if item == 0:
            raise ServerError()  # item 0 backs off 30 s before its retry...
        await asyncio.sleep(0)
        raise quota_error()  # ...while item 1 meets the used-up quota

    clock = PatientClock()
    with pytest.raises(CheckpointError, match="insufficient_quota"):
        run(ask, [0, 1, 2], tmp_path, clock, concurrency=2, backoff=30.0, max_backoff=30.0)
    assert calls == [0, 1] and len(clock.waits) == 1
    failed = {r["id"]: r["status"] for r in journal_records(tmp_path / "results.journal.jsonl")}
    assert failed == {0: 500, 1: 429}  # item 0 keeps the error it had


# ---- the progress line while the provider refuses --------------------------------------------------------------


def test_the_refusing_text() -> None:
    r = _Refusals()
    assert r.text(0.0) is None
    for _ in range(10):
        r.refused("429", 3.1)
    r.refused("503", 1.0)
    r.refused("503", 2.0)
    assert r.text(0.0) == "provider refusing: waiting 3 s (429 \u00d710, 503 \u00d72)"
    assert r.text(2.7) == "provider refusing: waiting 0.4 s (429 \u00d710, 503 \u00d72)"
    assert r.text(3.2) == "provider refusing: asking again (429 \u00d710, 503 \u00d72)"
    assert r.accepted() and r.text(0.0) is None and not r.accepted()


def refused_twelve_times(tmp_path: Path) -> BatchSummary:
    calls: list[int] = []

    def ask(item: int) -> str:
        calls.append(item)
        if len(calls) <= 12:
            raise rate_limited("3s")
        return "ok"

    return run(ask, [1], tmp_path, progress=True, retries=12)


def test_the_bar_says_the_provider_refuses_then_clears(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = refused_twelve_times(tmp_path)
    assert summary.completed == 1 and summary.pushbacks == 12
    frames = [f for f in capsys.readouterr().err.split("\r") if f.strip()]
    refusing = [f for f in frames if "provider refusing" in f]
    assert any("provider refusing: waiting 3 s (429 \u00d71)" in f for f in refusing)
    assert any("provider refusing: waiting 3 s (429 \u00d712)" in f for f in refusing)
    assert all("it/s" not in f and "item/s" not in f for f in refusing)  # no frozen rate beside it
    assert "refusing" not in frames[-1] and "1/1" in frames[-1]  # cleared by the accepted call


def test_the_plain_line_says_the_provider_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # no tqdm: the plain line writer
    refused_twelve_times(tmp_path)
    lines = capsys.readouterr().err.splitlines()
    assert "results: 0/1 done, 0 failed, provider refusing: waiting 3 s (429 \u00d712)" in lines
    assert lines[-1].startswith("results: 1/1 done, 0 failed, ") and "refusing" not in lines[-1]
