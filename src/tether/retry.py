"""Backoff: the one retry schedule of tether (stdlib only, Python 3.8: the checkpoint library, which runs on
servers, uses it, and ``tether up`` copies it there).

The wait before retry ``attempt + 1`` (``attempt`` 0 is the first retry) is :func:`backoff_step`:
``min(cap, first * factor**attempt)``. Who waits with many others at once spreads it with :func:`equal_jitter`
(between half and all of it); a wait that must not be shorter than asked is spread with :func:`jitter_up`.
Users: :class:`Backoff` for the transports' connection retries (no jitter: one client, one host), the Vast.ai
client (``jitter_up``), the batch runner (``equal_jitter``; a Retry-After with ``jitter_up``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


def backoff_step(attempt: int, first: float, cap: float, factor: float = 2.0) -> float:
    """Seconds to wait before retry ``attempt + 1``: ``min(cap, first * factor**attempt)`` (never negative)."""
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more (got {attempt})")
    try:
        step = first * factor**attempt
    except OverflowError:
        step = cap
    return max(0.0, min(cap, step))


def equal_jitter(seconds: float) -> float:
    """Between half and all of ``seconds``, at random: callers that back off together do not come back together."""
    return seconds / 2 + random.uniform(0.0, seconds / 2)


def jitter_up(seconds: float, share: float = 0.1) -> float:
    """``seconds`` plus up to ``share`` of it, at random: never shorter than asked (a Retry-After, a minimum)."""
    return seconds * (1.0 + random.uniform(0.0, share))


@dataclass(frozen=True)
class Backoff:
    """A bounded retry schedule: ``retries`` extra attempts, waiting ``first``, ``first*factor``, … (capped)."""

    retries: int = 3
    first: float = 1.0
    factor: float = 2.0
    cap: float = 15.0

    def step(self, attempt: int) -> float:
        """The wait before retry ``attempt + 1``."""
        return backoff_step(attempt, self.first, self.cap, self.factor)

    def delays(self) -> list[float]:
        """Every wait of the schedule, in order (``retries`` of them)."""
        return [self.step(i) for i in range(self.retries)]
