"""Taken offers against the emulator over HTTP: a rental beside another passes over the offer it took and says why,
the offer is free again once the user's own rental on it is gone, and a mark made after that is kept."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from tests.integration.vast.test_vast_rent import offers_for
from tests.integration.vast.test_vast_rent import rent_on as rent_vast
from tether.emulator.vast import VastEmulator
from tether.paths import tether_home
from tether.providers.base import Offer
from tether.providers.vast import VastProvider
from tether.renting import (
    Passing,
    destroy_verified,
    mark_taken,
    release_taken,
    rent_lock,
    taken_marks,
)

MP = Callable[..., VastProvider]


def rent_on(emu: VastEmulator, p: VastProvider, offers: list[Offer], **kw: object) -> object:
    """The shared rent of the client tests, labelled as project ``proj``'s rental ``a`` unless told otherwise."""
    return rent_vast(emu, p, offers, **{"label": "tether:proj:a", **kw})


def test_a_rental_beside_another_passes_over_its_offer_and_gets_it_once_that_one_is_gone(
    vast_api_emulator: VastEmulator, make_provider: MP
) -> None:
    emu = vast_api_emulator
    p = make_provider(emu)
    listed = offers_for(p)  # listed before any rental: what a rental beside another still holds
    first = rent_on(emu, p, listed)
    creates = len([r for r in emu.requests if r[0] == "PUT"])

    beside, said = Passing(), list[str]()
    second = rent_on(emu, p, listed, label="tether:proj:b", passing=beside, on_event=said.append)
    assert second.raw["machine_id"] == listed[1].raw["machine_id"]  # type: ignore[attr-defined]
    assert len([r for r in emu.requests if r[0] == "PUT"]) == creates + 1  # the taken offer was never tried
    fact = beside.facts[listed[0].id]
    assert fact.kind == "taken" and fact.words.startswith("taken by another rental on this machine (a of project proj)")
    assert [s for s in said if s.startswith("skipped offer")] == [
        f"skipped offer {listed[0].id} (${listed[0].dph_total:.4f}/hr): {fact.words}"
    ]
    assert beside.chosen == listed[1].id

    held_until = time.time()
    destroy_verified(p, first.id)  # type: ignore[attr-defined]
    assert release_taken(listed[0].id, held_until) is True
    third, seen = Passing(), list[str]()
    rent_on(emu, p, listed, label="tether:proj:c", passing=third, on_event=seen.append)
    assert third.chosen == listed[0].id and third.facts == {}  # the cheapest again, nothing passed over
    assert not any(s.startswith("skipped offer") for s in seen)


def test_a_mark_made_after_the_rental_was_last_seen_holding_the_offer_is_kept() -> None:
    with rent_lock() as lp:
        mark_taken(lp, 41, "rented", "tether:proj:a")
    held_until = time.time()
    with rent_lock() as lp:
        mark_taken(lp, 41, "rented", "tether:proj:b")  # another rental took it after a's was freed
    assert release_taken(41, held_until) is False
    with rent_lock() as lp:
        marks = taken_marks(lp, time.time())
    assert marks[41].label == "tether:proj:b"
    assert release_taken(99, time.time()) is False  # nothing marked: nothing to drop


def test_an_instance_that_never_runs_leaves_its_offer_marked_failed(
    vast_api_emulator: VastEmulator, make_provider: MP
) -> None:
    emu = vast_api_emulator
    emu.faults.exit_on_create(1)
    p = make_provider(emu)
    listed = offers_for(p)
    passing = Passing()
    rent_on(emu, p, listed, passing=passing)
    assert passing.chosen == listed[1].id
    assert passing.facts[listed[0].id].kind == "tried" and "did not come up" in passing.facts[listed[0].id].words
    with rent_lock() as lp:
        marks = taken_marks(lp, time.time())
    assert marks[listed[0].id].kind == "failed" and marks[listed[1].id].kind == "rented"


def test_an_offer_whose_price_is_not_a_number_is_passed_over_in_words(
    vast_api_emulator: VastEmulator, make_provider: MP
) -> None:
    emu = vast_api_emulator
    p = make_provider(emu)
    listed = offers_for(p)
    passing, said = Passing(), list[str]()
    nan_first = {"price_for": lambda o: math.nan if o.id == listed[0].id else None}
    rent_on(emu, p, listed, passing=passing, on_event=said.append, **nan_first)
    assert passing.chosen == listed[1].id
    assert passing.facts[listed[0].id].kind == "bad_price"
    assert [s for s in said if s.startswith("skipped offer")] == [
        f"skipped offer {listed[0].id} (no valid price): its price (nan) is not a finite non-negative number"
    ]


def test_freeing_an_offer_does_not_wait_for_a_rental_holding_the_rent_lock() -> None:
    with rent_lock() as lp:
        mark_taken(lp, 7, "rented", "tether:proj:a")
    held_until = time.time()
    done: list[bool] = []
    with rent_lock() as lp:  # another rental's create is in flight
        worker = threading.Thread(target=lambda: done.append(release_taken(7, held_until)))
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive() and done == [True]
        assert 7 not in taken_marks(lp, time.time())
    assert (tether_home() / "rent-taken.json").exists() and (tether_home() / "rent-freed.json").exists()
