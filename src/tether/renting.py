"""Renting from any :class:`~tether.providers.base.Provider`, with every failure cleaned up.

- :func:`find_offers`: search, cheapest first; when nothing matches, NoCapacity says why (the provider explains).
- :func:`rent`: turn a list of offers into one running instance: cheapest first, under a machine-wide file lock so
  that several ``rent`` at once (threads or processes) never take the same offer, destroying (and verifying gone)
  every instance that did not come up, so nothing is left billing; why each offer before the one rented was passed
  over is gathered in a :class:`Passing` (:mod:`tether.offer_choice` words it).
- :func:`release_taken`: an offer the user's own rental held is free again once that rental is gone.
- :func:`wait_running`: poll with a deadline until the instance runs with an SSH address.
- :func:`destroy_verified`: destroy, then poll until the provider no longer has it.
- :func:`cleanup_by_label`: after a create whose outcome is unknown, destroy what it may have made.

Nothing here knows a provider's JSON, query language or HTTP; nothing here knows the project or local state
(:mod:`tether.rentals` does).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether import offer_choice
from tether.atomic import atomic_write
from tether.errors import AuthError, NoCapacity, ProviderError
from tether.ledger import valid_price
from tether.paths import tether_home
from tether.profiles import rank_offers
from tether.providers.base import DEAD_STATES, STOPPED_STATES, Instance, Offer, OfferQuery, Provider, gone

TAKEN_TTL_S = 300.0
DESTROY_VERIFY_S = 60.0

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Say = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


# ---------------------------------------------------------------------------------------------- searching


def find_offers(provider: Provider, query: OfferQuery, warn: Say | None = None) -> list[Offer]:
    """Offers for ``query``, cheapest first; when nothing matches, NoCapacity names why (no instance is made).
    What the provider skipped as malformed is said to ``warn`` (once per search)."""
    offers = provider.search(query)
    skipped = provider.take_warnings()
    for sentence in skipped:
        (warn or _quiet)(sentence)
    if offers:
        return rank_offers(offers)
    if skipped:
        raise NoCapacity(
            f"No usable offer matches {query.text!r}: every offer that matched was malformed (see the warning).",
            "Try again later (the provider's listing may be fixed by then), or loosen the query.",
        )
    why = provider.explain_no_match(query)
    raise NoCapacity(
        f"No offer matches {query.text!r}. {why}",
        "Loosen that filter (or set it to any, e.g. verified=any), or try again later.",
    )


# ---------------------------------------------------------------------------------------------- waiting


def observe(provider: Provider, instance_id: str) -> Instance:
    """The instance now; a ``gone`` model when the provider no longer has it."""
    return provider.show(instance_id) or gone(instance_id)


def wait_running(
    provider: Provider,
    instance_id: str,
    deadline_s: float,
    *,
    poll_s: float = 5.0,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    on_poll: Callable[[Instance], None] | None = None,
) -> Instance:
    """Poll until the instance runs with an SSH address; NoCapacity if it dies or the deadline passes. ``on_poll``
    sees each observation."""
    start = clock()
    last: Instance | None = None
    while True:
        inst = observe(provider, instance_id)
        last = inst
        if on_poll is not None:
            on_poll(inst)
        if inst.state == "running" and inst.ssh_host is not None and inst.ssh_port is not None:
            return inst
        if inst.state in DEAD_STATES:
            raise NoCapacity(
                f"Instance {instance_id} ended up {inst.state} ({inst.status}) instead of running.",
                "tether tries another offer; if this keeps happening, raise reliability in the query.",
            )
        elapsed = clock() - start
        if elapsed >= deadline_s:
            break
        sleep(min(poll_s, max(0.0, deadline_s - elapsed)))
    raise NoCapacity(
        f"Instance {instance_id} was still {last.state} ({last.status}) after {deadline_s:g} s.",
        "A big image can load slowly: raise the wait deadline, or pick another offer."
        if last.state not in STOPPED_STATES | {"queued"}
        else "The GPU may have been rented by someone else meanwhile: move the data to a new instance.",
    )


def destroy_verified(
    provider: Provider,
    instance_id: str,
    *,
    deadline_s: float = DESTROY_VERIFY_S,
    poll_s: float = 2.0,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> None:
    """Destroy and poll until the provider says the instance is gone; ProviderError if it never is."""
    start = clock()
    while True:
        provider.destroy(instance_id)
        if provider.show(instance_id) is None:
            return
        if clock() - start >= deadline_s:
            raise ProviderError(
                f"Instance {instance_id} is still there after destroying it for {deadline_s:g} s; "
                "it may still be billing.",
                f"Destroy it by hand: `tether destroy {instance_id}` or in the provider's console.",
            )
        sleep(poll_s)


def cleanup_by_label(provider: Provider, label: str | None) -> list[str]:
    """Destroy (verified) every instance labelled ``label``: what a create whose outcome is unknown may have made.
    The ids destroyed."""
    if not label:
        return []
    done: list[str] = []
    for inst in provider.list_instances(label):
        if inst.label == label:
            destroy_verified(provider, inst.id)
            done.append(inst.id)
    return done


# ---------------------------------------------------------------------------------------------- the rent lock

_process_lock = threading.Lock()


@contextlib.contextmanager
def rent_lock(path: Path | None = None) -> Iterator[Path]:
    """Hold the machine-wide rent lock (a thread lock plus ``flock`` on ``$TETHER_HOME/rent.lock``); yields its
    path."""
    lock_path = path or tether_home() / "rent.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with _process_lock, open(lock_path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield lock_path
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _taken_file(lock_path: Path) -> Path:
    return lock_path.with_name("rent-taken.json")


def _freed_file(lock_path: Path) -> Path:
    return lock_path.with_name("rent-freed.json")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


def _write_json(path: Path, doc: Any) -> None:
    """Written whole by a rename: a reader without the lock sees the old file or the new one."""
    atomic_write(path, json.dumps(doc), durable=False)


def _read_freed(lock_path: Path, now: float) -> dict[int, float]:
    """Offer id -> the last time the user's own rental was seen holding it, for rentals gone since (only what can
    still cover a mark younger than :data:`TAKEN_TTL_S`)."""
    data = _read_json(_freed_file(lock_path))
    freed: dict[int, float] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            if str(k).isdigit() and isinstance(v, int | float) and not isinstance(v, bool) and now - v < TAKEN_TTL_S:
                freed[int(k)] = max(float(v), freed.get(int(k), float(v)))
    return freed


@dataclass(frozen=True)
class Mark:
    """An offer taken ``at`` (epoch seconds): by a rental on this machine (its label), refused by the provider, or
    its instance failed its preflight."""

    at: float
    kind: offer_choice.MarkKind = "rented"
    label: str | None = None


def _mark_of(value: Any) -> Mark | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Mark(float(value))  # the older file: a bare time
    if isinstance(value, dict) and isinstance(value.get("at"), int | float):
        kinds: dict[Any, offer_choice.MarkKind] = {"refused": "refused", "failed": "failed"}
        label = value.get("label") if isinstance(value.get("label"), str) else None
        kind = value.get("kind")
        return Mark(float(value["at"]), kinds.get(kind, "rented") if isinstance(kind, str) else "rented", label)
    return None


def taken_marks(lock_path: Path, now: float) -> dict[int, Mark]:
    """Offers taken in the last :data:`TAKEN_TTL_S` seconds (by any process holding the same lock), with how and
    when. Written whole by a rename, so it may be read without the lock to show it; the caller holds the lock to
    act on it."""
    taken: dict[int, Mark] = {}
    freed = _read_freed(lock_path, now)
    data = _read_json(_taken_file(lock_path))
    if isinstance(data, dict):
        for k, v in data.items():
            mark = _mark_of(v)
            if not str(k).isdigit() or mark is None or now - mark.at >= TAKEN_TTL_S:
                continue
            if mark.at <= freed.get(int(k), -1.0):
                continue  # made while the user's own rental held it, and that rental is gone: free again
            if int(k) not in taken or taken[int(k)].at < mark.at:
                taken[int(k)] = mark
    return taken


def _write_taken(lock_path: Path, taken: Mapping[int, Mark]) -> None:
    _write_json(
        _taken_file(lock_path), {str(k): {"at": m.at, "kind": m.kind, "label": m.label} for k, m in taken.items()}
    )


def mark_taken(
    lock_path: Path, offer_id: int, kind: offer_choice.MarkKind = "rented", label: str | None = None
) -> None:
    """Remember that ``offer_id`` was just taken; the caller holds the lock."""
    now = time.time()
    taken = taken_marks(lock_path, now)
    taken[offer_id] = Mark(now, kind, label)
    _write_taken(lock_path, taken)


def release_taken(offer_id: int, held_until: float, *, lock_path: Path | None = None) -> bool:
    """The user's own rental on ``offer_id`` is gone (destroyed, or seen gone): the offer is free again, so a taken
    mark made no later than ``held_until`` (the last time that rental was seen holding it) no longer counts. A later
    mark still does: it is another rental's, made after the offer was freed. Whether a mark stopped counting.

    Written to its own file under its own short lock, never the rent lock: a destroy or an ``ls`` does not wait for
    another rental's create, and the rent lock's holders read it with the marks."""
    lp = lock_path or tether_home() / "rent.lock"
    lp.parent.mkdir(parents=True, exist_ok=True)
    with open(lp.with_name("rent-freed.lock"), "a+", encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            now = time.time()
            mark = taken_marks(lp, now).get(offer_id)
            freed = _read_freed(lp, now)
            freed[offer_id] = max(held_until, freed.get(offer_id, held_until))
            _write_json(_freed_file(lp), {str(k): v for k, v in freed.items()})
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return mark is not None and mark.at <= held_until


def remark_taken(offer_id: int, kind: offer_choice.MarkKind, *, lock_path: Path | None = None) -> None:
    """Mark ``offer_id`` taken now with how (e.g. ``failed``: its instance failed its preflight), under the lock."""
    with rent_lock(lock_path) as lp:
        mark_taken(lp, offer_id, kind)


@dataclass
class Passing:
    """What :func:`rent` saw while choosing: why each offer before the one rented was passed over (offer id ->
    :class:`~tether.offer_choice.Fact`), and the offer rented."""

    facts: dict[int, offer_choice.Fact] = field(default_factory=dict)
    chosen: int | None = None


# ---------------------------------------------------------------------------------------------- renting


def rental_cost(offer: Offer, bid: float | None) -> float:
    """$/hr a rental of ``offer`` costs while it runs: its quoted ``dph_total`` on demand; with a bid, the bid (the
    machine's $/hr) plus the offer's storage."""
    if bid is None:
        return offer.dph_total
    return bid + offer.storage_total_cost


def rent(
    provider: Provider,
    offers: Sequence[Offer],
    *,
    image: str,
    disk_gb: float,
    label: str | None = None,
    onstart: str | None = None,
    env: Mapping[str, str] | None = None,
    max_price: float | None = None,
    price_for: Callable[[Offer], float | None] | None = None,
    commit: Callable[[Offer, float], None] | None = None,
    rank: Callable[[Offer], float] | None = None,
    wait_deadline_s: float = 900.0,
    poll_s: float = 5.0,
    max_attempts: int = 3,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    lock_path: Path | None = None,
    on_event: Say | None = None,
    passing: Passing | None = None,
    on_step: Say | None = None,
) -> Instance:
    """Rent the cheapest usable offer and wait until it runs; never leave a failed instance billing.

    Offers are tried cheapest first (ties: higher reliability). An offer that is gone, or an instance that stays
    ``loading`` past ``wait_deadline_s`` or ends ``exited``/``unknown``, is destroyed (verified gone) and the next
    offer is tried, at most ``max_attempts`` creates in all. Picking an offer and creating the instance happen under
    the machine-wide rent lock, and taken offers are remembered, so several ``rent`` at once never rent the same
    offer twice. ``price_for(offer)`` is the $/hr bid sent with the create (None: on demand).

    ``rank(offer)``, when given, orders the offers instead of their price (ties: price, then reliability): the
    expected cost of the work on each (:func:`tether.machines.expected_cost`).

    ``commit(offer, rate)`` is called under the lock just before each create, with the exact offer and the $/hr it
    will bill (:func:`rental_cost`): it records the reservation, or raises to refuse it (nothing is created then).
    A price that is not a finite non-negative number is never rented (the offer is skipped).
    ``on_step`` hears what it is doing now (creating, then the instance's state while it is waited for).

    ``passing``, when given, gathers why each offer tried before the one rented was passed over (a price that is not
    a number, taken by another rental in the last :data:`TAKEN_TTL_S` s, a create or start that failed) and which
    offer was rented; a taken offer passed over is said once, when it is passed over.
    """
    say = on_event or _quiet
    step = on_step or _quiet
    seen = passing if passing is not None else Passing()

    def hourly(o: Offer) -> float:
        return rental_cost(o, price_for(o) if price_for is not None else None)

    def key(o: Offer) -> tuple[float, float, float]:
        return (rank(o) if rank is not None else hourly(o), hourly(o), -o.reliability)

    for o in offers:
        if not valid_price(hourly(o)) and o.id not in seen.facts:
            seen.facts[o.id] = offer_choice.bad_price(hourly(o))
            say(offer_choice.line(o.id, None, seen.facts[o.id].words))
    ranked = sorted((o for o in offers if valid_price(hourly(o))), key=key)
    if not ranked:
        raise NoCapacity("There is no offer to rent.", "Loosen the query or try again later.")
    if max_price is not None:
        affordable = [o for o in ranked if hourly(o) <= max_price]
        if not affordable:
            cheapest = ranked[0]
            raise NoCapacity(
                f"No offer costs at most ${max_price:.4f}/hr; the cheapest found is "
                f"${hourly(cheapest):.4f}/hr (offer {cheapest.id}, {cheapest.gpu_name or 'CPU'}).",
                "Raise --max-price or loosen the query.",
            )
        ranked = affordable
    failures: list[str] = []
    tried: set[int] = set()
    attempts = 0
    while attempts < max_attempts:
        offer: Offer | None = None
        with rent_lock(lock_path) as lp:
            now = time.time()
            taken = taken_marks(lp, now)
            offer = next((o for o in ranked if o.id not in tried and o.id not in taken), None)
            for o in ranked:
                if o is offer:
                    break
                mark = taken.get(o.id)
                if mark is not None and o.id not in tried and o.id not in seen.facts:
                    seen.facts[o.id] = offer_choice.taken(mark.kind, mark.at, now, TAKEN_TTL_S, mark.label)
                    say(offer_choice.line(o.id, hourly(o), seen.facts[o.id].words))
            if offer is None:
                break
            tried.add(offer.id)
            attempts += 1
            price = price_for(offer) if price_for is not None else None
            bid = f", bid ${price:.4f}/hr for the machine" if price is not None else ""
            if commit is not None:
                commit(offer, hourly(offer))
            say(f"renting offer {offer.id} ({offer.gpu_name or 'CPU'}, ${hourly(offer):.4f}/hr{bid})")
            step(f"renting offer {offer.id}")
            try:
                instance_id = provider.create(
                    offer.id, image=image, disk_gb=disk_gb, label=label, onstart=onstart, env=env, price=price
                )
            except NoCapacity as exc:
                mark_taken(lp, offer.id, "refused")
                failures.append(f"offer {offer.id}: {exc.message}")
                seen.facts[offer.id] = offer_choice.tried(f"the provider refused it ({exc.message})")
                if exc.instance_id is not None:
                    # Refused, yet an instance was made (a bid too low gives a stopped one): it must not bill.
                    destroy_verified(provider, exc.instance_id, clock=clock, sleep=sleep)
                    say(f"offer {offer.id} was refused; instance {exc.instance_id} it made is destroyed")
                else:
                    say(f"offer {offer.id} is gone; trying the next one")
                continue
            except AuthError:
                raise
            except ProviderError:
                cleanup_by_label(provider, label)
                raise
            mark_taken(lp, offer.id, "rented", label)

        def polled(inst: Instance, instance_id: str = instance_id) -> None:
            step(f"waiting for instance {instance_id} to run: {inst.state}")

        try:
            inst = wait_running(
                provider, instance_id, wait_deadline_s, poll_s=poll_s, clock=clock, sleep=sleep, on_poll=polled
            )
        except NoCapacity as exc:
            failures.append(f"offer {offer.id}: {exc.message}")
            seen.facts[offer.id] = offer_choice.tried(f"instance {instance_id} on it did not come up ({exc.message})")
            say(f"instance {instance_id} did not come up ({exc.message}); destroying it and trying the next offer")
            destroy_verified(provider, instance_id, clock=clock, sleep=sleep)
            remark_taken(offer.id, "failed", lock_path=lock_path)
            continue
        except BaseException:  # Ctrl-C, SIGTERM, a failure: a server that never came up is not left billing
            say(f"stopped while instance {instance_id} came up; destroying it")
            destroy_verified(provider, instance_id, clock=clock, sleep=sleep)
            raise
        say(f"instance {inst.id} is running at {inst.ssh_host}:{inst.ssh_port}")
        seen.chosen = offer.id
        return inst
    detail = "; ".join(failures) if failures else "every offer was just taken by another rent on this machine"
    raise NoCapacity(
        f"Could not get a running instance after {attempts} attempt(s): {detail}.",
        "Search again (offers change quickly), loosen the query, or raise the wait deadline.",
    )
