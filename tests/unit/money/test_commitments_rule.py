"""The one ledger of commitments, as a pure rule (tether.ledger.refusal): each budget, what counts against it, and
a malformed price."""

from __future__ import annotations

import math

import pytest

from tether.ledger import Budget, Candidate, Commitment, Limits, refusal, valid_price


def held(name: str, rate: float, hours: float = 0.0, spent: float = 0.0, scope: str | None = None) -> Commitment:
    """A live rental (running, loading or reserved): it burns its rate."""
    return Commitment(name, scope, rate, hours, spent, rate, True)


def gone(name: str, spent: float, scope: str | None = None) -> Commitment:
    return Commitment(name, scope, 1.0, 1.0, spent, 0.0, False)


def test_a_run_budget_counts_what_each_rental_committed_or_spent_and_the_candidate_at_its_own_price() -> None:
    budget = Budget("run1", 0.16, 5 / 60)
    siblings = [held("s0", 0.60, 5 / 60, scope="run1")]  # committed $0.05, nothing spent yet
    assert refusal(Candidate(0.78, "offer 2"), siblings, Limits(), budget=budget) is None  # 0.05 + 0.065
    siblings.append(held("s1", 0.78, 5 / 60, scope="run1"))
    why = refusal(Candidate(1.02, "offer 3"), siblings, Limits(), budget=budget)
    assert why is not None and "$0.2000" in why and "past --max-usd $0.1600" in why
    # Another scope's rentals do not count against this run's budget.
    assert refusal(Candidate(1.02, "x"), [held("other", 5.0, 10.0, scope="run2")], Limits(), budget=budget) is None


def test_a_rental_that_spent_more_than_committed_counts_what_it_spent_and_a_gone_one_its_spending() -> None:
    budget = Budget("r", 1.0, 1.0)
    over = [held("a", 0.1, 1.0, spent=0.7, scope="r"), gone("b", 0.2, scope="r")]
    assert refusal(Candidate(0.1, "c"), over, Limits(), budget=budget) is None  # 0.7 + 0.2 + 0.1 = 1.0
    why = refusal(Candidate(0.11, "c"), over, Limits(), budget=budget)
    assert why is not None and "($0.9000 spent, $0.1100 committed)" in why


def test_the_hourly_cap_counts_every_live_rental_and_reservation_but_not_gone_ones() -> None:
    limits = Limits(max_hourly_usd=0.06)
    assert refusal(Candidate(0.02, "c"), [held("a", 0.04), gone("b", 3.0)], limits) is None
    why = refusal(Candidate(0.045, "offer 9"), [held("a", 0.04)], limits)
    assert why is not None and "from $0.0400/hr" in why and "max_hourly_usd $0.0600/hr" in why


@pytest.mark.parametrize("label", ["max_daily_usd", "max_total_usd"])
def test_daily_and_total_count_spent_plus_what_held_rentals_still_owe(label: str) -> None:
    limits = Limits(**{label: 1.0})
    budget = Budget("r", None, 2.0)
    owing = [held("a", 0.2, 2.0, spent=0.1)]  # $0.30 more committed
    assert refusal(Candidate(0.1, "c"), owing, limits, budget=budget, spent_total=0.5, spent_today=0.5) is None
    why = refusal(Candidate(0.15, "c"), owing, limits, budget=budget, spent_total=0.5, spent_today=0.5)
    assert why is not None and label in why and "$1.1000" in why
    # Already at the limit: nothing more is rented, whatever its price.
    assert refusal(Candidate(0.0, "c"), [], limits, spent_total=1.0, spent_today=1.0) is not None


@pytest.mark.parametrize("price", [math.nan, math.inf, -0.01])
def test_a_malformed_price_is_refused_not_free(price: float) -> None:
    assert not valid_price(price)
    why = refusal(Candidate(price, "renting offer 7"), [], Limits())
    assert why is not None and "renting offer 7 is refused: its price is malformed" in why


def test_valid_prices() -> None:
    assert valid_price(0) and valid_price(0.0) and valid_price(1.5)
    assert not valid_price(True) and not valid_price("0.1") and not valid_price(None)
