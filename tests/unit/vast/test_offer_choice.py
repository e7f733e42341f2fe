"""Why an offer cheaper than the one rented was passed over: the pure words and the list `up` carries."""

from __future__ import annotations

import math

from tether import offer_choice
from tether.providers.base import Offer


def offer(offer_id: int, price: float) -> Offer:
    return Offer(id=offer_id, dph_total=price, machine_id=offer_id % 1000)


def price(o: Offer) -> float:
    return o.dph_total


def test_every_cheaper_offer_has_its_reason_cheapest_first_and_dearer_ones_none() -> None:
    offers = [offer(4, 0.30), offer(1, 0.0472), offer(2, 0.09), offer(3, 0.1676), offer(5, 0.12)]
    facts = {
        1: offer_choice.taken("rented", at=1000.0, now=1040.0, ttl_s=300.0, label="tether:proj:box2"),
        2: offer_choice.avoided(77, until=1_796_774_400.0, why="failed: shows 0 GPU(s)"),
        4: offer_choice.tried("never seen"),  # dearer than the one rented: not listed
    }
    skipped = offer_choice.passed_over(offers, 3, price, facts)
    assert [(s.offer_id, s.price, s.kind) for s in skipped] == [
        (1, 0.0472, "taken"),
        (2, 0.09, "avoided"),
        (5, 0.12, "ranked_after"),
    ]
    assert skipped[0].reason == (
        "taken by another rental on this machine (box2 of project proj) 40 s ago; tether tries it again in 260 s"
    )
    assert skipped[1].reason.startswith("machine 77 is avoided until 2026-12-09T00:00:00Z (its last rental: failed")
    assert skipped[2].reason == "ranked after offer 3"
    assert offer_choice.line(1, 0.0472, skipped[0].reason).startswith("skipped offer 1 ($0.0472/hr): taken by")
    assert skipped[0].to_json() == {"offer_id": 1, "dph_total": 0.0472, "kind": "taken", "reason": skipped[0].reason}


def test_the_cheapest_rented_passes_nothing_over() -> None:
    offers = [offer(1, 0.05), offer(2, 0.05), offer(3, 0.09)]
    assert offer_choice.passed_over(offers, 1, price, {}) == []


def test_an_offer_without_a_valid_price_is_listed_with_no_price() -> None:
    offers = [offer(1, math.nan), offer(2, math.inf), offer(3, 0.2)]
    skipped = offer_choice.passed_over(offers, 3, price, {})
    assert [(s.offer_id, s.price, s.kind) for s in skipped] == [(1, None, "bad_price"), (2, None, "bad_price")]
    assert "not a finite non-negative number" in skipped[0].reason


def test_each_mark_kind_says_how_the_offer_was_taken() -> None:
    refused = offer_choice.taken("refused", at=0.0, now=10.0, ttl_s=300.0)
    failed = offer_choice.taken("failed", at=0.0, now=299.6, ttl_s=300.0)
    assert refused.words == "the provider refused a rental of it 10 s ago; tether tries it again in 290 s"
    assert failed.words.startswith("a rental of it failed 300 s ago") and failed.words.endswith("again in 0 s")
    assert offer_choice.rental_words("agent-1") == "agent-1"
    assert offer_choice.rental_words(None) == "another rental"


def test_the_ranking_reason_names_the_expected_costs_and_the_failure_chance() -> None:
    fact = offer_choice.ranked_after(9, expected=0.21, chosen_expected=0.17, hours=1.0, failure=0.3, ready_minutes=10)
    assert fact.kind == "ranked_after"
    assert fact.words == (
        "ranked after offer 9 by expected cost: $0.2100 for 1 h of work with its 30% chance of a failed rental and "
        "10 min to a working server, against $0.1700"
    )


def test_no_bid_and_a_failed_preflight_are_said_in_words() -> None:
    assert offer_choice.no_bid(None, 0.1).words == "it names no minimum bid, so no bid can be placed on it"
    assert offer_choice.no_bid(0.3, 0.2).words == "the profile's bid $0.2000/hr is below its minimum bid $0.3000/hr"
    assert offer_choice.failed_preflight(77, "failed its preflight just now (no GPU)").words == (
        "machine 77 failed its preflight just now (no GPU)"
    )


def test_each_offer_is_listed_once_even_when_the_search_repeats_it() -> None:
    offers = [offer(1, 0.05), offer(1, 0.05), offer(2, 0.09)]
    skipped = offer_choice.passed_over(offers, 2, price, {1: offer_choice.tried("gone")})
    assert [(s.offer_id, s.reason) for s in skipped] == [(1, "tried first: gone")]
