"""One item's exception fails one item: hostile errors and results never end the whole batch.

Each case makes the middle item of three fail in a way that used to raise out of ``run_batch`` (and so end the
batch): an SDK error whose ``.headers``/``.response`` raise, a real ``httpx.ReadTimeout`` made without a request,
an exception whose ``__str__`` raises, ``retry_after=10**400``, a sync item function raising ``StopIteration``
(which a future cannot carry: the batch waited for it forever), a result nested 100k deep, a result whose own
code raises while it is serialized. Each time the other two items complete, the bad one is journaled as failed
with its error type, and the journal and the final results file stay valid JSON.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.checkpoint import Checkpoint, CheckpointWarning, RetryAfter, run_batch
from tether.checkpoint._http import (
    asked_delay,
    describe,
    failure_fields,
    is_transient,
    quota_exhausted,
    sdk_retries_taken,
)
from tether.errors import CheckpointError


class HeadersRaise(Exception):
    """An SDK error whose response and headers are properties that raise (a lazily-read, closed response)."""

    status_code = 429

    @property
    def headers(self) -> Any:
        raise RuntimeError("the response was closed")

    @property
    def response(self) -> Any:
        raise RuntimeError("the response was closed")


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("cannot render this error")

    def __repr__(self) -> str:
        raise RuntimeError("nor this")


class RateLimitError(Exception):
    """A rate limit asking for a delay far beyond a float: 10**400 seconds."""

    retry_after = 10**400


class Exploding(dict[str, Any]):
    """A result whose own code raises while it is serialized."""

    def items(self) -> Any:
        raise RuntimeError("a result that cannot be read")


def deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def raise_(exc: BaseException) -> Callable[[], Any]:
    def go() -> Any:
        raise exc

    return go


# name -> (what the bad item does, the error type its failure is journaled with)
CASES: dict[str, tuple[Callable[[], Any], str]] = {
    "headers-raise": (lambda: raise_(HeadersRaise())(), "HeadersRaise"),
    "readtimeout-without-request": (lambda: raise_(httpx.ReadTimeout("timed out"))(), "ReadTimeout"),
    "str-raises": (lambda: raise_(StrRaises())(), "StrRaises"),
    "retry-after-10**400": (lambda: raise_(RateLimitError())(), "RateLimitError"),
    "RetryAfter(10**400)": (lambda: raise_(RetryAfter(10**400))(), "RetryAfter"),
    "stopiteration": (lambda: raise_(StopIteration())(), "StopIteration"),
    "result-100k-deep": (lambda: deep(100_000), "CheckpointError"),
    "result-raises-when-serialized": (lambda: Exploding(a=1), "CheckpointError"),
}


def journal_lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.split(b"\n")[1:-1]]


@pytest.mark.parametrize("case", list(CASES))
def test_one_hostile_item_fails_alone(case: str, tmp_path: Path) -> None:
    bad, error_type = CASES[case]

    def fn(item: str) -> Any:
        return bad() if item == "bad" else {"answer": item.upper()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)  # "waiting 0.01 s instead" is said, and expected
        summary = run_batch(
            fn,
            ["a", "bad", "b"],
            tmp_path,
            progress=False,
            retries=1,
            backoff=0.001,
            max_backoff=0.001,
            max_retry_after=0.01,
            finalize=False,
        )
    assert (summary.completed, summary.failed) == (2, 1)
    lines = journal_lines(tmp_path / "results.journal.jsonl")
    assert {line["id"] for line in lines if line["ok"]} == {"a", "b"}
    failures = [line for line in lines if not line["ok"]]
    assert [(f["id"], f["error_type"]) for f in failures] == [("bad", error_type)]
    assert isinstance(failures[0]["error"], str) and failures[0]["error"]
    assert summary.failed_by == {("429" if case == "headers-raise" else error_type): 1}

    with Checkpoint(tmp_path) as ck:  # the journal still opens, and the final file is valid JSON
        final = ck.finalize(order=["a", "bad", "b"], allow_failures=True)
    doc = json.loads(final.read_text())
    assert doc["completed"] == 2 and doc["failed"] == 1
    assert doc["results"] == [{"answer": "A"}, {"answer": "B"}]


def test_deep_result_failure_names_the_recursion(tmp_path: Path) -> None:
    summary = run_batch(lambda item: deep(100_000), ["x"], tmp_path, progress=False, finalize=False)
    assert summary.failed == 1
    (failure,) = journal_lines(tmp_path / "results.journal.jsonl")
    assert "not JSON-serializable" in failure["error"] and "RecursionError" in failure["error"]


def test_reading_a_hostile_error_never_raises() -> None:
    """The readers themselves, on the worst shapes: each answers, none raises."""
    timeout = httpx.ReadTimeout("timed out")  # .request raises RuntimeError: it was made without one
    assert sdk_retries_taken(timeout) is None and is_transient(timeout)
    assert failure_fields(HeadersRaise()) == {"error_type": "HeadersRaise", "status": 429}
    assert asked_delay(HeadersRaise()) == (None, "")
    assert describe(StrRaises()) == "StrRaises: <unprintable StrRaises>"
    seconds, where = asked_delay(RateLimitError())
    assert seconds == float("inf") and len(where) < 60
    assert asked_delay(type("Past", (Exception,), {"retry_after": -(10**400)})())[0] == float("-inf")


def test_a_result_too_deep_to_read_back_fails_alone(tmp_path: Path) -> None:
    """A result nested 600 deep serializes when recorded from a shallow stack, but the journal holding it could
    not be read back from a deeper one (json's recursion limit): every later resume failed. It is refused at
    record instead, and the journal opens from a stack with less room left than that."""
    summary = run_batch(
        lambda item: deep(600) if item == "bad" else {"answer": item},
        ["a", "bad", "b"],
        tmp_path,
        progress=False,
        finalize=False,
    )
    assert (summary.completed, summary.failed) == (2, 1)
    failure = [line for line in journal_lines(tmp_path / "results.journal.jsonl") if not line["ok"]]
    assert "nested more than 400 deep" in failure[0]["error"]

    def reopen(frames: int) -> Path:
        if frames:
            return reopen(frames - 1)
        with Checkpoint(tmp_path) as ck:
            return ck.finalize(order=["a", "bad", "b"], allow_failures=True)

    room = sys.getrecursionlimit() - len(inspect.stack(0))
    final = reopen(room - 550)  # 550 frames left: not enough to read a 600-deep line
    assert json.loads(final.read_text())["results"] == [{"answer": "a"}, {"answer": "b"}]


def test_a_journal_line_too_deep_to_read_is_named(tmp_path: Path) -> None:
    """A journal an older tether wrote with a result too deep to read: opening it names the line (a
    CheckpointError, said as one sentence), instead of a RecursionError out of the library."""
    run_batch(lambda item: item, ["a"], tmp_path, progress=False, finalize=False)
    journal = tmp_path / "results.journal.jsonl"
    with journal.open("a") as fh:
        fh.write('{"id":"b","ok":true,"result":' + "[" * 5000 + "]" * 5000 + "}\n")
    with pytest.raises(CheckpointError, match="line 3 is corrupt \\(nested too deep to read\\)"):
        Checkpoint(tmp_path).__enter__()


def test_an_async_item_raising_cancelled_error_fails_alone(tmp_path: Path) -> None:
    """An async item whose own code lets a CancelledError out (a leaked timeout) used to end the batch: the
    batch had not cancelled it, so it is that item's failure."""

    async def fn(item: str) -> Any:
        if item == "bad":
            raise asyncio.CancelledError()
        await asyncio.sleep(0)
        return {"answer": item}

    summary = run_batch(fn, ["a", "bad", "b"], tmp_path, progress=False, finalize=False)
    assert (summary.completed, summary.failed, summary.failed_by) == (2, 1, {"CancelledError": 1})


def test_an_item_that_cannot_be_measured_for_tpm_does_not_end_the_batch(tmp_path: Path) -> None:
    """With ``tpm`` and no ``cost``, an item's cost is its JSON length: an item nested too deep (or whose own code
    raises when printed) used to end the batch there. Its printed length stands in."""
    items: list[Any] = ["a", deep(100_000), "b"]
    summary = run_batch(
        lambda item: "ok",
        items,
        tmp_path,
        key=lambda item: item if isinstance(item, str) else "deep",
        tpm=10**9,
        progress=False,
        finalize=False,
    )
    assert (summary.completed, summary.failed) == (3, 0)


class BodyError(Exception):
    """An error whose body is whatever a test gives it: in google-genai's ``details`` and openai's ``body``."""

    status_code = 429

    def __init__(self, body: Any) -> None:
        super().__init__("429")
        self.details = body
        self.body = body


class RaisingMapping(dict[str, Any]):
    """A body whose own code raises when read."""

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("a body that cannot be read")


def retry_info(delay: Any) -> dict[str, Any]:
    return {
        "error": {"code": 429, "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}
    }


HOSTILE_BODIES: dict[str, Any] = {
    "delay-garbage": retry_info("soon"),
    "delay-negative": retry_info("-3s"),
    "delay-number": retry_info(3),
    "delay-none": retry_info(None),
    "delay-nan": retry_info("nans"),
    "delay-minutes": retry_info("1m"),
    "delay-list": retry_info(["3s"]),
    "delay-object-garbage": retry_info({"seconds": "x", "nanos": []}),
    "delay-object-huge": retry_info({"seconds": 10**400}),
    "details-not-a-list": {"error": {"details": "RetryInfo 3s"}},
    "details-of-strings": {"error": {"details": ["google.rpc.RetryInfo", "3s"]}},
    "error-a-string": {"error": "insufficient_quota"},
    "body-a-string": "You exceeded your current quota",
    "body-not-json": '{"error": {"details": [',
    "body-json-too-deep": "[" * 30_000 + "]" * 30_000,  # RecursionError
    "body-raises": RaisingMapping(error={"code": "insufficient_quota"}),
    "inner-raises": {"error": RaisingMapping(code="insufficient_quota")},
    "code-a-number": {"error": {"code": 429, "type": None}},
    "body-none": None,
}


@pytest.mark.parametrize("case", list(HOSTILE_BODIES))
def test_a_hostile_error_body_is_read_as_absent(case: str) -> None:
    exc = BodyError(HOSTILE_BODIES[case])
    assert asked_delay(exc) == (None, "")
    assert quota_exhausted(exc) is None
    assert is_transient(exc)  # a 429 whose body says nothing readable: a rate limit, retried


def test_a_hostile_body_on_a_response_is_read_as_absent() -> None:
    class Response:
        status_code = 429

        @property
        def content(self) -> bytes:
            raise RuntimeError("the stream was closed")

        text = "x" * 100_000  # too long to be parsed

    class SDKError(Exception):
        response = Response()

    assert asked_delay(SDKError()) == (None, "") and quota_exhausted(SDKError()) is None


def test_a_hostile_body_fails_its_item_alone(tmp_path: Path) -> None:
    def fn(item: str) -> str:
        if item == "bad":
            raise BodyError(HOSTILE_BODIES["inner-raises"])
        return item

    summary = run_batch(fn, ["a", "bad", "b"], tmp_path, progress=False, retries=1, backoff=0.001, finalize=False)
    assert (summary.completed, summary.failed) == (2, 1) and summary.failed_by == {"429": 1}
