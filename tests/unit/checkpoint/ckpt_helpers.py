"""Helpers shared by the checkpoint tests (imported by name; fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.checkpoint.batch import BatchClock

StartScript = Callable[..., "subprocess.Popen[bytes]"]


def journal_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a journal (header excluded), read the way another program would."""
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the journal ends with a torn line"
    return [json.loads(line) for line in lines[1:-1]]


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class RecordingClock(BatchClock):
    """A batch clock whose time moves only when the batch waits: each wait is recorded and passes at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


# ---- google-genai's shapes, by their attribute names (the SDK is not installed: no test imports it) -------------


class GenaiAPIError(Exception):
    """google-genai's ``errors.APIError``: ``code``, ``status``, ``message``, ``details`` (the JSON body as
    parsed, the whole ``{"error": {...}}``), ``response`` (the httpx response, or None)."""

    def __init__(self, code: int, response_json: Any, response: Any = None) -> None:
        self.response = response
        self.details = response_json
        inner = response_json.get("error", {}) if isinstance(response_json, dict) else {}
        self.message = inner.get("message")
        self.status = inner.get("status")
        self.code = code
        super().__init__(f"{self.code} {self.status}. {self.details}")


class GenaiClientError(GenaiAPIError):
    """google-genai's ``errors.ClientError`` (a 4xx, 429 included)."""


class HttpRetryOptions:
    """google-genai's ``types.HttpRetryOptions``: every field optional (``attempts`` unset means 5)."""

    def __init__(self, attempts: int | None = None, initial_delay: float | None = None) -> None:
        self.attempts = attempts
        self.initial_delay = initial_delay
        self.max_delay: float | None = None
        self.exp_base: float | None = None
        self.jitter: float | None = None
        self.http_status_codes: list[int] | None = None


class HttpOptions:
    """google-genai's ``types.HttpOptions`` (the part that matters here)."""

    def __init__(self, retry_options: HttpRetryOptions | None = None) -> None:
        self.retry_options = retry_options
        self.timeout: int | None = None


class GenaiApiClient:
    """google-genai's ``BaseApiClient``: the options it was built with are its ``_http_options``."""

    def __init__(self, http_options: HttpOptions | None) -> None:
        self._http_options = http_options or HttpOptions()


class GenaiModels:
    """``client.models`` / ``client.aio.models``: a module over the same ``_api_client``."""

    def __init__(self, api_client: GenaiApiClient) -> None:
        self._api_client = api_client


class GenaiAsyncClient:
    """``client.aio``."""

    def __init__(self, api_client: GenaiApiClient) -> None:
        self._api_client = api_client
        self.models = GenaiModels(api_client)


class GenaiClient:
    """``genai.Client(api_key=..., http_options=...)``."""

    def __init__(self, http_options: HttpOptions | None = None) -> None:
        self._api_client = GenaiApiClient(http_options)
        self.aio = GenaiAsyncClient(self._api_client)
        self.models = GenaiModels(self._api_client)
