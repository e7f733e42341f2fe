"""Throughput of run_batch on simulated API calls against its theoretical bound and the runbook's sequential loop.

2,000 calls of 100 ms ± 20 ms (uniform jitter), concurrency 32, a rate limit above what 32 calls in flight can
reach. bound = min(concurrency / mean latency, rpm / 60); fraction_of_bound = achieved items/s / bound. Both an
async item function (asyncio.sleep) and a sync one (time.sleep, run in threads) are measured.

The sequential time (the runbook's loop, one call after another) is estimated from a sample of 50 sequential
calls, scaled to 2,000 items, rather than spending 200 s on it; the JSON says so.

Run: python bench/throughput.py   (last line: JSON figures)
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, note
from tether.checkpoint import run_batch

N = 2000
LATENCY = 0.100
JITTER = 0.020
CONCURRENCY = 32
RPM = 30_000  # 500/s: above the 320/s that 32 calls of 100 ms in flight allow
SEQUENTIAL_SAMPLE = 50


async def call_async(i: int) -> dict[str, int]:
    await asyncio.sleep(LATENCY + random.uniform(-JITTER, JITTER))
    return {"i": i}


def call_sync(i: int) -> dict[str, int]:
    time.sleep(LATENCY + random.uniform(-JITTER, JITTER))
    return {"i": i}


def measure(fn: object) -> float:
    folder = Path(tempfile.mkdtemp(prefix="bench-tp-"))
    try:
        t0 = time.perf_counter()
        summary = run_batch(fn, list(range(N)), folder, concurrency=CONCURRENCY, rpm=RPM, progress=False)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - t0
        assert summary.completed == N and summary.final_path is not None
        return elapsed
    finally:
        shutil.rmtree(folder)


def main() -> None:
    bound = min(CONCURRENCY / LATENCY, RPM / 60.0)
    async_s = measure(call_async)
    note(f"async: {async_s:.2f} s")
    sync_s = measure(call_sync)
    note(f"sync (threads): {sync_s:.2f} s")
    t0 = time.perf_counter()
    for i in range(SEQUENTIAL_SAMPLE):  # the runbook's loop: one call after another
        call_sync(i)
    per_call = (time.perf_counter() - t0) / SEQUENTIAL_SAMPLE
    sequential_s = per_call * N
    note(f"sequential estimate: {sequential_s:.1f} s")
    emit(
        {
            "items": N,
            "latency_s": LATENCY,
            "jitter_s": JITTER,
            "concurrency": CONCURRENCY,
            "rpm": RPM,
            "bound_items_per_s": bound,
            "async_s": round(async_s, 3),
            "async_items_per_s": round(N / async_s, 1),
            "fraction_of_bound": round(N / async_s / bound, 3),
            "sync_s": round(sync_s, 3),
            "sync_fraction_of_bound": round(N / sync_s / bound, 3),
            "sequential_s_estimated": round(sequential_s, 1),
            "sequential_estimate": f"from {SEQUENTIAL_SAMPLE} sequential calls scaled to {N}",
            "speedup_vs_sequential": round(sequential_s / async_s, 1),
            "goal": "fraction_of_bound >= 0.85",
        }
    )


if __name__ == "__main__":
    main()
