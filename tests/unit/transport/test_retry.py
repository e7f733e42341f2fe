"""The one backoff (``tether.retry``) that the transports, the Vast.ai client and the batch runner share."""

from __future__ import annotations

import pytest

from tether.retry import Backoff, backoff_step, equal_jitter, jitter_up
from tether.transport.base import Backoff as TransportBackoff


def test_the_step_doubles_from_first_and_stops_at_the_cap() -> None:
    assert [backoff_step(a, 0.5, 3.0) for a in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_step(10_000, 1.0, 60.0) == 60.0  # no overflow, however many failures
    with pytest.raises(ValueError, match="attempt"):
        backoff_step(-1, 1.0, 60.0)


def test_the_transports_schedule_is_the_same_backoff() -> None:
    assert TransportBackoff is Backoff
    schedule = Backoff(retries=4, first=1.0, factor=3.0, cap=10.0)
    assert schedule.delays() == [1.0, 3.0, 9.0, 10.0] == [schedule.step(a) for a in range(4)]
    assert Backoff(retries=0).delays() == []


def test_jitters_stay_within_their_bounds() -> None:
    spread = [equal_jitter(2.0) for _ in range(200)]
    assert all(1.0 <= s <= 2.0 for s in spread) and len(set(spread)) > 1
    up = [jitter_up(5.0) for _ in range(200)]
    assert all(5.0 <= s <= 5.5 for s in up) and len(set(up)) > 1
