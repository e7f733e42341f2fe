"""Crash torture: a real batch with concurrency > 1 is SIGKILLed at random moments and resumed each time.

The final results.json must equal a clean run's, and after each crash the items computed again must be at most
the items that were in flight (the concurrency). Each worker call appends "<run> <id>" to a side log before it
computes, so the test knows which items every run started.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

N_ITEMS = 2500
CONCURRENCY = 4
KILLS = 22

WORKER = textwrap.dedent(
    """
    import asyncio, os, random, sys, time
    from tether.checkpoint import run_batch

    results_dir, side_log, run_no, mode, n, concurrency = sys.argv[1:7]
    log_fd = os.open(side_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def result_of(i):
        return {"id": i, "square": i * i, "text": "x" * (i % 97)}

    def started(i):
        os.write(log_fd, (run_no + " " + str(i) + "\\n").encode())

    def sync_fn(i):
        started(i)
        time.sleep(random.uniform(0.002, 0.015))
        return result_of(i)

    async def async_fn(i):
        started(i)
        await asyncio.sleep(random.uniform(0.002, 0.015))
        return result_of(i)

    fn = async_fn if mode == "async" else sync_fn
    items = list(range(int(n)))
    run_batch(fn, items, results_dir, concurrency=int(concurrency), progress=False, config={"exp": "torture"})
    """
)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def start(procs: list[subprocess.Popen[bytes]], script: Path, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(script), *args, str(N_ITEMS), str(CONCURRENCY)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)
    return proc


def journal_ids(path: Path) -> set[int]:
    """Ids with a complete successful record; a torn last line (the kill hit a write) is not complete."""
    if not path.exists():
        return set()
    lines = path.read_bytes().split(b"\n")[1:-1]  # header first; the part after the last newline is torn
    return {json.loads(line)["id"] for line in lines if json.loads(line)["ok"]}


def started_by_run(side_log: Path) -> dict[int, list[int]]:
    runs: dict[int, list[int]] = {}
    if side_log.exists():
        for line in side_log.read_text().splitlines():
            run, item = line.split()
            runs.setdefault(int(run), []).append(int(item))
    return runs


def wait_until_started(side_log: Path, run_no: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not started_by_run(side_log).get(run_no):
        assert proc.poll() is None, f"run {run_no} exited with {proc.returncode} before starting an item"
        assert time.monotonic() < deadline, f"run {run_no} started no item in 30 s"
        time.sleep(0.01)


def test_sigkill_at_random_moments_loses_only_in_flight_items(
    tmp_path: Path, launcher: list[subprocess.Popen[bytes]]
) -> None:
    seed = int(os.environ.get("TORTURE_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)

    clean = tmp_path / "clean"
    proc = start(launcher, script, str(clean), str(tmp_path / "clean.log"), "0", "sync")
    assert proc.wait(timeout=60) == 0
    expected = json.loads((clean / "results.json").read_text())
    assert expected["completed"] == N_ITEMS

    results = tmp_path / "tortured"
    journal = results / "results.journal.jsonl"
    side_log = tmp_path / "side.log"
    kills = 0
    run_no = 0
    while kills < KILLS:
        run_no += 1
        before = journal_ids(journal)
        mode = "async" if run_no % 2 else "sync"
        proc = start(launcher, script, str(results), str(side_log), str(run_no), mode)
        if run_no % 4 == 0:
            time.sleep(rng.uniform(0.0, 0.4))  # anywhere from start-up (journal replay and repair) on
        else:
            wait_until_started(side_log, run_no, proc)
            time.sleep(rng.uniform(0.0, 0.2))  # a random moment while items are in flight
        assert proc.poll() is None, f"the batch finished before kill {kills + 1} (seed {seed})"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        after = journal_ids(journal)
        started = started_by_run(side_log).get(run_no, [])
        assert not set(started) & before, f"run {run_no} recomputed completed items (seed {seed})"
        lost = set(started) - after
        assert len(lost) <= CONCURRENCY, f"run {run_no} lost {len(lost)} items (seed {seed})"
        assert len(started) == len(set(started)), f"run {run_no} started an item twice (seed {seed})"

    run_no += 1
    proc = start(launcher, script, str(results), str(side_log), str(run_no), "sync")
    assert proc.wait(timeout=60) == 0
    final = json.loads((results / "results.json").read_text())
    assert final == expected
    ids = [r["id"] for r in final["results"]]
    assert ids == list(range(N_ITEMS))  # no duplicate, no missing item, in item order
    assert sorted(p.name for p in results.iterdir()) == ["results.json"]

    starts = started_by_run(side_log)
    total_starts = sum(len(v) for v in starts.values())
    assert total_starts - N_ITEMS <= CONCURRENCY * kills
    assert sum(1 for run in range(1, run_no) if starts.get(run)) >= KILLS * 3 // 4  # kills hit computing runs
