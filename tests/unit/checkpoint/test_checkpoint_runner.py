"""The batch runner: concurrency, rate limit, retries, failures, and interruption by real signals."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.checkpoint.ckpt_helpers import StartScript, journal_records, wait_for
from tether.checkpoint import RetryAfter, backoff_delay, run_batch
from tether.errors import CheckpointError, RateLimited


def test_sync_function_with_concurrency_writes_results_in_item_order(tmp_path: Path) -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    gate = threading.Event()

    def fn(i: int) -> int:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            if state["now"] == 4:
                gate.set()
        gate.wait(timeout=10)  # the first four calls meet here: concurrency is really 4
        with lock:
            state["now"] -= 1
        return i * i

    summary = run_batch(fn, list(range(40)), tmp_path, concurrency=4, progress=False)
    assert state["peak"] == 4
    assert summary.completed == 40 and summary.failed == 0 and summary.skipped == 0
    assert summary.final_path == tmp_path / "results.json"
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc == {"completed": 40, "total": 40, "results": [i * i for i in range(40)]}


def test_async_function_never_exceeds_concurrency(tmp_path: Path) -> None:
    state = {"now": 0, "peak": 0}

    async def fn(item: dict[str, Any]) -> str:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.001)
        state["now"] -= 1
        return str(item["n"])

    items = [{"key": f"k{n}", "n": n} for n in range(30)]
    run_batch(fn, items, tmp_path, key=lambda it: it["key"], concurrency=5, progress=False)
    assert state["peak"] == 5
    assert json.loads((tmp_path / "results.json").read_text())["results"] == [str(n) for n in range(30)]


def test_failing_items_are_recorded_not_finalized_and_retried_on_resume(tmp_path: Path) -> None:
    calls: list[int] = []

    def flaky(i: int) -> int:
        calls.append(i)
        if i in (3, 5):
            raise ConnectionError(f"item {i} unreachable")
        return i

    summary = run_batch(flaky, list(range(8)), tmp_path, retries=2, backoff=0.001, progress=False)
    assert summary.completed == 6 and summary.failed == 2 and summary.final_path is None
    assert calls.count(3) == 3 and calls.count(5) == 3 and calls.count(0) == 1
    failures = [r for r in journal_records(tmp_path / "results.journal.jsonl") if not r["ok"]]
    assert {r["id"]: r["error"] for r in failures} == {
        3: "ConnectionError: item 3 unreachable",
        5: "ConnectionError: item 5 unreachable",
    }
    assert not (tmp_path / "results.json").exists()

    calls.clear()
    summary = run_batch(lambda i: i, list(range(8)), tmp_path, progress=False)
    assert summary.completed == 2 and summary.skipped == 6 and summary.final_path is not None
    assert json.loads(summary.final_path.read_text())["results"] == list(range(8))


def test_allow_failures_finalizes_without_the_failed_items(tmp_path: Path) -> None:
    def fn(i: int) -> int:
        if i == 1:
            raise ValueError("no")
        return i

    summary = run_batch(fn, [0, 1, 2], tmp_path, retries=0, allow_failures=True, progress=False)
    assert summary.final_path is not None
    assert json.loads(summary.final_path.read_text()) == {"completed": 2, "total": 3, "failed": 1, "results": [0, 2]}


def test_errors_not_in_retry_on_fail_at_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def fn(i: int) -> int:
        calls.append(i)
        raise KeyError(i)

    run_batch(fn, [1], tmp_path, retries=5, retry_on=(ConnectionError,), progress=False)
    assert calls == [1]


def test_unserializable_result_is_recorded_as_failure(tmp_path: Path) -> None:
    summary = run_batch(lambda i: {i} if i == 2 else i, [1, 2], tmp_path, progress=False)
    assert summary.failed == 1
    assert "not JSON-serializable" in journal_records(tmp_path / "results.journal.jsonl")[-1]["error"]


def test_duplicate_ids_refused_before_any_item_runs(tmp_path: Path) -> None:
    calls: list[object] = []
    items = [{"id": "a"}, {"id": "b"}, {"id": "a"}]
    with pytest.raises(CheckpointError, match='Duplicate item ids: "a"'):
        run_batch(calls.append, items, tmp_path, key=lambda it: it["id"], concurrency=2, progress=False)
    assert calls == []


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    starts: list[float] = []

    def fn(i: int) -> int:
        starts.append(time.monotonic())
        if len(starts) == 1:
            raise RetryAfter(0.3)
        if len(starts) == 2:
            raise RateLimited("429 from the API", retry_after=0.2)  # any exception with retry_after
        return i

    run_batch(fn, [1], tmp_path, retries=3, backoff=0.001, progress=False)
    assert len(starts) == 3
    assert starts[1] - starts[0] >= 0.29  # lower bounds only: a sleep never ends early
    assert starts[2] - starts[1] >= 0.19


def test_backoff_delay_is_exponential_with_jitter_and_capped() -> None:
    err = ConnectionError("x")
    for attempt, step in [(0, 1.0), (1, 2.0), (3, 8.0), (10, 30.0)]:
        delays = [backoff_delay(err, attempt, base=1.0, cap=30.0) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert 5.0 <= backoff_delay(RetryAfter(5), 0, base=1.0, cap=2.0) <= 5.5  # Retry-After beats the cap


def test_rate_limit_spaces_call_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limiter's own schedule, on a clock the test holds (the starts a loaded machine observes can bunch up
    after a late wake-up; the slots the limiter hands out never do)."""
    from tether.checkpoint import batch

    clock = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # the module batch reads its clock from
    monkeypatch.setattr(asyncio, "sleep", sleep)
    limiter = batch._RateLimiter(600)  # one call per 0.1 s

    def start() -> float:
        with contextlib.suppress(StopIteration):
            limiter.wait().send(None)
        return clock[0]

    starts = [start() for _ in range(6)]
    assert [round(b - a, 9) for a, b in itertools.pairwise(starts)] == [0.1] * 5
    clock[0] += 1.0  # a stall: the next calls are not fired in a burst to catch up
    late = [start() for _ in range(3)]
    assert [round(b - a, 9) for a, b in itertools.pairwise(late)] == [0.1] * 2 and late[0] == starts[-1] + 1.0


def test_progress_bar_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_batch(lambda i: i, [1, 2, 3], tmp_path, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "3/3" in err


BATCH_SCRIPT = """
import sys, time
from tether.checkpoint import run_batch

def fn(i):
    time.sleep(0.02)
    return {"i": i, "sq": i * i}

run_batch(fn, list(range(300)), sys.argv[1], concurrency=3, progress=False, config={"v": 1})
print("finished")
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_batch_leaves_a_clean_resumable_journal(
    tmp_path: Path, start_script: StartScript, sig: signal.Signals
) -> None:
    results = tmp_path / "results"
    journal = results / "results.journal.jsonl"
    proc = start_script(BATCH_SCRIPT, str(results))
    wait_for(lambda: journal.exists() and journal.read_bytes().count(b"\n") > 15, what="15 journaled items")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err
    else:
        assert proc.returncode in (130, -int(signal.SIGINT)), err
    assert b"finished" not in out
    records = journal_records(journal)  # every line complete: nothing half-written
    assert all(r["ok"] for r in records) and 15 <= len(records) < 300
    progress = json.loads((results / "results.progress.json").read_text())
    assert progress["completed"] == len(records) and progress["finished"] is False
    assert not (results / "results.json").exists()

    calls: list[int] = []

    def fn(i: int) -> dict[str, int]:
        calls.append(i)
        return {"i": i, "sq": i * i}

    summary = run_batch(fn, list(range(300)), results, progress=False, config={"v": 1})
    assert summary.skipped == len(records) and len(calls) == 300 - len(records)
    doc = json.loads((results / "results.json").read_text())
    assert doc["results"] == [{"i": i, "sq": i * i} for i in range(300)]


def test_sigterm_does_not_wait_for_a_stuck_call(tmp_path: Path, start_script: StartScript) -> None:
    script = """
import sys, time
from tether.checkpoint import run_batch

def fn(i):
    if i == 5:
        print("stuck", flush=True)
        time.sleep(3600)
    return i

run_batch(fn, list(range(10)), sys.argv[1], concurrency=1, progress=False)
"""
    proc = start_script(script, str(tmp_path))
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"stuck\n"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)  # an in-flight sync call is abandoned, not awaited
    assert proc.returncode == 143
    assert [r["id"] for r in journal_records(tmp_path / "results.journal.jsonl")] == [0, 1, 2, 3, 4]


def test_python_version_floor_is_honoured_by_the_sources() -> None:
    # The library runs on servers with an old python3: no syntax or stdlib newer than 3.8 is parsed here.
    import ast

    import tether.atomic
    import tether.checkpoint as pkg
    import tether.retry

    for path in [*Path(pkg.__file__).parent.glob("*.py"), Path(tether.retry.__file__), Path(tether.atomic.__file__)]:
        tree = ast.parse(path.read_text(), feature_version=(3, 8))
        for node in ast.walk(tree):
            assert not isinstance(node, ast.Match), path
            if isinstance(node, ast.ImportFrom):
                assert (
                    node.module is None
                    or node.module.startswith(("tether.checkpoint", "tether.errors", "tether.retry", "tether.atomic"))
                    or (node.module.split(".")[0] in sys.stdlib_module_names)
                ), (path, node.module)


def test_every_tether_module_the_library_imports_is_copied_to_servers() -> None:
    import ast

    import tether.checkpoint as pkg
    from tether.provision import server_lib_stage

    stage, _ = server_lib_stage()
    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tether."):
                parts = node.module.split(".")
                module = stage.joinpath(*parts)
                assert module.with_suffix(".py").is_file() or (module / "__init__.py").is_file(), (path, node.module)
