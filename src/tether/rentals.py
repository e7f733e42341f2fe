"""Rented servers: search, rent, observe, stop, start and destroy, with every state and price written to the ledger.

The provider (:mod:`tether.providers`: Vast.ai, or its emulator in tests) knows offers and lifecycle, and
:mod:`tether.renting` rents from it safely; this module ties both to the project (its profiles, its ``[vast]``
settings), to local state (``instances`` and the ``instance_events`` cost ledger) and to the safety rules: never
destroy a server whose results are not home, never leave a failed rental billing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tether import cost, machines, offer_choice, vocab
from tether.config import Project
from tether.errors import ConfigError, NoCapacity, PolicyRefusal, ProviderError, SSHError, TetherError
from tether.ledger import Budget, Candidate, Commitment, Limits, refusal, valid_price
from tether.paths import tether_home
from tether.profiles import Profile, project_profile
from tether.progress import Report, Step, bind, ignore
from tether.providers import (
    OFFER_TYPES,
    STOPPED_STATES,
    Instance,
    Offer,
    OfferType,
    Provider,
    provider_for,
    ssh_address,
)
from tether.renting import (
    TAKEN_TTL_S,
    Passing,
    destroy_verified,
    find_offers,
    release_taken,
    rent,
    rent_lock,
    rental_cost,
    taken_marks,
    wait_running,
)
from tether.renting import observe as observe_instance
from tether.state import InstanceRecord, State

Say = Callable[[str], None]
PROVIDER = "vast"


def _quiet(_message: str) -> None:
    return None


def profile_for(
    project: Project,
    name: str,
    *,
    disk_gb: float | None = None,
    image: str | None = None,
    offer_type: str | None = None,
) -> Profile:
    """The project's profile ``name`` with the command line's disk, image and offer type over it."""
    kind: OfferType | None = None
    if offer_type is not None:
        if offer_type not in OFFER_TYPES:
            raise ConfigError(f"Unknown offer type {offer_type!r}.", "Use on-demand, bid or reserved.")
        kind = offer_type
    return project_profile(project, name, disk_gb=disk_gb, image=image, offer_type=kind)


def search(
    provider: Provider,
    profile: Profile,
    *,
    query: str | None = None,
    order: str | None = None,
    limit: int | None = None,
    warn: Say | None = None,
) -> list[Offer]:
    """Live offers for the profile (or for ``query`` instead of its query), cheapest first; offers skipped as
    malformed are said to ``warn``."""
    return find_offers(provider, profile.offer_query(query=query, order=order, limit=limit), warn)


def address_of(inst: Instance) -> str:
    host, port, user = ssh_address(inst)
    return f"{user}@{host}:{port}"


def record(
    st: State,
    name: str,
    inst: Instance,
    *,
    source: str,
    meta: dict[str, Any] | None = None,
    now: float | None = None,
    remote_root: str | None = None,
) -> InstanceRecord:
    """Write what we observed of an instance into state and the cost ledger."""
    old = st.instance(name)
    ts = now if now is not None else time.time()
    merged = dict(old.meta) if old else {}
    merged.update(meta or {})
    if stopped_by_others(old.state if old else None, inst.state, source):
        # Not tether's stop: its watchdog's (learned when tether next reaches the server) or someone's by hand.
        merged["last_stop"] = {"by": None, "seen": ts, "at": None}
    address = old.address if old else None
    if inst.state == "running" and inst.ssh_host and inst.ssh_port:
        address = address_of(inst)
    rec = InstanceRecord(
        name=name,
        provider=PROVIDER,
        instance_id=inst.id,
        address=address,
        remote_root=project_root_for(inst.id, remote_root)
        if remote_root
        else (old.remote_root if old else "/workspace"),
        state=inst.state,
        dph_total=_price(inst.dph_total, inst.state, old.dph_total if old else None, merged.get("commit_dph")),
        storage_dph=_price(inst.storage_total_cost, inst.state, old.storage_dph if old else None, None),
        created=old.created if old and old.instance_id == inst.id else ts,
        updated=ts,
        meta=merged,
    )
    st.upsert_instance(rec, source=source)
    offer = merged.get("offer_id")
    freed = old is not None and old.instance_id == inst.id and old.state != "gone" and inst.state == "gone"
    if freed and old is not None and isinstance(offer, int):
        # The offer this rental held is free again: a later `up` may rent it at once (its taken mark, made while
        # this rental held it, is dropped; another rental's later mark is kept).
        release_taken(offer, old.updated)
    lost = machine_loss(old.state if old else None, inst.state, source)
    machine = merged.get("machine_id")
    if lost is not None and isinstance(machine, int) and not isinstance(machine, bool):
        st.add_machine_outcome(machines.Outcome(machine, PROVIDER, ts, lost, None, inst.id))
    return rec


def machine_loss(old_state: str | None, new_state: str, source: str) -> machines.OutcomeKind | None:
    """What a change of state says about the machine for the memory of machines (pure): ``vanished`` when an
    instance tether did not destroy is gone, ``preempted`` when it was outbid; None otherwise."""
    if old_state is None or old_state == new_state:
        return None
    if new_state == "gone" and old_state not in ("gone", "creating", "stopped") and source != "destroy":
        return "vanished"
    if new_state == "preempted":
        return "preempted"
    return None


def _price(seen: float, state: str, known: float | None, committed: Any) -> float | None:
    """The price to record: what the provider says now, unless the instance is gone or the price it sent is
    malformed (NaN, infinite, negative), when the last price known (else the one committed) is kept: a malformed
    price is never stored, neither as NULL (SQLite's NaN) nor as $0."""
    if state != "gone" and valid_price(seen):
        return seen
    if known is not None and valid_price(known):
        return known
    return committed if valid_price(committed) else None


def stopped_by_others(old_state: str | None, new_state: str, source: str) -> bool:
    """Whether a server tether last saw running was stopped by someone other than tether (pure): its watchdog,
    or a person in the provider's console. A preemption is its own state."""
    return old_state == "running" and new_state == "stopped" and source not in ("stop", "start-cancelled")


def project_root_for(instance_id: str, template: str) -> str:
    """``[vast] remote_root`` for one instance (``{instance_id}`` is replaced; default ``/workspace``)."""
    return template.replace("{instance_id}", str(instance_id))


def rented(st: State, name: str) -> InstanceRecord:
    rec = st.instance(name)
    if rec is not None and rec.provider == PROVIDER and rec.state == "creating" and not rec.instance_id:
        raise ProviderError(
            f"{name} is being rented (or its rental was interrupted before the provider answered).",
            f"Wait for `tether up {name}` to finish; `tether ls` adopts what an interrupted rental made.",
        )
    if rec is None or rec.provider != PROVIDER or not rec.instance_id:
        known = ", ".join(r.name for r in st.instances() if r.provider == PROVIDER and not r.gone) or "none"
        raise ConfigError(f"No rented server is called {name!r}.", f"Rented servers: {known}. `tether ls` lists them.")
    return rec


def label_prefix(project: Project) -> str:
    """The label of every instance this project rents is ``tether:<project>:<name>``."""
    return f"tether:{project.name}:"


def label_of(project: Project, name: str) -> str:
    return label_prefix(project) + name


@contextlib.contextmanager
def name_lock(name: str, *, blocking: bool = True) -> Iterator[bool]:
    """Hold ``$TETHER_HOME/rentals/<name>.lock`` (flock): one rental of a name at a time on this machine.

    Yields whether it is held (always True when ``blocking``); a second ``tether up NAME`` waits for the first.
    """
    folder = tether_home() / "rentals"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def reconcile(project: Project, st: State, provider: Provider) -> list[str]:
    """Bring every instance that carries this project's label into local state; the sentences of what changed.

    An instance the provider has under ``tether:<project>:<name>`` that state does not know (a ``tether up``
    killed between the create and its record, or another controller of the same project) is adopted under
    ``name``; a ``creating`` record whose create made nothing, and whose ``up`` is no longer running, is dropped.
    """
    said: list[str] = []
    prefix = label_prefix(project)
    labelled = {i.label[len(prefix) :]: i for i in provider.list_instances(prefix) if i.label and i.state != "gone"}
    for name, inst in sorted(labelled.items()):
        rec = st.instance(name)
        if rec is not None and rec.instance_id == inst.id:
            continue
        if rec is not None and rec.instance_id and rec.state != "gone":
            said.append(
                f"instance {inst.id} carries the label of {name}, which is instance {rec.instance_id} here; left "
                f"alone (destroy it with the provider's console if it is not needed)."
            )
            continue
        record(
            st, name, inst, source="reconcile", meta=_adopted_meta(project), remote_root=project.config.vast.remote_root
        )
        said.append(f"adopted instance {inst.id} as {name} (rented under this project's label, unknown here).")
    for rec in st.instances():
        reserved = rec.provider == PROVIDER and rec.state == "creating" and rec.instance_id is None
        if reserved and rec.name not in labelled:
            with name_lock(rec.name, blocking=False) as free:
                if free:
                    st.drop_reservation(rec.name)
    return said


def _adopted_meta(project: Project) -> dict[str, Any]:
    """What an adopted (or reserved) rental needs to be reached: the key its instances accept."""
    return {"identity_file": project.config.vast.identity_file}


def _wait_s(project: Project) -> float:
    return project.config.vast.wait_minutes * 60


@contextlib.contextmanager
def _provider(project: Project, given: Provider | None) -> Iterator[Provider]:
    """The caller's provider, or the project's own one, closed afterwards."""
    if given is not None:
        yield given
        return
    with provider_for(project) as prov:
        yield prov


def ensure_rented(
    project: Project,
    st: State,
    name: str,
    *,
    profile: str | None = None,
    offer_id: str | None = None,
    image: str | None = None,
    disk_gb: float | None = None,
    max_price: float | None = None,
    budget: Budget | None = None,
    say: Say = _quiet,
    provider: Provider | None = None,
    hours: float = 1.0,
    skip: Mapping[int, str] | None = None,
    report: Report = ignore,
) -> dict[str, Any]:
    """Rent a server called ``name`` (or reuse the one already rented under that name) and wait until it runs.

    Among the offers that fit, the machines of the memory of machines that are avoided now (and those in ``skip``,
    machine id -> why) are left out, each with a line saying so, and the rest are tried by the expected cost of
    ``hours`` of work on each (:func:`tether.machines.expected_cost`: price, reliability and the machine's record);
    an offer asked for by id is taken as it is.

    One ``up`` of a name at a time (:func:`name_lock`); the rental is recorded (``creating``) before the create
    call, and instances under this project's label are reconciled first, so a killed ``up`` leaves nothing unknown
    and running ``up`` again adopts what it made instead of renting a second.

    Every offer tried is committed first (:func:`commit`): under the rent lock that reserves it, at the price that
    will be billed, against ``budget`` (a command's group, e.g. a managed run) and ``[policy]``'s limits, counting
    every rental held or in flight on this machine; a refusal is :class:`PolicyRefusal` and nothing is rented.
    What it is doing is reported to ``report`` (:mod:`tether.progress`), on the row ``name``.
    """
    report(Step(name, "asking the provider"))
    with name_lock(name), _provider(project, provider) as prov:
        for sentence in reconcile(project, st, prov):
            say(sentence)
        existing = st.instance(name)
        if existing is not None and existing.provider == PROVIDER and existing.state != "gone" and existing.instance_id:
            inst = observe_instance(prov, existing.instance_id)
            if inst.state == "running":
                rec = record(st, name, inst, source="up")
                return {"instance_id": inst.id, "reused": True, "address": rec.address, "dph_total": rec.dph_total}
            if inst.state in STOPPED_STATES or inst.state in ("queued", "frozen"):
                say(f"{name} is {inst.state}; starting it.")
                report(Step(name, f"starting instance {inst.id} (it was {inst.state})"))
                return start(project, st, name, say=say, provider=prov)
            if inst.state != "gone":
                raise ProviderError(
                    f"{name} (instance {inst.id}) is {inst.state}, not running.",
                    f"Wait and retry `tether up {name}`, or `tether destroy {name}` and rent again.",
                )
            record(st, name, inst, source="up")
        if not profile and not offer_id:
            raise ConfigError(
                f"{name!r} is neither a [hosts.{name}] entry nor a server tether rented.",
                f"Rent one with `tether up {name} --profile api` (or inference, finetune), or add [hosts.{name}].",
            )
        prof = profile_for(project, profile or "api", disk_gb=disk_gb, image=image)
        refuse_reserved(prof)
        offers = _offers_for(prov, prof, offer_id, say)
        considered = list(offers)
        passing = Passing()
        memory = st.machine_outcomes(PROVIDER)
        if not offer_id:
            offers = _without_avoided(offers, memory, project, skip or {}, say, _hourly_of(prof), passing.facts)
        biddable = list(offers)
        price_for = bid_pricing(prof, offers)
        for o in biddable:
            if o not in offers:
                passing.facts[o.id] = offer_choice.no_bid(o.min_bid, prof.bid_usd)

        def hourly(o: Offer) -> float:
            return rental_cost(o, price_for(o) if price_for else None)

        cheapest = min(rental_cost(o, price_for(o) if price_for else None) for o in offers)
        for o in biddable:
            if o.id in passing.facts and passing.facts[o.id].kind == "no_bid" and hourly(o) < cheapest:
                say(offer_choice.line(o.id, hourly(o), passing.facts[o.id].words))
        # A first look, before the account key is checked: the exact offer is committed under the rent lock.
        _refuse(commit_refusal(project, st, name, Candidate(cheapest, "renting the cheapest offer"), budget))
        key = check_account_key(project, prov)
        identity = identity_of(project, key)
        label = label_of(project, name)
        kind = f", bidding (interruptible) from ${cheapest:.4f}/hr" if price_for else ""
        say(f"Renting {name} ({prof.name}): {len(offers)} offers, cheapest ${cheapest:.4f}/hr{kind}.")
        base_meta = {**_adopted_meta(project), "identity_file": identity, "profile": prof.name}
        st.reserve_instance(name, PROVIDER, project.config.vast.remote_root, base_meta)

        def expected(offer: Offer) -> float:
            mine = [o for o in memory if o.machine_id == offer.machine_id]
            price = rental_cost(offer, price_for(offer) if price_for else None)
            return machines.expected_cost(price, hours, offer.reliability, mine, interruptible=price_for is not None)

        def commit_offer(offer: Offer, rate: float) -> None:
            if not offer_id:
                for why in _ranked_after(offer, offers, hourly, expected, memory, hours, passing.facts):
                    say(why)
            commit(project, st, name, offer, rate, budget, base_meta)

        try:
            rank = None if offer_id else expected
            step = bind(report, name)
            inst = _rent(
                prov, offers, prof, label, max_price, project, say, price_for, commit_offer, rank, passing, step
            )
        except BaseException:
            # Nothing may be left half-known: adopt what the create made, or drop the reservation.
            with contextlib.suppress(TetherError):
                reconcile_after_failure(project, st, prov, name)
            raise
        chosen = next((o for o in offers if o.id == passing.chosen), None) or _offer_of(offers, inst)
        skipped = offer_choice.passed_over(considered, chosen.id, hourly, passing.facts)
        bid = price_for(chosen) if price_for else None
        meta = {
            "offer_id": chosen.id,
            "machine_id": chosen.machine_id,
            "reliability": chosen.reliability,
            "cuda_max_good": chosen.cuda_max_good,
            "profile": prof.name,
            "image": prof.image,
            "disk_gb": prof.min_disk_gb,
            "identity_file": identity,
            "gpu_name": inst.gpu_name,
            "num_gpus": inst.num_gpus,
            "gpu_ram_gb": inst.gpu_ram_gb,
            "offer_type": prof.type,
            "bid_usd": bid,
        }
        rec = record(st, name, inst, source="rent", meta=meta, remote_root=project.config.vast.remote_root)
        if key is not None:
            _wait_for_key(project, st, prov, name, rec, key, say, report)
    out: dict[str, Any] = {"instance_id": inst.id, "reused": False, "address": rec.address}
    out.update({"machine_id": chosen.machine_id, "offer_id": chosen.id})
    out["skipped_offers"] = [s.to_json() for s in skipped]
    return {**out, "dph_total": rec.dph_total, "offer_type": prof.type, "bid_usd": bid}


def _hourly_of(prof: Profile) -> Callable[[Offer], float]:
    """The $/hr an offer would bill under ``prof`` (its bid when the profile bids and a bid can be placed)."""

    def hourly(o: Offer) -> float:
        return rental_cost(o, prof.bid_for(o.min_bid) if prof.type == "bid" else None)

    return hourly


def _without_avoided(
    offers: list[Offer],
    memory: list[machines.Outcome],
    project: Project,
    skip: Mapping[int, str],
    say: Say,
    hourly: Callable[[Offer], float] | None = None,
    facts: dict[int, offer_choice.Fact] | None = None,
) -> list[Offer]:
    """The offers whose machine is not avoided now (the memory of machines, ``[vast] avoid_days``) nor in ``skip``;
    a line for each offer left out (and its reason in ``facts``). NoCapacity when none is left."""
    avoid = machines.avoided(memory, time.time(), project.config.vast.avoid_days)
    kept: list[Offer] = []
    found = facts if facts is not None else {}
    for offer in offers:
        mid = offer.machine_id
        if mid is not None and mid in skip:
            found[offer.id] = offer_choice.failed_preflight(mid, skip[mid])
        elif mid is not None and mid in avoid:
            found[offer.id] = offer_choice.avoided(mid, avoid[mid].until, avoid[mid].why)
        else:
            kept.append(offer)
            continue
        say(offer_choice.line(offer.id, (hourly or _hourly_of_demand)(offer), found[offer.id].words))
    if not kept:
        raise NoCapacity(
            f"Every fitting offer is on a machine that failed before ({len(offers)} offers).",
            "`tether machines` says why; `tether machines forget ID` rents on one again, or loosen the query.",
        )
    return kept


def would_skip(
    project: Project, memory: list[machines.Outcome], offers: list[Offer], now: float
) -> dict[int, offer_choice.Fact]:
    """Why ``up`` would pass over each of ``offers`` now, before any ranking: its machine avoided by the memory of
    machines, or the offer taken in the last few minutes (a rental on this machine, a refusal, a failed rental).
    Read without the rent lock: what it shows may change at once."""
    avoid = machines.avoided(memory, now, project.config.vast.avoid_days)
    marks = taken_marks(tether_home() / "rent.lock", now)
    out: dict[int, offer_choice.Fact] = {}
    for o in offers:
        if o.machine_id is not None and o.machine_id in avoid:
            why = avoid[o.machine_id]
            out[o.id] = offer_choice.avoided(o.machine_id, why.until, why.why)
        elif o.id in marks:
            mark = marks[o.id]
            out[o.id] = offer_choice.taken(mark.kind, mark.at, now, TAKEN_TTL_S, mark.label)
    return out


def _hourly_of_demand(o: Offer) -> float:
    return o.dph_total


def _ranked_after(
    picked: Offer,
    offers: list[Offer],
    hourly: Callable[[Offer], float],
    expected: Callable[[Offer], float],
    memory: list[machines.Outcome],
    hours: float,
    facts: dict[int, offer_choice.Fact],
) -> list[str]:
    """The offers cheaper than ``picked`` that the expected-cost ranking put after it (those with no other reason
    in ``facts``): their reason is put in ``facts``; the lines to say, each offer once."""
    lines: list[str] = []
    price = hourly(picked)
    for o in sorted(offers, key=hourly):
        if o.id == picked.id or o.id in facts or not valid_price(hourly(o)) or hourly(o) >= price:
            continue
        mine = [m for m in memory if m.machine_id == o.machine_id]
        facts[o.id] = offer_choice.ranked_after(
            picked.id,
            expected(o),
            expected(picked),
            hours,
            machines.failure_share(mine, o.reliability),
            machines.ready_minutes(mine),
        )
        lines.append(offer_choice.line(o.id, hourly(o), facts[o.id].words))
    return lines


def refuse_reserved(prof: Profile) -> None:
    """Reserved rentals need the vendor's prepaid-contract flow, which tether does not run: refused before any
    request."""
    if prof.type == "reserved":
        raise ConfigError(
            f"Profile {prof.name!r} asks for a reserved rental; tether rents on-demand or interruptible (bid) only.",
            "A reserved instance is an on-demand one prepaid for months (`vastai prepay instance`); set type = "
            '"on-demand" (or "bid") for this profile. `tether offers --type reserved` still shows reserved prices.',
        )


def _offers_for(prov: Provider, prof: Profile, offer_id: str | None, say: Say = _quiet) -> list[Offer]:
    """The offers to try: the profile's search, or exactly the one offer asked for (found by ``id=ID``, since a
    search answers at most 64 offers: looking for an id in a wide answer misses most of them)."""
    if not offer_id:
        return search(prov, prof, warn=say)
    if not offer_id.isdigit():
        raise ConfigError(f"--offer takes an offer id (a number), not {offer_id!r}.", "`tether offers` lists them.")
    try:
        # The user chose this offer: the default filters (verified, external) do not hide it.
        found = search(prov, prof, query=f"id={offer_id} verified=any external=any", warn=say)
    except NoCapacity:
        found = []
    offers = [o for o in found if str(o.id) == offer_id]
    if not offers:
        raise ProviderError(
            f"Offer {offer_id} is not available (rented by someone else, or no such offer).",
            "List current offers with `tether offers`.",
        )
    return offers


def bid_pricing(prof: Profile, offers: list[Offer]) -> Callable[[Offer], float | None] | None:
    """For an interruptible (``bid``) profile, the bid each offer gets (:meth:`Profile.bid_for`); None on demand.
    Offers it cannot bid on are dropped from ``offers``; none left raises NoCapacity."""
    if prof.type != "bid":
        return None

    def price(o: Offer) -> float | None:
        return prof.bid_for(o.min_bid)

    usable = [o for o in offers if price(o) is not None]
    if not usable:
        lowest = min((o.min_bid for o in offers if o.min_bid is not None), default=None)
        raise NoCapacity(
            f"No offer can be rented with profile {prof.name!r}'s bid"
            + (
                f" of ${prof.bid_usd:.4f}/hr: the lowest minimum bid is ${lowest:.4f}/hr."
                if prof.bid_usd and lowest
                else ": the offers name no minimum bid."
            ),
            "Raise bid_usd (or use bid_margin) in [profiles." + prof.name + "], or rent on demand.",
        )
    offers[:] = usable
    return price


def _offer_of(offers: list[Offer], inst: Instance) -> Offer:
    """The offer an instance was rented from (by machine, else the cheapest: only used for the recorded bid)."""
    machine = inst.raw.get("machine_id")
    return next((o for o in offers if machine is not None and o.machine_id == machine), offers[0])


def onstart_script(project: Project) -> str:
    """The start script every rental gets (it runs at creation and at every start): it turns off the image's
    auto-tmux login before anyone logs in, keeps the instance's own ``CONTAINER_ID`` / ``CONTAINER_API_KEY`` for
    the watchdog in ``<root>/.tether/container.env`` (mode 0600; the service gives them to this script only), and
    starts the watchdog again after a restart once ``tether up`` installed it."""
    template = project.config.vast.remote_root
    head, _sep, tail = template.partition("{instance_id}")
    root = shlex.quote(head) + ('"${CONTAINER_ID}"' + shlex.quote(tail) if _sep else "")
    lib = f'"$root"/{vocab.TETHER_DIR}/lib'
    return "\n".join(
        [
            f"touch ~/{vocab.NO_AUTO_TMUX}",
            f"root={root}",
            f'mkdir -p "$root"/{vocab.TETHER_DIR}',
            f"(umask 077; env | grep -E '^CONTAINER_(ID|API_KEY)=' > \"$root\"/{vocab.TETHER_DIR}/container.env)",
            f'if [ -f "$root"/{vocab.TETHER_DIR}/watchdog.json ] && [ -d {lib} ]; then',
            f'  PYTHONPATH={lib} python3 -S -m tether.server watchdog --root "$root" --daemon || true',
            "fi",
            "",
        ]
    )


def _rent(
    prov: Provider,
    offers: list[Offer],
    prof: Profile,
    label: str,
    max_price: float | None,
    project: Project,
    say: Say,
    price_for: Callable[[Offer], float | None] | None = None,
    commit_offer: Callable[[Offer, float], None] | None = None,
    rank: Callable[[Offer], float] | None = None,
    passing: Passing | None = None,
    step: Say | None = None,
) -> Instance:
    assert prof.image is not None  # project_profile always sets it
    return rent(
        prov,
        offers,
        image=prof.image,
        disk_gb=prof.min_disk_gb,
        label=label,
        onstart=onstart_script(project),
        max_price=max_price,
        price_for=price_for,
        commit=commit_offer,
        rank=rank,
        wait_deadline_s=_wait_s(project),
        poll_s=project.config.vast.poll_seconds,
        on_event=say,
        passing=passing,
        on_step=step,
    )


# ------------------------------------------------------------------------------------------ the SSH key


def public_keys(project: Project) -> list[tuple[Path, str]]:
    """The public halves (path, OpenSSH line) of the key(s) ssh will offer a rented server: ``[vast]
    identity_file``'s (its ``.pub``, else derived with ``ssh-keygen -y``), or the default ``~/.ssh/id_*`` ones."""
    ident = project.config.vast.identity_file
    if ident:
        private = Path(ident).expanduser()
        pub = private.with_name(private.name + ".pub")
        if pub.is_file():
            return [(pub, pub.read_text(encoding="utf-8").strip())]
        try:
            derived = subprocess.run(
                ["ssh-keygen", "-y", "-f", str(private)], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [(pub, derived.stdout.strip())] if derived.returncode == 0 and derived.stdout.strip() else []
    home = Path(os.environ.get("HOME") or Path.home())
    found = []
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        pub = home / ".ssh" / f"{name}.pub"
        if pub.is_file():
            found.append((pub, pub.read_text(encoding="utf-8").strip()))
    return found


def _key_body(line: str) -> str:
    parts = line.split()
    return " ".join(parts[:2]) if len(parts) >= 2 else line.strip()


def check_account_key(project: Project, prov: Provider) -> tuple[Path, str] | None:
    """Before any money is spent: the key tether will log in with must be on the provider's account, since an
    account key reaches only instances created after it was added. The key (path of its public half, line); None
    when the provider keeps no keys. ProviderError (nothing rented) when it is not there; ssh is then told to use
    exactly this key (:func:`identity_of`)."""
    on_account = prov.account_keys()
    if on_account is None:
        return None
    mine = public_keys(project)
    if not mine:
        ident = project.config.vast.identity_file
        if ident:
            raise ConfigError(
                f"[vast] identity_file is {ident}, which is not an SSH private key tether can read (nor is there "
                f"a {ident}.pub); nothing was rented.",
                "Point it at the private key whose public half is on your Vast.ai account, or make one with "
                f"`ssh-keygen -t ed25519 -f {shlex.quote(ident)}`. " + KEY_HINT.format(pub=shlex.quote(ident + ".pub")),
            )
        raise ConfigError(
            "There is no SSH key for a rented server to accept: no ~/.ssh/id_ed25519.pub (nor id_ecdsa.pub, "
            "id_rsa.pub) and no [vast] identity_file in tether.toml; nothing was rented.",
            "Make one with `ssh-keygen -t ed25519`, then add it to your account with "
            '`vastai create ssh-key "$(cat ~/.ssh/id_ed25519.pub)"` or paste it at https://cloud.vast.ai/manage-keys/ '
            "(Account, SSH Keys), then run `tether up` again.",
        )
    bodies = {_key_body(k) for k in on_account}
    for path, line in mine:
        if _key_body(line) in bodies:
            return path, line
    path = mine[0][0]
    raise ProviderError(
        f"The SSH key {path} is not on your Vast.ai account, so a server rented now would refuse it; nothing was "
        "rented.",
        KEY_HINT.format(pub=shlex.quote(str(path))),
    )


def identity_of(project: Project, key: tuple[Path, str] | None) -> str | None:
    """The key ssh must use on a rental (``-i`` with ``IdentitiesOnly``): ``[vast] identity_file``, else the
    private half of the key :func:`check_account_key` found on the account (its public half when the private one
    lives only in an ssh-agent: ssh then asks the agent for it), else None (ssh's own choice)."""
    if project.config.vast.identity_file:
        return project.config.vast.identity_file
    if key is None:
        return None
    pub = key[0]
    private = pub.with_name(pub.name.removesuffix(".pub"))
    return str(private if private != pub and private.is_file() else pub)


KEY_HINT = (
    'Add it to your account with `vastai create ssh-key "$(cat {pub})"`, or paste it at '
    "https://cloud.vast.ai/manage-keys/ (Account, SSH Keys), then run `tether up` again."
)


def _wait_for_key(
    project: Project,
    st: State,
    prov: Provider,
    name: str,
    rec: InstanceRecord,
    key: tuple[Path, str],
    say: Say,
    report: Report = ignore,
) -> None:
    """A fresh instance may refuse every key for its first seconds (the vendor's login banner says so): log in
    until it accepts, for at most ``[vast] ssh_wait_seconds``. A key still refused then is really refused: the
    rental is destroyed (verified gone) and ProviderError says so."""
    from tether.transport.ssh import SSHTransport, known_hosts_dir, parse_address

    assert rec.address is not None and rec.instance_id is not None
    target = parse_address(
        rec.address,
        identity_file=rec.meta.get("identity_file"),
        label=name,
        known_hosts=known_hosts_dir() / f"{rec.provider}-{rec.instance_id}",
    )
    transport = SSHTransport(target, label=name)
    deadline = time.monotonic() + project.config.vast.ssh_wait_seconds
    refused = 0
    while True:
        retrying = " (refused: a fresh server may refuse it while it starts; retrying)" if refused else ""
        report(Step(name, f"logging in to instance {rec.instance_id} with {key[0].name}{retrying}"))
        try:
            transport.run(["true"], timeout=60)
            if refused:
                say(f"{name} accepts the key now (it refused it {refused} time(s) while starting).")
            return
        except SSHError as exc:
            if exc.kind not in ("auth", "unreachable", "dropped"):
                raise
            last = exc
            refused += 1
        if time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    destroy_verified(prov, rec.instance_id)
    record(st, name, observe_instance(prov, rec.instance_id), source="key-refused")
    what = "refused the SSH key" if last.kind == "auth" else "could not be reached over SSH"
    raise ProviderError(
        f"{name} (instance {rec.instance_id}) {what} for {project.config.vast.ssh_wait_seconds:g} s "
        f"({last.message}); tether destroyed it (verified gone), so it no longer bills.",
        f"Check that {key[0]} is the key on your Vast.ai account (`vastai show ssh-keys`) and that [vast] "
        "identity_file is its private half, then run `tether up` again.",
    )


def reconcile_after_failure(project: Project, st: State, prov: Provider, name: str) -> None:
    """After a rental failed or was interrupted: adopt what it left under its label, else forget the reservation."""
    label = label_of(project, name)
    left = [i for i in prov.list_instances(label) if i.label == label and i.state != "gone"]
    if left:
        record(
            st,
            name,
            left[0],
            source="reconcile",
            meta=_adopted_meta(project),
            remote_root=project.config.vast.remote_root,
        )
    else:
        st.drop_reservation(name)


# ------------------------------------------------------------------------------------------ the commitments

#: States in which a rental counts its full committed rate against the hourly cap: it bills it, or is about to.
_COMMITTED_STATES = frozenset({"creating", "loading", "queued"})

BUDGET_HINT = (
    "Destroy what you no longer need (`tether down NAME`), pick a cheaper profile, or raise the limit it names "
    "(--max-usd, or [policy] in tether.toml)."
)


def limits_of(project: Project) -> Limits:
    policy = project.config.policy
    return Limits(policy.max_hourly_usd, policy.max_daily_usd, policy.max_total_usd)


def commitments(st: State, now: float) -> tuple[list[Commitment], float, float]:
    """Every rental this machine holds or has in flight as a :class:`Commitment` (what each spent from the
    ledger, the rate and hours it was committed at, its burn now), with the dollars spent in all and today (UTC)."""
    led = cost.ledger(st.event_log(), now)
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    out: list[Commitment] = []
    for rec in st.instances():
        if rec.provider != PROVIDER:
            continue
        committed = rec.meta.get("commit_dph")
        rate = committed if valid_price(committed) else (rec.dph_total if valid_price(rec.dph_total) else 0.0)
        hours_raw = rec.meta.get("commit_hours")
        hours = hours_raw if valid_price(hours_raw) else 0.0
        live = rec.state not in cost.FREE_STATES
        kind = cost.rate_kind(rec.state)
        if not live:
            burn = 0.0
        elif rec.state in _COMMITTED_STATES:
            burn = rate
        elif kind == "full":
            burn = rec.dph_total if valid_price(rec.dph_total) else rate
        else:
            burn = rec.storage_dph if valid_price(rec.storage_dph) else 0.0
        spent = led.by_instance[rec.name].total_usd if rec.name in led.by_instance else 0.0
        scope = rec.meta.get("budget_scope")
        out.append(Commitment(rec.name, str(scope) if scope else None, rate, hours, spent, burn, live))
    return out, led.total_usd, led.by_day.get(today, 0.0)


def commit_refusal(
    project: Project, st: State, name: str, candidate: Candidate, budget: Budget | None, now: float | None = None
) -> str | None:
    """Why renting ``candidate`` as ``name`` would cross a budget (the pure rule, :func:`tether.ledger.refusal`,
    over this machine's commitments; ``name``'s own reservation is the one being replaced), or None."""
    held, total, today = commitments(st, time.time() if now is None else now)
    others = [c for c in held if c.name != name or not c.live]
    return refusal(candidate, others, limits_of(project), budget=budget, spent_total=total, spent_today=today)


def _refuse(why: str | None, what: str = "rented") -> None:
    if why is not None:
        raise PolicyRefusal(f"{why[0].upper()}{why[1:]}; nothing was {what}.", BUDGET_HINT)


def commit(
    project: Project,
    st: State,
    name: str,
    offer: Offer,
    rate: float,
    budget: Budget | None,
    meta: dict[str, Any],
) -> None:
    """Commit the exact ``offer`` at ``rate`` (the $/hr that will be billed) for ``name``, or refuse it
    (:class:`PolicyRefusal`). The caller holds the rent lock; the reservation, with its price, is in the state
    database before the lock is released, so every other rental on this machine counts it."""
    _refuse(commit_refusal(project, st, name, Candidate(rate, f"renting offer {offer.id}"), budget))
    hours = budget.hours if budget is not None else 0.0
    scope = {"budget_scope": budget.scope} if budget is not None else {}
    st.reserve_instance(
        name,
        PROVIDER,
        project.config.vast.remote_root,
        {**meta, **scope, "offer_id": offer.id, "commit_dph": rate, "commit_hours": hours},
    )


def observe(project: Project, st: State, name: str, *, provider: Provider | None = None) -> InstanceRecord:
    """Ask the provider for the instance's state and prices now, and write them to the ledger."""
    rec = rented(st, name)
    assert rec.instance_id is not None
    with _provider(project, provider) as prov:
        inst = observe_instance(prov, rec.instance_id)
    return record(st, name, inst, source="observe")


def start(
    project: Project, st: State, name: str, *, say: Say = _quiet, provider: Provider | None = None
) -> dict[str, Any]:
    """Start a stopped server, wait until it runs and re-read its SSH address (it changes across a restart).

    A start the provider queues (the GPU is in use) would start, and bill, by itself later: while waiting tether says
    so, and when the wait gives up it sends a stop and verifies it, so no queued start is left unwatched.
    """
    rec = rented(st, name)
    assert rec.instance_id is not None
    with _provider(project, provider) as prov:
        with rent_lock():
            # A start raises the burn from storage to the full rate: it is committed like a rental.
            rate = rec.dph_total if valid_price(rec.dph_total) else rec.meta.get("commit_dph")
            if valid_price(rate):
                _refuse(commit_refusal(project, st, name, Candidate(rate, f"starting {name}"), None), "started")
            prov.start(rec.instance_id)
            now = record(st, name, observe_instance(prov, rec.instance_id), source="start")
        if now.state == "queued":
            say(
                f"{name}'s start is queued by the provider (its GPU is in use); waiting up to "
                f"{_wait_s(project):g} s, then tether cancels it."
            )
        try:
            inst = wait_running(prov, rec.instance_id, _wait_s(project), poll_s=project.config.vast.poll_seconds)
        except TetherError as exc:
            after = record(st, name, observe_instance(prov, rec.instance_id), source="start-failed")
            cancelled = ""
            if after.state in ("queued", "loading", "creating"):
                cancelled = " " + _cancel_start(prov, st, name, rec.instance_id, project)
            raise ProviderError(
                f"{name} did not come back after a start: {exc.message}{cancelled}",
                "The GPU was probably rented by someone else while it was stopped. Its disk is kept (and billed for "
                f"storage): wait and retry `tether start {name}`, or rent a new server and move the data "
                f"(`tether up NEW --profile ...`), then `tether destroy {name}`.",
            ) from None
    new = record(st, name, inst, source="start")
    say(f"{name} is running at {new.address}.")
    return {"instance_id": inst.id, "reused": True, "address": new.address, "dph_total": new.dph_total}


def _cancel_start(prov: Provider, st: State, name: str, instance_id: str, project: Project) -> str:
    """Send a stop for a start that did not finish, and verify the provider no longer means to run it; the
    sentence that says what happened."""
    prov.stop(instance_id)
    deadline = time.monotonic() + max(30.0, 10 * project.config.vast.poll_seconds)
    while True:
        inst = observe_instance(prov, instance_id)
        if inst.state in ("stopped", "gone"):
            record(st, name, inst, source="start-cancelled")
            return "tether sent a stop and verified it: the queued start will not run (or bill) by itself."
        if time.monotonic() >= deadline:
            record(st, name, inst, source="start-cancelled")
            return (
                f"tether sent a stop, but the instance is still {inst.state}: check `tether ls` and stop it by hand "
                "if it runs."
            )
        time.sleep(project.config.vast.poll_seconds)


def stop(project: Project, st: State, name: str, *, provider: Provider | None = None) -> InstanceRecord:
    """Ask the provider to stop the server (the disk is kept and billed as storage) and record what it says."""
    rec = rented(st, name)
    assert rec.instance_id is not None
    with _provider(project, provider) as prov:
        prov.stop(rec.instance_id)
        inst = observe_instance(prov, rec.instance_id)
    return record(st, name, inst, source="stop")


def destroy(project: Project, st: State, name: str, *, provider: Provider | None = None) -> InstanceRecord:
    """Destroy (idempotent) and verify the provider no longer has it. Safety checks are the caller's."""
    rec = rented(st, name)
    assert rec.instance_id is not None
    with _provider(project, provider) as prov:
        if rec.state != "gone":
            destroy_verified(prov, rec.instance_id)
        inst = observe_instance(prov, rec.instance_id)
    return record(st, name, inst, source="destroy")
