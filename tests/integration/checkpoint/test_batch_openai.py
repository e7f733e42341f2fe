"""The batch runner with the real ``openai.AsyncOpenAI`` client against a loopback chat-completions server.

Each bad answer a provider can give: a Retry-After of 0, negative, huge, an HTTP date, garbage; a 401; a server
that always answers 429. The server (``tether.testing.llm_server``) is real HTTP; the client is the real SDK.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.unit.checkpoint.ckpt_helpers import journal_records
from tether.checkpoint import BatchSummary, CheckpointWarning, arun_batch, read_progress, without_sdk_retries
from tether.testing.llm_server import FakeLLMServer


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


def batch(url: str, items: Any, path: Path, *, max_retries: int = 0, **options: Any) -> BatchSummary:
    """``arun_batch`` over ``items`` asking the real SDK client one question each; the client is closed after."""

    async def main() -> BatchSummary:
        async with openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=max_retries, timeout=30) as client:
            holder = {"client": client}  # not a name the item function refers to: only the runtime check sees it

            async def ask(item: int) -> str:
                resp = await holder["client"].chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"question {item}"}], max_tokens=5
                )
                return resp.choices[0].message.content or ""

            return await arun_batch(ask, items, path, progress=False, **options)

    return asyncio.run(main())


def gaps(srv: FakeLLMServer) -> list[float]:
    return [b - a for a, b in itertools.pairwise(srv.stats()["arrivals"])]


def test_retry_after_zero_is_retried_after_a_backoff_not_at_once(server: FakeLLMServer, tmp_path: Path) -> None:
    server.configure(script=[(429, {"retry-after": "0"})])
    summary = batch(server.url, [1], tmp_path, backoff=0.2)
    assert summary.completed == 1 and server.stats()["by_status"] == {"200": 1, "429": 1}
    assert gaps(server)[0] >= 0.1  # the first backoff is between half the base and all of it


def test_negative_retry_after_is_said_once_and_backed_off(server: FakeLLMServer, tmp_path: Path) -> None:
    server.configure(script=[(429, {"retry-after": "-5"}), (429, {"retry-after": "-5"})])
    with pytest.warns(CheckpointWarning, match=r"RateLimitError asked for a delay of -5 s \(retry-after: -5\)") as w:
        summary = batch(server.url, [1, 2], tmp_path, backoff=0.05)
    assert summary.completed == 2 and len(w) == 1


def test_huge_retry_after_is_capped_and_said_once(server: FakeLLMServer, tmp_path: Path) -> None:
    server.configure(script=[(429, {"retry-after": "86400"})] * 2)
    with pytest.warns(CheckpointWarning, match=r"asked to wait 86400 s .* waiting 0.3 s instead") as w:
        summary = batch(server.url, [1, 2], tmp_path, max_retry_after=0.3)
    assert summary.completed == 2 and len(w) == 1
    assert server.stats()["by_status"] == {"200": 2, "429": 2}
    assert max(gaps(server)) >= 0.3  # the capped wait was waited


def test_http_date_retry_after_is_honoured(server: FakeLLMServer, tmp_path: Path) -> None:
    # A minute away: still ahead when the answer is read, however slow this machine (a date a second or two away
    # may have passed by then); the cap makes the wait short and the warning says what the date asked for.
    when = email.utils.formatdate(time.time() + 60, usegmt=True)
    server.configure(script=[(429, {"retry-after": when})])
    with pytest.warns(CheckpointWarning, match=r"asked to wait \d+(\.\d+)? s .* waiting 0.3 s instead"):
        summary = batch(server.url, [1], tmp_path, backoff=0.01, max_retry_after=0.3)
    assert summary.completed == 1
    assert gaps(server)[0] >= 0.3  # not the 0.01 s backoff: the date was read (a sleep never ends early)


def test_garbage_retry_after_is_ignored(server: FakeLLMServer, tmp_path: Path) -> None:
    server.configure(script=[(429, {"retry-after": "soon, maybe"})])
    summary = batch(server.url, [1], tmp_path, backoff=0.2)
    assert summary.completed == 1 and gaps(server)[0] >= 0.1  # an exponential backoff instead


def test_a_401_fails_at_once_with_the_status_in_the_journal(server: FakeLLMServer, tmp_path: Path) -> None:
    server.configure(always=(401, {}))
    summary = batch(server.url, [1, 2, 3], tmp_path, concurrency=3, retries=3, backoff=0.01)
    assert summary.failed == 3 and summary.calls == 3 and server.stats()["requests"] == 3  # never retried
    for line in journal_records(tmp_path / "results.journal.jsonl"):
        assert line["status"] == 401 and line["error_type"] == "AuthenticationError" and line["attempts"] == 1
        assert line["request_id"].startswith("req_")
    progress = read_progress(tmp_path)
    assert progress is not None and progress["failed_by"] == {"401": 3}
    assert not (tmp_path / "results.json").exists()


def test_a_server_that_always_answers_429_ends_in_failures_within_rpm(server: FakeLLMServer, tmp_path: Path) -> None:
    server.configure(always=(429, {"retry-after": "0"}))
    # adaptive=False: four calls in flight at once the whole time (the window would shrink to one), so the rpm
    # limiter alone keeps the pace
    summary = batch(server.url, [1, 2, 3, 4], tmp_path, concurrency=4, adaptive=False, rpm=300, retries=2, backoff=0.01)
    assert summary.failed == 4 and summary.completed == 0 and summary.failed_by == {"429": 4}
    stats = server.stats()
    assert stats["requests"] == 12  # 3 calls per item, no more: no busy loop
    arrivals = stats["arrivals"]
    busiest = max(sum(1 for u in arrivals if t <= u < t + 1.0) for t in arrivals)
    assert busiest <= 6  # 300 per minute is 5 a second, retries included (+1: a window holds both its ends)
    assert {r["attempts"] for r in journal_records(tmp_path / "results.journal.jsonl")} == {3}


def test_sdk_retries_under_tether_are_said_once(server: FakeLLMServer, tmp_path: Path) -> None:
    server.configure(script=[(500, {})] * 3)
    with pytest.warns(CheckpointWarning, match="retried this call 2 times by itself") as w:
        summary = batch(server.url, [1, 2], tmp_path, backoff=0.01, max_retries=2)
    assert summary.completed == 2 and len(w) == 1


def test_a_client_in_the_closure_that_retries_is_seen_before_any_call(server: FakeLLMServer, tmp_path: Path) -> None:
    async def main(quiet: bool) -> BatchSummary:
        async with openai.AsyncOpenAI(base_url=server.url, api_key="k") as client:  # the SDK default: max_retries=2
            if quiet:
                client = without_sdk_retries(client)

            async def ask(item: int) -> str:
                resp = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
                return resp.choices[0].message.content or ""

            return await arun_batch(ask, [1], tmp_path / str(quiet), progress=False)

    with pytest.warns(CheckpointWarning, match=r"'client' retries by itself \(max_retries=2\)"):
        asyncio.run(main(quiet=False))
    summary = asyncio.run(main(quiet=True))  # no warning now (warnings are errors here)
    assert summary.completed == 1


def test_adaptive_concurrency_shrinks_under_pushback_and_a_fixed_one_does_not(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    # Counts only: the provider refuses exactly the first eight calls, whatever the pace of this machine (how many
    # calls a rate limit refuses depends on timing; bench/ratelimit.py prints that ratio). Eight retries: no item
    # can run out of them, however the refusals fall.
    for adaptive in (True, False):
        server.configure(script=[(429, {"retry-after": "0"})] * 8)
        summary = batch(
            server.url, range(60), tmp_path / str(adaptive), concurrency=32, adaptive=adaptive, backoff=0.01, retries=8
        )
        assert summary.completed == 60 and summary.failed == 0
        assert summary.pushbacks == server.stats()["by_status"]["429"] == 8
        if adaptive:
            assert summary.min_concurrency < 32
        else:
            assert summary.min_concurrency == summary.concurrency == 32
