"""What providers say in their error bodies, over real HTTP against the loopback chat-completions server.

The Gemini API's 429 carries its delay in a ``google.rpc.RetryInfo`` detail of the body (no header): read from a
google-genai-shaped error made from the real response (the SDK is not installed; the error is built the way it
builds its own) and from a plain ``httpx.HTTPStatusError``. OpenAI's 429 ``insufficient_quota`` through the real
``openai.AsyncOpenAI`` client stops the batch. Waits are read from a recording clock, not the wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.unit.checkpoint.ckpt_helpers import GenaiClientError, RecordingClock, journal_records
from tether.checkpoint import BatchSummary, arun_batch
from tether.errors import CheckpointError
from tether.testing.llm_server import FakeLLMServer, google_retry_body, openai_quota_body


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


def over_httpx(url: str, items: list[int], path: Path, *, genai: bool, **options: Any) -> BatchSummary:
    """Each item one POST with httpx; a refusal raised as google-genai raises it (``ClientError(code, body,
    response)`` after reading the body), or as ``raise_for_status`` does."""

    async def main() -> BatchSummary:
        async with httpx.AsyncClient(timeout=30) as client:

            async def ask(item: int) -> str:
                resp = await client.post(
                    f"{url}/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": f"q{item}"}], "max_tokens": 5},
                )
                if genai and resp.status_code != 200:
                    await resp.aread()
                    raise GenaiClientError(resp.status_code, resp.json(), resp)
                resp.raise_for_status()
                return str(resp.json()["choices"][0]["message"]["content"])

            return await arun_batch(ask, items, path, progress=False, **options)

    return asyncio.run(main())


def over_openai(url: str, items: list[int], path: Path, **options: Any) -> BatchSummary:
    async def main() -> BatchSummary:
        async with openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0, timeout=30) as client:
            holder = {"client": client}

            async def ask(item: int) -> str:
                resp = await holder["client"].chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"q{item}"}], max_tokens=5
                )
                return resp.choices[0].message.content or ""

            return await arun_batch(ask, items, path, **options)

    return asyncio.run(main())


@pytest.mark.parametrize("genai", [True, False], ids=["genai-error", "httpx-raise_for_status"])
def test_gemini_retry_info_is_waited_for(genai: bool, server: FakeLLMServer, tmp_path: Path) -> None:
    server.configure(script=[(429, {}, google_retry_body("3s")), (429, {}, google_retry_body("0.5s"))])
    clock = RecordingClock()
    summary = over_httpx(server.url, [1], tmp_path, genai=genai, clock=clock, backoff=0.01, max_backoff=0.01)
    assert summary.completed == 1 and summary.pushbacks == 2
    assert server.stats()["by_status"] == {"200": 1, "429": 2}
    first, second = clock.waits  # the retries' waits: the delays asked, plus up to 10 %, not the 0.01 s backoff
    assert 3.0 <= first <= 3.3 and 0.5 <= second <= 0.55


def test_openai_insufficient_quota_stops_the_batch(server: FakeLLMServer, tmp_path: Path) -> None:
    server.configure(script=[(200, {})] * 3 + [(429, {}, openai_quota_body())] * 50)
    with pytest.raises(CheckpointError) as info:
        over_openai(server.url, list(range(10)), tmp_path, retries=3, progress=False, clock=RecordingClock())
    assert server.stats()["requests"] == 4  # three answered, one refused, not retried, nothing after
    assert "RateLimitError 429 insufficient_quota" in info.value.message
    assert "3 of 10 items done and kept in the journal" in info.value.message
    records = journal_records(tmp_path / "results.journal.jsonl")
    assert [r["ok"] for r in records] == [True, True, True, False]
    assert records[3]["status"] == 429 and records[3]["request_id"].startswith("req_")

    server.configure()  # credit added: the next run resumes
    summary = over_openai(server.url, list(range(10)), tmp_path, progress=False)
    assert (summary.skipped, summary.completed) == (3, 7) and server.stats()["requests"] == 7


def test_openai_insufficient_quota_in_flight_calls_are_the_last(server: FakeLLMServer, tmp_path: Path) -> None:
    server.configure(always=(429, {}, openai_quota_body()))
    with pytest.raises(CheckpointError, match="0 of 40 items done"):
        over_openai(server.url, list(range(40)), tmp_path, concurrency=4, progress=False, clock=RecordingClock())
    assert 1 <= server.stats()["requests"] <= 4  # at most the calls in flight at once: no item is hammered


def test_the_progress_line_says_the_provider_refuses(
    server: FakeLLMServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.configure(script=[(429, {"retry-after": "3"})] * 12)
    summary = over_openai(server.url, [1], tmp_path, retries=12, clock=RecordingClock())
    assert summary.completed == 1 and server.stats()["by_status"] == {"200": 1, "429": 12}
    frames = [f for f in capsys.readouterr().err.split("\r") if f.strip()]
    assert any("provider refusing: waiting 3 s (429 \u00d712)" in f for f in frames)
    assert "refusing" not in frames[-1] and "1/1" in frames[-1]
