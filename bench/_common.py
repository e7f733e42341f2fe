"""Helpers shared by the benchmarks: medians of repeated timings and the final one-line JSON."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` once; return (seconds, its return value)."""
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def note(text: str) -> None:
    """Human-readable progress of a benchmark, on stderr."""
    print(text, file=sys.stderr, flush=True)


def emit(figures: dict[str, Any]) -> None:
    """Print the benchmark's figures as one JSON object on the last line of stdout."""
    print(json.dumps(figures, sort_keys=True), flush=True)
