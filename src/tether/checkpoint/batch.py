"""The batch runner: map a function over items with bounded concurrency, rate limit, retries, progress."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import queue
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tether.checkpoint.journal import Checkpoint, ItemId
from tether.errors import CheckpointError

T = TypeVar("T")


class RetryAfter(Exception):
    """Raise from an item function to ask for a retry after ``seconds`` (e.g. from an HTTP 429 Retry-After).

    Any exception with a numeric ``retry_after`` attribute (seconds) is honoured the same way, and so is a
    ``headers`` mapping with a ``Retry-After`` in seconds (as ``urllib.error.HTTPError`` carries).
    """

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"retry after {seconds:g} s")
        self.retry_after = float(seconds)


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


def retry_after_of(exc: BaseException) -> float | None:
    """The delay (seconds) an exception asks for: a ``retry_after`` attribute or a ``Retry-After`` header."""
    value = getattr(exc, "retry_after", None)
    if value is None:
        headers = getattr(exc, "headers", None)
        getter = getattr(headers, "get", None)
        if callable(getter):
            value = getter("Retry-After")
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds: float = float(value)
    except (TypeError, ValueError):
        return None  # an HTTP date or garbage: fall back to exponential backoff
    if seconds != seconds:  # NaN
        return None
    return max(seconds, 0.0)


def backoff_delay(exc: BaseException, attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before retry ``attempt + 1``: the error's Retry-After if any (plus up to 10 % jitter),
    else exponential backoff ``min(cap, base * 2**attempt)`` with equal jitter (between half and all of it)."""
    asked = retry_after_of(exc)
    if asked is not None:
        return asked * (1.0 + 0.1 * random.random())
    step = min(cap, base * (2.0**attempt))
    return step / 2 + random.uniform(0, step / 2)


class _RateLimiter:
    """Spaces the starts of calls at least ``60 / rpm`` seconds apart (retries count as calls)."""

    def __init__(self, rpm: float | None) -> None:
        self._gap = 60.0 / rpm if rpm else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._gap:
            return
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + self._gap
        if start > now:
            await asyncio.sleep(start - now)


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
            except BaseException as exc:  # handed to the awaiting coroutine, which re-raises it
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


def _settle(fut: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if fut.cancelled():
        return
    ok, value = outcome
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class _Bar:
    """A progress bar on stderr: tqdm when it is importable, else a plain line at most every 2 s."""

    def __init__(self, enabled: bool, name: str, total: int, initial: int) -> None:
        self._enabled = enabled
        self._name = name
        self._total = total
        self._done = initial
        self._initial = initial
        self._failed = 0
        self._start = time.monotonic()
        self._last = 0.0
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
                self._tqdm.set_postfix(failed=self._failed)
            return
        now = time.monotonic()
        if now - self._last >= 2.0:
            self._line(now)

    def _line(self, now: float) -> None:
        self._last = now
        rate = (self._done - self._initial) / max(now - self._start, 1e-9)
        left = self._total - self._done - self._failed
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        sys.stderr.write(
            f"{self._name}: {self._done}/{self._total} done, {self._failed} failed, {rate:.1f}/s, eta {eta}\n"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if not self._enabled:
            return
        if self._tqdm is not None:
            self._tqdm.close()
        else:
            self._line(time.monotonic())


async def arun_batch(
    fn: Callable[[T], Any],
    items: Iterable[T],
    results_dir: str | os.PathLike[str] | None = None,
    *,
    key: Callable[[T], ItemId] | None = None,
    name: str = "results",
    config: dict[str, Any] | None = None,
    concurrency: int = 1,
    rpm: float | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    retry_on: tuple[type[Exception], ...] = (Exception,),
    progress: bool = True,
    interval: int = 25,
    interval_seconds: float | None = 2.0,
    allow_config_change: bool = False,
    allow_failures: bool = False,
    finalize: bool = True,
    checkpoint: Checkpoint | None = None,
) -> BatchSummary:
    """The coroutine behind :func:`run_batch` (same arguments), for callers already inside an event loop.

    On SIGINT/SIGTERM (when it can install handlers, i.e. in the main thread) it stops, closes the journal
    and returns a summary whose ``interrupted`` is the signal number; it does not raise.
    """
    if concurrency < 1:
        raise CheckpointError(f"concurrency must be at least 1 (got {concurrency}).")
    if retries < 0:
        raise CheckpointError(f"retries must be 0 or more (got {retries}).")
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

    is_async = inspect.iscoroutinefunction(fn)
    threads = None if is_async else _Threads(min(concurrency, max(len(listed), 1)))
    counts = {"completed": 0, "failed": 0}
    limiter = _RateLimiter(rpm)
    final_path: Path | None = None
    skipped = 0
    try:
        with ck:
            todo = deque(ck.pending(listed, key=key))
            skipped = len(listed) - len(todo)
            bar = _Bar(progress, name, len(listed), skipped)

            async def call(item: T) -> Any:
                if threads is None:
                    return await fn(item)
                return await threads.run(loop, fn, item)

            async def worker() -> None:
                while todo and not stop.is_set():
                    item = todo.popleft()
                    item_id: ItemId = key(item) if key is not None else item  # type: ignore[assignment]
                    attempt = 0
                    while True:
                        await limiter.wait()
                        try:
                            result = await call(item)
                        except retry_on as exc:
                            if attempt < retries:
                                await asyncio.sleep(backoff_delay(exc, attempt, backoff, max_backoff))
                                attempt += 1
                                continue
                            ck.record_failure(item_id, exc)
                            ok = False
                        except Exception as exc:  # not retryable: recorded as failed at once
                            ck.record_failure(item_id, exc)
                            ok = False
                        else:
                            try:
                                ck.record(item_id, result)
                                ok = True
                            except CheckpointError as exc:  # e.g. a result that is not JSON-serializable
                                ck.record_failure(item_id, exc.message)
                                ok = False
                        counts["completed" if ok else "failed"] += 1
                        bar.update(ok)
                        break

            tasks = {asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(todo)))}
            stopper = asyncio.ensure_future(stop.wait())
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
                stopper.cancel()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(stopper, *tasks, return_exceptions=True)
                bar.close()
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
    )


def run_batch(
    fn: Callable[[T], Any],
    items: Iterable[T],
    results_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> BatchSummary:
    """Run ``fn`` (sync or async) over the items not yet completed in the checkpoint, then finalize.

    Options (all keyword): ``key`` (item → id; default: the item is its id), ``name`` ("results"),
    ``config`` (JSON-able dict stored and checked on resume), ``concurrency`` (1: calls at once; sync
    functions run in daemon threads), ``rpm`` (None: call starts per minute, retries included), ``retries``
    (3) with exponential ``backoff`` (1.0 s, doubled per retry, capped at ``max_backoff`` 60 s, with jitter)
    or the error's Retry-After, ``retry_on`` (exception types to retry; others fail at once), ``progress``
    (True: a bar on stderr), ``interval``/``interval_seconds`` (fsync knobs), ``allow_config_change``,
    ``allow_failures`` (finalize even if items failed), ``finalize`` (True), ``checkpoint`` (use this
    Checkpoint instead). ``results_dir`` defaults to ``$TETHER_RESULTS_DIR``.

    Finalizes (writes ``<name>.json``) when every item succeeded. Failed items are journaled and retried by
    the next call. On Ctrl-C or SIGTERM it stops starting items, abandons those in flight (not recorded),
    closes the journal and raises ``KeyboardInterrupt`` (SIGINT) or ``SystemExit(128 + signal)`` (SIGTERM).
    """
    summary = asyncio.run(arun_batch(fn, items, results_dir, **options))
    if summary.interrupted is not None:
        if summary.interrupted == int(signal.SIGINT):
            raise KeyboardInterrupt
        raise SystemExit(128 + summary.interrupted)
    return summary
