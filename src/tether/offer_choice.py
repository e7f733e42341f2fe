"""Why an offer cheaper than the one rented was passed over, in words (pure).

Renting does not simply take the cheapest offer: a machine avoided by the memory of machines, one that failed its
preflight during this ``up``, a price that is not a number, an offer no bid can be placed on, an offer another
rental on this machine took (or the provider refused) in the last few minutes, one whose create failed, and the
expected-cost ranking each pass over an offer. Each is gathered as a :class:`Fact` (kind and words) while choosing;
:func:`passed_over` then gives every offer cheaper than the one rented with its reason (each offer once, cheapest
first), and :func:`line` is the sentence said for one (each reason is said once, when it is found: an avoided machine
as the offers are filtered, a taken offer as it is passed over, the ranking just before the create, a failed create
in the renting code's own words).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tether.fmt import iso

FactKind = Literal["avoided", "failed_preflight", "bad_price", "no_bid", "taken", "tried", "ranked_after"]
#: How a taken mark came to be (``rent-taken.json``): a rental made an instance on it, the provider refused a
#: rental of it (someone else has it, or a bid too low), or the instance made on it did not come up or failed its
#: preflight.
MarkKind = Literal["rented", "refused", "failed"]


@dataclass(frozen=True)
class Fact:
    """Why one offer was passed over: its kind and the words said."""

    kind: FactKind
    words: str


@dataclass(frozen=True)
class Skipped:
    """An offer cheaper than the one rented (or with no valid price), and why it was passed over."""

    offer_id: int
    price: float | None
    kind: FactKind
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"offer_id": self.offer_id, "dph_total": self.price, "kind": self.kind, "reason": self.reason}


def _ago(seconds: float) -> str:
    return f"{max(0.0, seconds):.0f} s ago"


def rental_words(label: str | None) -> str:
    """``box of project proj`` for the label ``tether:proj:box``; the label as it is otherwise."""
    if label and label.startswith("tether:") and label.count(":") >= 2:
        _tag, project, name = label.split(":", 2)
        return f"{name} of project {project}"
    return label or "another rental"


def taken(kind: MarkKind, at: float, now: float, ttl_s: float, label: str | None = None) -> Fact:
    """An offer marked taken ``now - at`` seconds ago; it is tried again once ``ttl_s`` has passed."""
    again = f"; tether tries it again in {max(0.0, ttl_s - (now - at)):.0f} s"
    if kind == "refused":
        return Fact("taken", f"the provider refused a rental of it {_ago(now - at)}{again}")
    if kind == "failed":
        return Fact(
            "taken", f"a rental of it failed {_ago(now - at)} (it did not come up, or failed its preflight){again}"
        )
    return Fact("taken", f"taken by another rental on this machine ({rental_words(label)}) {_ago(now - at)}{again}")


def avoided(machine: int, until: float, why: str) -> Fact:
    return Fact(
        "avoided",
        f"machine {machine} is avoided until {iso(until)} (its last rental: {why}); "
        f"`tether machines forget {machine}` rents it again",
    )


def failed_preflight(machine: int, why: str) -> Fact:
    return Fact("failed_preflight", f"machine {machine} {why}")


def bad_price(price: float) -> Fact:
    return Fact("bad_price", f"its price ({price}) is not a finite non-negative number")


def no_bid(min_bid: float | None, bid_usd: float | None) -> Fact:
    if min_bid is None:
        return Fact("no_bid", "it names no minimum bid, so no bid can be placed on it")
    bid = f"the profile's bid ${bid_usd:.4f}/hr is below" if bid_usd else "no bid meets"
    return Fact("no_bid", f"{bid} its minimum bid ${min_bid:.4f}/hr")


def tried(why: str) -> Fact:
    return Fact("tried", f"tried first: {why}")


def ranked_after(
    chosen_id: int, expected: float, chosen_expected: float, hours: float, failure: float, ready_minutes: float
) -> Fact:
    """Cheaper, yet the expected cost of the work on it (price × (hours + time to a working server), plus the time a
    failed rental wastes) is higher than on the offer rented."""
    return Fact(
        "ranked_after",
        f"ranked after offer {chosen_id} by expected cost: ${expected:.4f} for {hours:g} h of work with its "
        f"{failure:.0%} chance of a failed rental and {ready_minutes:.0f} min to a working server, "
        f"against ${chosen_expected:.4f}",
    )


def passed_over(
    offers: Iterable[Any], chosen_id: int, price_of: Callable[[Any], float], facts: Mapping[int, Fact]
) -> list[Skipped]:
    """Every offer (anything with an ``id``) cheaper than the one rented, or whose price is not a number, with why
    it was passed over (``facts``; an offer with none was not reached), cheapest first, each once."""
    prices = {o.id: price_of(o) for o in offers}
    chosen = prices.get(chosen_id)
    out: dict[int, Skipped] = {}
    for oid, price in prices.items():
        if oid == chosen_id or oid in out:
            continue
        valid = math.isfinite(price) and price >= 0
        if valid and chosen is not None and price >= chosen:
            continue
        fact = facts.get(oid) or (Fact("bad_price", bad_price(price).words) if not valid else None)
        if fact is None:
            fact = Fact("ranked_after", f"ranked after offer {chosen_id}")
        out[oid] = Skipped(oid, price if valid else None, fact.kind, fact.words)
    return sorted(out.values(), key=lambda s: (s.price is None, s.price or 0.0, s.offer_id))


def line(offer_id: int, price: float | None, reason: str) -> str:
    """The sentence said for one offer passed over."""
    shown = f"${price:.4f}/hr" if price is not None else "no valid price"
    return f"skipped offer {offer_id} ({shown}): {reason}"
