"""The batch runner: map a function over items with adaptive concurrency, rate limits, retries, progress."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import json
import math
import os
import queue
import signal
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tether.checkpoint._http import (
    asked_delay,
    attr,
    failure_kind,
    is_pushback,
    is_transient,
    quota_exhausted,
    safe_text,
    sdk_retries_taken,
    seconds_value,
    status_of,
    type_name,
)
from tether.checkpoint.journal import Checkpoint, CheckpointWarning, ItemId
from tether.errors import CheckpointError
from tether.retry import backoff_step, equal_jitter, jitter_up

T = TypeVar("T")


class RetryAfter(Exception):
    """Raise from an item function to ask for a retry after ``seconds`` (e.g. from an HTTP 429 Retry-After).

    Any exception with a numeric ``retry_after`` attribute (seconds) is honoured the same way, and so are the
    ``Retry-After``/``retry-after-ms``/``x-ratelimit-reset-*`` headers of an SDK error (``exc.response.headers``)
    or of ``urllib.error.HTTPError`` (``exc.headers``). Raising it counts as the provider pushing back.
    """

    def __init__(self, seconds: float, message: str = "") -> None:
        value = seconds_value(seconds)  # 10**400 is inf (capped by max_retry_after), not an OverflowError
        super().__init__(message or (f"retry after {value:g} s" if value is not None else "retry later"))
        self.retry_after = value if value is not None else math.nan


@dataclass(frozen=True)
class BatchSummary:
    """What :func:`run_batch` did."""

    completed: int  #: items that succeeded in this call
    failed: int  #: items that failed in this call after their retries
    skipped: int  #: items already completed before this call (journal, adopted partial file, final file)
    elapsed: float  #: seconds
    total: int  #: items given
    final_path: Path | None  #: the final results file when it was written (or already existed)
    interrupted: int | None = None  #: the signal number (SIGINT, SIGTERM) that stopped the batch, if any
    calls: int = 0  #: calls of the item function, retries included
    pushbacks: int = 0  #: calls the provider pushed back (429, 503, 529, a rate-limit error, RetryAfter)
    failed_by: dict[str, int] = field(default_factory=dict)  #: this call's failed items by status or error type
    concurrency: int = 0  #: the concurrency the adaptive limit ended at (``concurrency`` when not adaptive)
    min_concurrency: int = 0  #: the lowest concurrency the adaptive limit went down to


#: How much the adaptive concurrency keeps of itself when the provider pushes back (multiplicative decrease);
#: the first pushback of a batch halves it (the starting concurrency is a guess, often far above capacity).
DECREASE = 0.9
FIRST_DECREASE = 0.5
_RATE_WINDOW_S = 5.0  # successes of the last seconds that measure what the provider carries
#: Retry-After values above this many seconds are capped (and said so once); see ``max_retry_after``.
MAX_RETRY_AFTER = 120.0


class BatchClock:
    """Where the batch reads the time and waits: ``monotonic()`` seconds and ``await sleep(seconds)``. Every wait
    of the batch (a retry's, Retry-After's hold on new calls, ``rpm``, ``tpm``) goes through it, so a test can pass
    one that records each wait and moves its own time on at once, instead of waiting."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_REAL_CLOCK = BatchClock()


def retry_after_of(exc: BaseException) -> float | None:
    """The delay (seconds, >= 0) an exception asks for (a ``retry_after`` attribute, ``retry-after-ms``,
    ``Retry-After`` in seconds or as an HTTP date, a rate limit's ``x-ratelimit-reset-*``), or None."""
    asked, _ = asked_delay(exc)
    return None if asked is None else max(asked, 0.0)


def _bounded_retry_after(exc: BaseException, cap: float) -> tuple[float | None, str | None]:
    """The Retry-After to honour (None: back off exponentially) and, when it was not usable as given, why."""
    asked, where = asked_delay(exc)
    if asked is None:
        return None, None
    if asked < 0:
        return None, (
            f"{type_name(exc)} asked for a delay of {asked:g} s ({where}), which is in the past: "
            "backing off exponentially instead."
        )
    if asked == 0:
        return None, None  # "retry now": an exponential backoff instead, so a server that insists is not hammered
    if asked > cap:
        return cap, (
            f"{type_name(exc)} asked to wait {asked:g} s ({where}); waiting {cap:g} s instead (max_retry_after)."
        )
    return asked, None


def backoff_delay(
    exc: BaseException, attempt: int, base: float, cap: float, max_retry_after: float = MAX_RETRY_AFTER
) -> float:
    """Seconds to wait before retry ``attempt + 1``: the error's Retry-After if it asks for a positive delay (at
    most ``max_retry_after``, plus up to 10 % jitter), else exponential backoff ``min(cap, base * 2**attempt)``
    with equal jitter (between half and all of it). A Retry-After of 0 or in the past backs off exponentially."""
    asked, _ = _bounded_retry_after(exc, max_retry_after)
    if asked is not None:
        return jitter_up(asked)
    return equal_jitter(backoff_step(attempt, base, cap))


_GENAI_FIX = "Build it with http_options=HttpOptions(retry_options=HttpRetryOptions(attempts=1)) (or no retry_options)"
#: Attempts of a google-genai client whose ``HttpRetryOptions`` leaves ``attempts`` unset (the SDK's default).
GENAI_DEFAULT_ATTEMPTS = 5


def genai_retries(client: Any) -> int | None:
    """How many times a google-genai client (``Client``, ``client.aio``, ``client.models``...) retries a call by
    itself: ``attempts - 1`` of the ``HttpRetryOptions`` it was built with (5 attempts when unset), 0 when it was
    built without ``retry_options`` (the SDK then does not retry); None when it is not such a client. Duck-typed
    (``_api_client._http_options.retry_options.attempts``), never raising."""
    api = attr(client, "_api_client")
    options = attr(api if api is not None else client, "_http_options")
    if options is None:
        return None
    retry = attr(options, "retry_options")
    if retry is None:
        return 0
    attempts = attr(retry, "attempts")
    if attempts is None:
        attempts = GENAI_DEFAULT_ATTEMPTS
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        return None
    return max(0, attempts - 1)


def without_sdk_retries(client: Any) -> Any:
    """The same SDK client with its own retries off, so that tether alone paces and counts retries.

    Works for the OpenAI and Anthropic clients (sync and async: ``client.with_options(max_retries=0)``); build
    other clients with their own option (google-genai: ``HttpOptions(retry_options=HttpRetryOptions(
    attempts=1))``, or no ``retry_options`` at all).
    """
    with_options = getattr(client, "with_options", None)
    if not callable(with_options):
        hint = "Build the client with its own retries off (e.g. max_retries=0) and let run_batch retry."
        if genai_retries(client) is not None:
            hint = _GENAI_FIX + " and let run_batch retry."
        raise CheckpointError(
            f"Cannot turn off the retries of a {type(client).__name__}: it has no with_options().", hint=hint
        )
    return with_options(max_retries=0)


def _retrying_clients(fn: Callable[..., Any]) -> list[tuple[str, int, str, str]]:
    """SDK clients the item function uses (closure, globals, partial arguments, bound ``self``) that retry by
    themselves: ``(name, retries, what sets them, how to build it without)`` for each object with
    ``max_retries > 0`` and a ``with_options`` (OpenAI, Anthropic), or a google-genai client built with
    ``HttpRetryOptions`` of more than one attempt."""
    candidates: list[tuple[str, Any]] = []
    target: Any = fn
    while isinstance(target, functools.partial):
        candidates += [("argument", a) for a in target.args] + list(target.keywords.items())
        target = target.func
    owner = getattr(target, "__self__", None)
    if owner is not None:
        candidates.append(("self", owner))
        with contextlib.suppress(TypeError):
            candidates += [(f"self.{k}", v) for k, v in vars(owner).items()]
    with contextlib.suppress(TypeError, ValueError):
        found = inspect.getclosurevars(target)
        candidates += list(found.nonlocals.items()) + list(found.globals.items())
    out: list[tuple[str, int, str, str]] = []
    for name, obj in candidates:
        try:
            retries = getattr(obj, "max_retries", None)
            has_options = callable(getattr(obj, "with_options", None))
        except Exception:  # an object whose attribute access misbehaves is not an SDK client
            continue
        if isinstance(retries, int) and not isinstance(retries, bool) and retries > 0 and has_options:
            out.append((name, retries, f"max_retries={retries}", _OPENAI_FIX))
            continue
        genai = genai_retries(obj)
        if genai:
            out.append((name, genai, f"HttpRetryOptions: {genai + 1} attempts", _GENAI_FIX))
    return out


def _default_cost(item: Any) -> float:
    """Tokens an item costs when ``tpm`` is given without ``cost``: its text length / 4 (about 4 characters
    per token in English)."""
    try:
        text = item if isinstance(item, str) else json.dumps(item, default=str, ensure_ascii=False)
    except Exception:  # nested too deep, or its own code raises: its printed length (capped) will do
        text = safe_text(item)
    return max(1.0, len(text) / 4.0)


class _RateLimiter:
    """Spaces the starts of calls at least ``60 / rpm`` seconds apart (retries count as calls)."""

    def __init__(self, rpm: float | None, clock: BatchClock = _REAL_CLOCK) -> None:
        self._gap = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._clock = clock

    async def wait(self) -> None:
        if not self._gap:
            return
        now = self._clock.monotonic()
        start = max(now, self._next)
        self._next = start + self._gap
        if start > now:
            await self._clock.sleep(start - now)


class _TokenBucket:
    """A tokens-per-minute budget: refills at ``tpm / 60`` a second and holds at most one second's worth, so
    calls are paced evenly; a call costing more than that waits for a full bucket and leaves it in debt."""

    def __init__(self, tpm: float, clock: BatchClock = _REAL_CLOCK) -> None:
        self.rate = tpm / 60.0
        self.capacity = max(self.rate, 1.0)
        self.level = self.capacity
        self._clock = clock
        self._stamp = clock.monotonic()

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, tokens: float) -> None:
        while True:
            self._refill()
            need = min(tokens, self.capacity)
            if self.level >= need:
                self.level -= tokens
                return
            await self._clock.sleep((need - self.level) / self.rate)

    def refund(self, tokens: float) -> None:
        """Give back the tokens of a call the provider refused (a refused call is not charged)."""
        self._refill()
        self.level = min(self.capacity, self.level + tokens)


class _Window:
    """How many calls may be in flight: AIMD between 1 and ``high`` when adaptive, else always ``high``.

    Each success adds ``1 / limit`` (about one more call per round of calls: additive increase). A pushback
    lowers the limit once per round (a pushback of a call that started before the last decrease does not
    decrease again: the calls in flight then were already too many): to what the provider was seen to carry
    (Little's law: successes per second over the last seconds times their mean latency, plus a tenth), but
    to no less than half and no more than :data:`DECREASE` of it; before any such measure, by
    :data:`FIRST_DECREASE` the first time and :data:`DECREASE` after. A pushback that says
    when to come back (Retry-After) also holds every new call until then (the rate limit is the account's,
    not the item's).
    """

    def __init__(self, high: int, adaptive: bool, clock: BatchClock = _REAL_CLOCK) -> None:
        self._clock = clock
        self.high = high
        self.adaptive = adaptive
        self.limit = float(high)
        self.low = high
        self.in_flight = 0
        self.epoch = 0
        self.gate_until = 0.0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._ok: deque[tuple[float, float]] = deque()  # (end, latency) of the successes of the last seconds

    @property
    def cap(self) -> int:
        return max(1, int(self.limit))

    async def acquire(self) -> None:
        if self.in_flight < self.cap and not self._waiters:
            self.in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as this waiter was cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.cap:
            fut = self._waiters.popleft()
            if fut.done():
                continue
            self.in_flight += 1
            fut.set_result(None)

    async def wait_gate(self) -> None:
        while True:
            left = self.gate_until - self._clock.monotonic()
            if left <= 0:
                return
            await self._clock.sleep(left)

    def success(self, latency: float) -> None:
        if not self.adaptive:
            return
        now = self._clock.monotonic()
        self._ok.append((now, latency))
        while self._ok and self._ok[0][0] < now - _RATE_WINDOW_S:
            self._ok.popleft()
        if self.limit < self.high:
            self.limit = min(float(self.high), self.limit + 1.0 / self.limit)
            self._wake()

    def carried(self) -> float | None:
        """Calls in flight the provider was seen to carry (Little's law), or None before enough successes."""
        if len(self._ok) < 8:
            return None
        latency = sum(lat for _, lat in self._ok) / len(self._ok)
        span = self._clock.monotonic() - self._ok[0][0]
        if span < max(2 * latency, 0.05):
            return None
        return len(self._ok) / span * latency

    def pushback(self, epoch: int, delay: float | None) -> None:
        if delay is not None:
            self.gate_until = max(self.gate_until, self._clock.monotonic() + delay)
        if self.adaptive and epoch == self.epoch:
            seen = self.carried()
            if seen is None:
                target = self.limit * (FIRST_DECREASE if self.epoch == 0 else DECREASE)
            else:
                target = min(max(seen * 1.1, self.limit * 0.5), self.limit * DECREASE)
            self.limit = max(1.0, target)
            self.epoch += 1
            self.low = min(self.low, self.cap)


class _Once:
    """Warnings said once per batch (as :class:`CheckpointWarning`, shown on stderr by default)."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def say(self, key: str, text: str) -> None:
        if key in self._said:
            return
        self._said.add(key)
        warnings.warn(text, CheckpointWarning, stacklevel=2)


_STACKED = (
    "With tether's retries ({retries}) on top, a rate-limited item gets up to {calls} calls that tether's "
    "pacing cannot see. {fix} and let run_batch retry; or pass retries=0 to leave retrying to the SDK."
)
_OPENAI_FIX = "Build the client with max_retries=0 (or client = without_sdk_retries(client))"


class _Threads:
    """Daemon worker threads for a sync item function: an interrupted batch never waits for them to finish."""

    def __init__(self, n: int) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._n = n
        for _ in range(n):
            threading.Thread(target=self._work, daemon=True, name="tether-batch").start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, fut, fn, item = job
            try:
                outcome: tuple[bool, Any] = (True, fn(item))
            except BaseException as exc:  # handed to the awaiting coroutine: an Exception as its failure
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(_settle, fut, outcome)
            except RuntimeError:
                return  # the event loop is closed: the batch was interrupted and this result is not wanted

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[[Any], Any], item: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((loop, fut, fn, item))
        return fut

    def shutdown(self) -> None:
        for _ in range(self._n):
            self._jobs.put(None)


class _Halted(Exception):
    """Raised inside the batch when a used-up quota stopped it: the call about to start is not made."""


async def _tick(bar: _Bar) -> None:
    """Let the progress line count a refusal's wait down, once a second (real time: it only draws)."""
    while True:
        await asyncio.sleep(1.0)
        bar.tick()


def _quota_error(error: Exception, message: str, done: int, total: int) -> CheckpointError:
    """The one sentence of a batch stopped by a used-up quota, and what to do."""
    status = status_of(error)
    said = f"{type_name(error)}{f' {status}' if status is not None else ''} insufficient_quota"
    if message:
        said += f": {message!r}"
    return CheckpointError(
        f"The provider refused a call because the account's quota is used up ({said}), which no wait can cure: "
        f"the batch stopped, with {done} of {total} items done and kept in the journal.",
        hint="Add credit or raise the usage limit of the API key's account (OpenAI: platform.openai.com, "
        "Settings > Billing), then run the batch again: it resumes with the items not done.",
    )


def _being_cancelled() -> bool:
    """Whether someone asked to cancel the current task (Python 3.11+ can tell; before, False)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if callable(cancelling) else False


def _settle(fut: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    """Hand a thread's outcome to its future: the (ok, value) pair itself for a result or an Exception (a future
    cannot carry a StopIteration as its exception: the batch would wait for it forever), and a BaseException
    such as KeyboardInterrupt or SystemExit as the future's exception, so that it ends the batch."""
    if fut.cancelled():
        return
    ok, value = outcome
    if ok or isinstance(value, Exception):
        fut.set_result(outcome)
    else:
        fut.set_exception(value)


def _seconds_text(seconds: float) -> str:
    """``"3 s"``, ``"0.5 s"``: a wait as the progress line says it."""
    return f"{seconds:.0f} s" if seconds >= 0.95 else f"{max(seconds, 0.1):.1f} s"


_TIMES = "\u00d7"  # the multiplication sign of "429 ×12"


class _Refusals:
    """What the provider refused since it last accepted a call: pushbacks by kind (``"429"``) and when the batch
    asks again. Cleared by the next accepted call."""

    def __init__(self) -> None:
        self.by_kind: dict[str, int] = {}
        self.until = 0.0

    def refused(self, kind: str, until: float) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        self.until = max(self.until, until)

    def accepted(self) -> bool:
        """Clear; whether there was anything to clear."""
        had = bool(self.by_kind)
        self.by_kind = {}
        self.until = 0.0
        return had

    def text(self, now: float) -> str | None:
        """``"provider refusing: waiting 3 s (429 ×12)"`` while it refuses, else None."""
        if not self.by_kind:
            return None
        left = self.until - now
        wait = f"waiting {_seconds_text(left)}" if left > 0.05 else "asking again"
        kinds = sorted(self.by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
        counts = ", ".join(f"{kind} {_TIMES}{n}" for kind, n in kinds)
        return f"provider refusing: {wait} ({counts})"


#: The tqdm bar while the provider refuses: no rate nor ETA (they would be frozen, not measured), the postfix says.
_REFUSING_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


class _Bar:
    """A progress bar on stderr: tqdm when it is importable, else a plain line at most every 2 s. While the provider
    refuses every call, it says so (``provider refusing: waiting 3 s (429 ×12)``) in place of the rate and ETA,
    until a call is accepted again."""

    def __init__(self, enabled: bool, name: str, total: int, initial: int, clock: BatchClock = _REAL_CLOCK) -> None:
        self._enabled = enabled
        self._name = name
        self._total = total
        self._done = initial
        self._initial = initial
        self._failed = 0
        self._clock = clock
        self._start = clock.monotonic()
        self._last = -math.inf
        self.refusals = _Refusals()
        self._tqdm: Any = None
        if not enabled:
            return
        try:
            tqdm_mod: Any = importlib.import_module("tqdm")
        except ImportError:
            tqdm_mod = None  # plain stderr lines instead
        if tqdm_mod is not None:
            self._tqdm = tqdm_mod.tqdm(
                total=total, initial=initial, unit="item", desc=name, file=sys.stderr, dynamic_ncols=True
            )

    def update(self, ok: bool) -> None:
        if ok:
            self._done += 1
        else:
            self._failed += 1
        if not self._enabled:
            return
        if self._tqdm is not None:
            if ok:
                self._tqdm.update(1)
            else:
                self._show()
            return
        now = self._clock.monotonic()
        if now - self._last >= 2.0:
            self._line(now)

    def refused(self, kind: str, until: float) -> None:
        """The provider refused a call; the batch asks again at ``until`` (the clock's time) at the latest."""
        first = not self.refusals.by_kind
        self.refusals.refused(kind, until)
        self._event(first)

    def accepted(self) -> None:
        """The provider accepted a call: the refusing line clears."""
        if self.refusals.accepted():
            self._event(True)

    def tick(self) -> None:
        """Once a second: while the provider refuses, the wait counts down (nothing else moves then)."""
        if self.refusals.by_kind:
            self._event(False)

    def _event(self, force: bool) -> None:
        if not self._enabled:
            return
        now = self._clock.monotonic()
        if force or now - self._last >= (0.5 if self._tqdm is not None else 2.0):
            if self._tqdm is not None:
                self._last = now
                self._show()
            else:
                self._line(now)

    def _show(self) -> None:
        refusing = self.refusals.text(self._clock.monotonic())
        parts = [f"failed={self._failed}"] if self._failed else []
        if refusing is not None:
            parts.append(refusing)
        self._tqdm.bar_format = _REFUSING_FORMAT if refusing is not None else None
        self._tqdm.set_postfix_str(", ".join(parts))

    def _line(self, now: float) -> None:
        self._last = now
        refusing = self.refusals.text(now)
        if refusing is not None:
            pace = refusing
        else:
            rate = (self._done - self._initial) / max(now - self._start, 1e-9)
            left = self._total - self._done - self._failed
            eta = f"{left / rate:.0f}s" if rate > 0 else "?"
            pace = f"{rate:.1f}/s, eta {eta}"
        sys.stderr.write(f"{self._name}: {self._done}/{self._total} done, {self._failed} failed, {pace}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if not self._enabled:
            return
        if self._tqdm is not None:
            self._tqdm.close()
        else:
            self._line(self._clock.monotonic())


async def arun_batch(
    fn: Callable[[T], Any],
    items: Iterable[T],
    results_dir: str | os.PathLike[str] | None = None,
    *,
    key: Callable[[T], ItemId] | None = None,
    name: str = "results",
    config: dict[str, Any] | None = None,
    concurrency: int = 1,
    adaptive: bool = True,
    rpm: float | None = None,
    tpm: float | None = None,
    cost: Callable[[T], float] | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    max_retry_after: float = MAX_RETRY_AFTER,
    retry_on: tuple[type[BaseException], ...] | None = None,
    progress: bool = True,
    interval: int = 25,
    interval_seconds: float | None = 2.0,
    allow_config_change: bool = False,
    allow_failures: bool = False,
    finalize: bool = True,
    checkpoint: Checkpoint | None = None,
    clock: BatchClock | None = None,
) -> BatchSummary:
    """The coroutine behind :func:`run_batch` (same arguments), for callers already inside an event loop.

    On SIGINT/SIGTERM (when it can install handlers, i.e. in the main thread) it stops, closes the journal
    and returns a summary whose ``interrupted`` is the signal number; it does not raise. A used-up quota
    (``insufficient_quota``) stops it too, and raises :class:`CheckpointError` once the journal is closed.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise CheckpointError(f"concurrency must be a whole number, at least 1 (got {concurrency!r}).")
    if retries < 0:
        raise CheckpointError(f"retries must be 0 or more (got {retries}).")
    for label, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise CheckpointError(f"{label} must be a positive number of calls/tokens per minute (got {value!r}).")
    if cost is not None and tpm is None:
        raise CheckpointError(
            "cost= is given but tpm= is not: the cost of an item counts against a tokens-per-minute budget.",
            hint="Pass tpm= (the provider's tokens per minute), or drop cost=.",
        )
    if not max_retry_after > 0:
        raise CheckpointError(f"max_retry_after must be positive (got {max_retry_after!r}).")
    clk = clock if clock is not None else _REAL_CLOCK
    listed = list(items)
    t0 = time.monotonic()
    if checkpoint is not None:
        ck = checkpoint
    else:
        options: dict[str, Any] = {
            "name": name,
            "total": len(listed),
            "config": config,
            "interval": interval,
            "interval_seconds": interval_seconds,
            "allow_config_change": allow_config_change,
        }
        ck = Checkpoint(results_dir, **options) if results_dir is not None else Checkpoint.from_env(**options)
    once = _Once()
    if retries > 0:
        for client_name, sdk_retries, what, fix in _retrying_clients(fn):
            once.say(
                "stacked",
                f"The API client {client_name!r} retries by itself ({what}). "
                + _STACKED.format(retries=retries, calls=(sdk_retries + 1) * (retries + 1), fix=fix),
            )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    caught: list[int] = []

    def on_signal(signum: int) -> None:
        caught.append(signum)
        stop.set()

    installed: list[tuple[int, Any]] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
            if sig is None:
                continue
            previous = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, on_signal, int(sig))
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # no signal support on this loop (e.g. Windows): Ctrl-C then interrupts as usual
            installed.append((int(sig), previous))

    winding_down: list[bool] = []  # set once the batch cancels its workers
    is_async = inspect.iscoroutinefunction(fn)
    threads = None if is_async else _Threads(min(concurrency, max(len(listed), 1)))
    counts = {"completed": 0, "failed": 0, "calls": 0, "pushbacks": 0}
    failed_by: dict[str, int] = {}
    limiter = _RateLimiter(rpm, clk)
    bucket = _TokenBucket(float(tpm), clk) if tpm is not None else None
    cost_of: Callable[[Any], float] = cost if cost is not None else _default_cost
    window = _Window(concurrency, adaptive, clk)
    halted: list[tuple[Exception, str]] = []  # the first used-up-quota error (and its message): no more calls
    final_path: Path | None = None
    skipped = 0

    def retryable(exc: BaseException) -> bool:
        if retry_on is not None:
            return isinstance(exc, retry_on)
        return isinstance(exc, RetryAfter) or is_transient(exc)

    def tokens(item: Any) -> float:
        value = cost_of(item)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
            raise CheckpointError(
                f"cost() returned {value!r} for an item; it must be a number of tokens, 0 or more.",
                hint="Return an estimate of the item's tokens, e.g. len(prompt) / 4 + max_tokens.",
            )
        return float(value)

    try:
        with ck:
            todo = deque(ck.pending(listed, key=key))
            skipped = len(listed) - len(todo)
            bar = _Bar(progress, name, len(listed), skipped, clk)

            async def call(item: T) -> tuple[bool, Any]:
                """(True, result) or (False, the Exception the item function raised)."""
                if threads is None:
                    try:
                        return True, await fn(item)
                    except Exception as exc:  # the item's failure, judged by the caller
                        return False, exc
                    except asyncio.CancelledError as exc:
                        if winding_down or _being_cancelled():
                            raise  # the batch is stopping: this call is abandoned, not failed
                        return False, exc  # the item's own code raised it (a leaked timeout): its failure
                outcome: tuple[bool, Any] = await threads.run(loop, fn, item)
                return outcome

            async def attempt_once(item: T, item_tokens: float) -> tuple[bool, Any, int]:
                """One call under the window, the gate and the rate limits: (ok, result or error, epoch)."""
                while True:
                    await window.acquire()
                    try:
                        await window.wait_gate()
                    except BaseException:
                        window.release()
                        raise
                    if window.in_flight <= window.cap:
                        break
                    window.release()  # the window shrank while this call waited: queue again behind the others
                try:
                    await limiter.wait()
                    if bucket is not None:
                        await bucket.take(item_tokens)
                    await window.wait_gate()
                    if halted:
                        raise _Halted
                    epoch = window.epoch
                    counts["calls"] += 1
                    began = clk.monotonic()
                    ok, result = await call(item)
                    if not ok:  # judged by the caller: retried, or recorded as failed
                        return False, result, epoch
                    window.success(clk.monotonic() - began)
                    bar.accepted()
                    return True, result, epoch
                finally:
                    window.release()

            def fail(item_id: ItemId, error: BaseException | str, attempts: int) -> None:
                ck.record_failure(item_id, error, attempts=attempts)
                if isinstance(error, BaseException):
                    kind = failure_kind(status_of(error), type_name(error), "")
                else:
                    kind = failure_kind(None, "CheckpointError", "")
                failed_by[kind] = failed_by.get(kind, 0) + 1

            async def worker() -> None:
                while todo and not stop.is_set() and not halted:
                    item = todo.popleft()
                    item_id: ItemId = key(item) if key is not None else item  # type: ignore[assignment]
                    item_tokens = tokens(item) if bucket is not None else 0.0
                    attempt = made = free = 0
                    last: Exception | None = None
                    while True:
                        try:
                            ok, value, epoch = await attempt_once(item, item_tokens)
                        except _Halted:  # the quota is used up: a retry is not made, a first call not at all
                            if last is None:
                                return  # never called: still pending, for the next run
                            fail(item_id, last, made)
                            ok = False
                            break
                        made += 1
                        if ok:
                            try:
                                ck.record(item_id, value)
                            except CheckpointError as exc:  # not JSON-serializable, NaN: the item failed
                                fail(item_id, exc, made)
                                ok = False
                            break
                        error: Exception = value
                        last = error
                        quota = quota_exhausted(error)
                        if quota is not None:  # no wait can cure it: this item fails, no other item is called
                            fail(item_id, error, made)
                            if not halted:
                                halted.append((error, quota))
                            break
                        delay, why = _bounded_retry_after(error, max_retry_after)
                        if why is not None:
                            once.say("retry-after", why)
                        stale = False
                        pushback = isinstance(error, RetryAfter) or is_pushback(error)
                        if pushback:
                            counts["pushbacks"] += 1
                            # A pushback of a call started before the window last shrank is the batch's own
                            # overshoot, not the item's bad luck: it does not use up a retry (a few at most).
                            stale = adaptive and epoch != window.epoch and free < retries
                            window.pushback(epoch, delay)
                            if bucket is not None:
                                bucket.refund(item_tokens)
                        taken = sdk_retries_taken(error) if retries > 0 else None
                        if taken:
                            stacked = _STACKED.format(
                                retries=retries, calls=(taken + 1) * (retries + 1), fix=_OPENAI_FIX
                            )
                            once.say(
                                "stacked",
                                f"The API client retried this call {taken} times by itself before raising "
                                f"{type_name(error)}. {stacked}",
                            )
                        again = (stale or attempt < retries) and retryable(error)
                        wait = 0.0
                        if again:
                            if delay is not None:
                                wait = jitter_up(delay)
                            else:
                                wait = backoff_delay(error, attempt, backoff, max_backoff, max_retry_after)
                        if pushback:
                            kind = failure_kind(status_of(error), type_name(error), "")
                            bar.refused(kind, max(window.gate_until, clk.monotonic() + wait))
                        if again:
                            await clk.sleep(wait)
                            if halted:
                                fail(item_id, error, made)
                                break
                            if stale:
                                free += 1
                            else:
                                attempt += 1
                            continue
                        fail(item_id, error, made)
                        break
                    counts["completed" if ok else "failed"] += 1
                    bar.update(ok)

            tasks = {asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(todo)))}
            stopper = asyncio.ensure_future(stop.wait())
            ticker = asyncio.ensure_future(_tick(bar)) if progress else None
            try:
                running = set(tasks)
                while running and not stop.is_set():
                    done, _ = await asyncio.wait(running | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        if task is stopper:
                            continue
                        running.discard(task)
                        task.result()  # re-raises a worker's error (e.g. the disk is full)
            finally:
                winding_down.append(True)
                stopper.cancel()
                for task in tasks:
                    task.cancel()
                if ticker is not None:
                    ticker.cancel()
                    tasks.add(ticker)
                await asyncio.gather(stopper, *tasks, return_exceptions=True)
                bar.close()
            if halted and not caught:
                raise _quota_error(halted[0][0], halted[0][1], ck.completed, len(listed))
            if not caught and finalize:
                if ck.already_finalized:
                    final_path = ck.final_path
                elif (counts["failed"] == 0 and not ck.failed) or allow_failures:
                    final_path = ck.finalize(allow_failures=allow_failures)
    finally:
        if threads is not None:
            threads.shutdown()
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, previous)
    return BatchSummary(
        completed=counts["completed"],
        failed=counts["failed"],
        skipped=skipped,
        elapsed=time.monotonic() - t0,
        total=len(listed),
        final_path=final_path,
        interrupted=caught[0] if caught else None,
        calls=counts["calls"],
        pushbacks=counts["pushbacks"],
        failed_by=failed_by,
        concurrency=window.cap,
        min_concurrency=window.low,
    )


def run_batch(
    fn: Callable[[T], Any],
    items: Iterable[T],
    results_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> BatchSummary:
    """Run ``fn`` (sync or async) over the items not yet completed in the checkpoint, then finalize.

    Options (all keyword): ``key`` (item → id; default: the item is its id), ``name`` ("results"),
    ``config`` (JSON-able dict stored and checked on resume), ``concurrency`` (1: the most calls at once; sync
    functions run in daemon threads), ``adaptive`` (True: when the provider pushes back, 429/503/529, the
    concurrency drops by a tenth, then grows back by about one per round of successes, between 1 and
    ``concurrency``), ``rpm`` (None: call starts per minute, retries included), ``tpm`` (None: tokens per
    minute, each call costing ``cost(item)`` tokens, by default the item's text length / 4), ``retries`` (3)
    of what can succeed (rate limits, overload, 5xx, timeouts, connection errors; not 400/401/403/404 nor a
    programming error such as KeyError), waiting the error's Retry-After or the delay of its body's
    ``RetryInfo`` (Google; at most ``max_retry_after``, 120 s) or an exponential ``backoff`` (1.0 s, doubled
    per retry, capped at ``max_backoff`` 60 s, with jitter);
    ``retry_on`` (exception types to retry instead of that judgment; others fail at once), ``progress`` (True:
    a bar on stderr), ``interval``/``interval_seconds`` (fsync knobs), ``allow_config_change``,
    ``allow_failures`` (finalize even if items failed), ``finalize`` (True), ``checkpoint`` (use this
    Checkpoint instead), ``clock`` (a :class:`BatchClock`: where every wait goes). ``results_dir`` defaults to
    ``$TETHER_RESULTS_DIR``.

    Build API clients with their own retries off (``max_retries=0``, or :func:`without_sdk_retries`; google-genai:
    no ``HttpRetryOptions``, or ``attempts=1``): SDK retries under tether's multiply the calls and hide them from
    the pacing (a warning says so once).

    Finalizes (writes ``<name>.json``) when every item succeeded. Failed items are journaled (error type, HTTP
    status, request id) and retried by the next call. A used-up quota (OpenAI's ``insufficient_quota``) stops
    the batch at once (no retry, no new call) and raises :class:`CheckpointError` saying what to do. On Ctrl-C
    or SIGTERM it stops starting items, abandons those in flight (not recorded), closes the journal and raises
    ``KeyboardInterrupt`` (SIGINT) or ``SystemExit(128 + signal)`` (SIGTERM).
    """
    summary = asyncio.run(arun_batch(fn, items, results_dir, **options))
    if summary.interrupted is not None:
        if summary.interrupted == int(signal.SIGINT):
            raise KeyboardInterrupt
        raise SystemExit(128 + summary.interrupted)
    return summary
