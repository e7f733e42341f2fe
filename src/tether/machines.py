"""A memory of machines: how each rental on a provider's machine went, and what that says about the next one.

Each rental's outcome is kept per ``machine_id`` (local state, table ``machine_outcomes``): the preflight passed or
failed (and why), minutes to ``running``, set-up minutes, preempted, vanished. A machine whose last bad outcome
(a failed preflight, a vanish; a preemption is remembered, not avoided) is younger than ``[vast] avoid_days`` is
skipped when renting, with a line saying so; ``tether machines`` lists the memory and ``tether machines forget ID``
clears one.

The ranking prices reliability (pure, :func:`expected_cost`): among the offers that fit, the expected cost of the
experiment on each is its price × (the experiment's estimated hours + the expected hours to a working server),
where a working server takes this machine's mean past minutes to running and set-up (else a default), and a
failed attempt (probability ``1 - reliability``, raised by this machine's past failures) wastes that time once
more; a bid (interruptible) offer adds the expected cost of a preemption (a restart's worth of minutes at the
price, times the share of rentals that machine lost to preemption, at least ``1 - reliability``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

OutcomeKind = Literal["passed", "failed", "vanished", "preempted", "unready"]
BAD: frozenset[str] = frozenset({"failed", "vanished", "unready"})
DEFAULT_READY_MINUTES = 10.0
RESTART_MINUTES = 10.0


@dataclass(frozen=True)
class Outcome:
    """One rental's outcome on one machine."""

    machine_id: int
    provider: str
    ts: float
    outcome: OutcomeKind
    why: str | None = None
    instance: str | None = None
    minutes_to_running: float | None = None
    setup_minutes: float | None = None


@dataclass(frozen=True)
class Avoided:
    machine_id: int
    until: float
    why: str


def avoided(outcomes: Iterable[Outcome], now: float, avoid_days: float) -> dict[int, Avoided]:
    """Machines to skip now (pure): those whose latest bad outcome is younger than ``avoid_days`` and was not
    followed by a passed preflight."""
    latest: dict[int, Outcome] = {}
    for o in sorted(outcomes, key=lambda o: o.ts):
        if o.outcome in BAD or o.outcome == "passed":
            latest[o.machine_id] = o
    out: dict[int, Avoided] = {}
    for machine, o in latest.items():
        until = o.ts + avoid_days * 86400.0
        if o.outcome in BAD and now < until:
            out[machine] = Avoided(machine, until, f"{o.outcome}: {o.why}" if o.why else o.outcome)
    return out


def ready_minutes(outcomes: Sequence[Outcome]) -> float:
    """Expected minutes from rental to a working server on this machine (pure): its past mean, else the default."""
    seen = [
        (o.minutes_to_running or 0.0) + (o.setup_minutes or 0.0)
        for o in outcomes
        if o.outcome == "passed" and o.minutes_to_running is not None
    ]
    return sum(seen) / len(seen) if seen else DEFAULT_READY_MINUTES


def failure_share(outcomes: Sequence[Outcome], reliability: float) -> float:
    """The chance a rental on this machine fails before the experiment runs (pure): ``1 - reliability``, raised by
    the machine's own record (Laplace-smoothed share of bad outcomes)."""
    base = min(1.0, max(0.0, 1.0 - reliability)) if math.isfinite(reliability) else 1.0
    rentals = [o for o in outcomes if o.outcome in BAD or o.outcome == "passed"]
    if not rentals:
        return base
    bad = sum(1 for o in rentals if o.outcome in BAD)
    return max(base, (bad + base) / (len(rentals) + 1))


def preemption_share(outcomes: Sequence[Outcome], reliability: float) -> float:
    passed = [o for o in outcomes if o.outcome == "passed"]
    lost = sum(1 for o in outcomes if o.outcome == "preempted")
    base = min(1.0, max(0.0, 1.0 - reliability)) if math.isfinite(reliability) else 1.0
    return max(base, lost / len(passed)) if passed else base


def expected_cost(
    price_dph: float, hours: float, reliability: float, outcomes: Sequence[Outcome], *, interruptible: bool
) -> float:
    """The experiment's expected cost on one offer (pure; see the module docstring). Infinite for a price that is
    not a finite non-negative number."""
    if not math.isfinite(price_dph) or price_dph < 0 or not math.isfinite(hours) or hours < 0:
        return math.inf
    ready_h = ready_minutes(outcomes) / 60.0
    fail = failure_share(outcomes, reliability)
    cost = price_dph * (hours + ready_h) + fail * price_dph * ready_h
    if interruptible:
        cost += preemption_share(outcomes, reliability) * price_dph * RESTART_MINUTES / 60.0
    return cost
