"""The adaptive window's rule, without a clock: why adaptive concurrency is refused less than a fixed one.

A round of calls that a provider pushes back lowers the limit once, not once per refused call (the calls in flight
then were all started under the old limit); a fixed window never moves. The integration tests show the same with
the real SDK client; the rejection ratio under a real rate limit is timing and belongs to bench/ratelimit.py.
"""

from __future__ import annotations

from tether.checkpoint.batch import DECREASE, FIRST_DECREASE, _Window


def test_pushbacks_of_one_round_lower_the_limit_once() -> None:
    window = _Window(32, adaptive=True)
    for _ in range(10):
        window.pushback(0, None)  # ten refusals of calls started in round 0
    assert window.epoch == 1 and window.cap == int(32 * FIRST_DECREASE) == window.low
    window.pushback(1, None)  # a call of the new round: one more, gentler decrease
    assert window.epoch == 2 and window.cap == int(32 * FIRST_DECREASE * DECREASE)


def test_successes_raise_the_limit_again_one_call_per_round() -> None:
    window = _Window(32, adaptive=True)
    window.pushback(0, None)
    for _ in range(20):  # a little more than one round of 16: each adds 1/limit
        window.success(0.1)
    assert window.cap == 17 and window.low == 16


def test_a_fixed_window_never_moves() -> None:
    window = _Window(32, adaptive=False)
    for epoch in range(5):
        window.pushback(epoch, None)
        window.success(0.1)
    assert window.cap == window.low == 32 and window.epoch == 0
