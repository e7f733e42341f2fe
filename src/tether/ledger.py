"""The one ledger of commitments, pure: may a rental at this price be committed now?

Every dollar is committed before it is spent. A rental is reserved at the price that will be billed (the bid plus
storage for a bid offer, the quoted ``dph_total`` on demand) and checked, under the rent lock that reserves the
offer, against every budget at once (:func:`refusal`):

- **per command** (:class:`Budget`: a managed run's ``--max-usd``): what the scope has spent on instances now gone,
  plus, for each of its rentals still held or in flight, the larger of what it spent and what it was committed
  (rate times committed hours), plus the candidate's rate times the budget's hours;
- **hourly** (``[policy] max_hourly_usd``): the burn of every live rental (its full rate while running, loading or
  reserved; its storage rate while stopped) plus every reservation in flight, plus the candidate's rate;
- **daily** and **total** (``max_daily_usd``, ``max_total_usd``): what was spent (today, UTC; all time), plus what
  every held rental is still committed to spend, plus the candidate's commitment; an amount already at the limit
  refuses any new rental.

A price that is not a finite non-negative number is malformed, never free: :func:`malformed` says so, and
:func:`refusal` refuses such a candidate before any budget is looked at. Nothing here reads a file or a clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard

__all__ = ["Budget", "Candidate", "Commitment", "Limits", "malformed", "refusal", "valid_price"]

EPS = 1e-9


def valid_price(value: Any) -> TypeGuard[float]:
    """Whether ``value`` is a price: a finite non-negative number (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value >= 0


def malformed(value: Any) -> str | None:
    """Why ``value`` is not a price, or None when it is one."""
    return None if valid_price(value) else f"{value!r} is not a finite non-negative number"


@dataclass(frozen=True)
class Budget:
    """What one command (a managed run) may commit: at most ``max_usd`` in all over the group ``scope``, each
    rental committed for ``hours``."""

    scope: str
    max_usd: float | None
    hours: float


@dataclass(frozen=True)
class Limits:
    """``[policy]``'s limits on every rental of this machine (None: no limit)."""

    max_hourly_usd: float | None = None
    max_daily_usd: float | None = None
    max_total_usd: float | None = None


@dataclass(frozen=True)
class Commitment:
    """One rental held or in flight (or one that is gone, for what its scope spent).

    ``rate``: $/hr it bills (or will bill) while it runs; ``hours``: the hours it was committed for (0: none stated);
    ``spent``: dollars it has cost so far; ``burn``: $/hr it counts against the hourly cap now (0 when gone).
    """

    name: str
    scope: str | None
    rate: float
    hours: float
    spent: float
    burn: float
    live: bool

    @property
    def committed(self) -> float:
        """Dollars this rental is committed to in all: what it spent, or its commitment when that is larger."""
        if not self.live:
            return self.spent
        return max(self.spent, self.rate * self.hours)

    @property
    def outstanding(self) -> float:
        """Dollars committed but not yet spent."""
        return self.committed - self.spent


@dataclass(frozen=True)
class Candidate:
    """The exact rental (or start) about to be made: ``rate`` is the $/hr that will be billed, ``what`` says what
    is done, e.g. ``renting offer 123``."""

    rate: float
    what: str


def _usd(x: float) -> str:
    return f"${x:.4f}"


def refusal(
    candidate: Candidate,
    commitments: Iterable[Commitment],
    limits: Limits,
    *,
    budget: Budget | None = None,
    spent_total: float = 0.0,
    spent_today: float = 0.0,
) -> str | None:
    """Why committing ``candidate`` would cross a budget (one sentence, without its final stop), or None."""
    held = list(commitments)
    if not valid_price(candidate.rate):
        why = malformed(candidate.rate)
        return f"{candidate.what} is refused: its price is malformed ({why}), and a malformed price is not free"
    hours = budget.hours if budget is not None and budget.hours > 0 else 0.0
    new_usd = candidate.rate * hours
    if budget is not None and budget.max_usd is not None:
        mine = [c for c in held if c.scope == budget.scope]
        used = sum(c.committed for c in mine)
        projected = used + new_usd
        if projected > budget.max_usd + EPS:
            spent = sum(c.spent for c in mine)
            return (
                f"{candidate.what} at {_usd(candidate.rate)}/hr for about {hours * 60:.0f} min would bring "
                f"the run to {_usd(projected)} ({_usd(spent)} spent, {_usd(projected - spent)} committed), past "
                f"--max-usd {_usd(budget.max_usd)}"
            )
    if limits.max_hourly_usd is not None:
        burn = sum(c.burn for c in held if c.live)
        if burn + candidate.rate > limits.max_hourly_usd + EPS:
            return (
                f"{candidate.what} at {_usd(candidate.rate)}/hr would raise the burn from {_usd(burn)}/hr "
                f"(every live rental and reservation in flight) to {_usd(burn + candidate.rate)}/hr, past "
                f"max_hourly_usd {_usd(limits.max_hourly_usd)}/hr"
            )
    outstanding = sum(c.outstanding for c in held if c.live)
    for limit, spent, label in (
        (limits.max_daily_usd, spent_today, "max_daily_usd (today, UTC)"),
        (limits.max_total_usd, spent_total, "max_total_usd"),
    ):
        if limit is None:
            continue
        projected = spent + outstanding + new_usd
        if spent >= limit - EPS or projected > limit + EPS:
            return (
                f"{candidate.what} at {_usd(candidate.rate)}/hr would bring spending to {_usd(projected)} "
                f"({_usd(spent)} spent, {_usd(outstanding + new_usd)} committed), past {label} {_usd(limit)}"
            )
    return None
