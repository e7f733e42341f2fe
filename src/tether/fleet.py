"""Rented servers: search, rent, observe, stop, start and destroy, with every state and price written to the ledger.

The provider (Vast.ai, or the emulator in tests) knows offers and lifecycle; this module ties it to the project (its
profiles, its ``[vast]`` settings), to local state (``instances`` and the ``instance_events`` cost ledger) and to
the safety rules: never destroy a server whose results are not home, never leave a failed rental billing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tether.config import Project
from tether.errors import ConfigError, ProviderError, TetherError
from tether.offers import Profile, parse_query, resolve_profile
from tether.providers.base import Instance, Offer
from tether.providers.vast.provider import (
    VastProvider,
    destroy_verified,
    find_offers,
    rent,
    ssh_address,
    wait_running,
)
from tether.state import InstanceRecord, State

Say = Callable[[str], None]
PROVIDER = "vast"


def _quiet(_message: str) -> None:
    return None


def provider_for(project: Project) -> VastProvider:
    """The Vast.ai provider: key from VAST_API_KEY or the vendor CLI's key files; URL from [vast] url or VAST_URL."""
    vast = project.config.vast
    return VastProvider(base_url=vast.url, max_retries=vast.retries, backoff_base=vast.backoff_seconds)


def profile_overrides(project: Project) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, prof in project.config.profiles.items():
        over: dict[str, Any] = {}
        if prof.query is not None:
            over["query"] = prof.query
        if prof.order is not None:
            over["order"] = prof.order
        if prof.disk_gb is not None:
            over["min_disk_gb"] = prof.disk_gb
        out[name] = over
    return out


@dataclass(frozen=True)
class Search:
    profile: Profile
    offer_type: str
    disk_gb: float
    image: str


def search_spec(project: Project, profile: str, *, disk_gb: float | None = None, image: str | None = None) -> Search:
    prof = resolve_profile(profile, profile_overrides(project))
    cfg = project.config.profiles.get(profile)
    return Search(
        profile=prof,
        offer_type=cfg.type if cfg else "on-demand",
        disk_gb=disk_gb if disk_gb is not None else prof.min_disk_gb,
        image=image or (cfg.image if cfg and cfg.image else project.config.vast.image),
    )


def search(
    provider: VastProvider,
    spec: Search,
    *,
    query: str | None = None,
    order: str | None = None,
    limit: int | None = None,
) -> list[Offer]:
    """Live offers for the profile (or for ``query`` instead of its query), cheapest first."""
    parsed = parse_query(query) if query is not None else spec.profile.parsed()
    return find_offers(
        provider,
        parsed,
        order=order or spec.profile.order,
        offer_type=spec.offer_type,
        disk_gb=spec.disk_gb,
        limit=limit,
    )


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
        dph_total=inst.dph_total if inst.state != "gone" else (old.dph_total if old else None),
        storage_dph=inst.storage_total_cost if inst.state != "gone" else (old.storage_dph if old else None),
        created=old.created if old and old.instance_id == inst.id else ts,
        updated=ts,
        meta=merged,
    )
    st.upsert_instance(rec, source=source)
    return rec


def project_root_for(instance_id: str, template: str) -> str:
    """``[vast] remote_root`` for one instance (``{instance_id}`` is replaced; default ``/workspace``)."""
    return template.replace("{instance_id}", str(instance_id))


def rented(st: State, name: str) -> InstanceRecord:
    rec = st.instance(name)
    if rec is None or rec.provider != PROVIDER or not rec.instance_id:
        known = ", ".join(r.name for r in st.instances() if r.provider == PROVIDER and r.state != "gone") or "none"
        raise ConfigError(f"No rented server is called {name!r}.", f"Rented servers: {known}. `tether ls` lists them.")
    return rec


def _wait_s(project: Project) -> float:
    return project.config.vast.wait_minutes * 60


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
    say: Say = _quiet,
    provider: VastProvider | None = None,
) -> dict[str, Any]:
    """Rent a server called ``name`` (or reuse the one already rented under that name) and wait until it runs."""
    prov = provider or provider_for(project)
    existing = st.instance(name)
    if existing is not None and existing.provider == PROVIDER and existing.state != "gone" and existing.instance_id:
        inst = prov.show(existing.instance_id)
        if inst.state == "running":
            rec = record(st, name, inst, source="up")
            return {"instance_id": inst.id, "reused": True, "address": rec.address, "dph_total": inst.dph_total}
        if inst.state == "stopped":
            say(f"{name} is stopped; starting it.")
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
    spec = search_spec(project, profile or "api", disk_gb=disk_gb, image=image)
    if offer_id:
        offers = [o for o in search(prov, spec, query="") if str(o.id) == offer_id]
        if not offers:
            raise ProviderError(f"Offer {offer_id} is not available.", "List current offers with `tether offers`.")
    else:
        offers = search(prov, spec)
    _check_budget(project, st, min(o.dph_total for o in offers))
    label = f"tether:{project.name}:{name}"
    say(f"Renting {name} ({spec.profile.name}): {len(offers)} offers, cheapest ${offers[0].dph_total:.4f}/hr.")
    inst = rent(
        prov,
        offers,
        image=spec.image,
        disk_gb=spec.disk_gb,
        label=label,
        max_price=max_price,
        wait_deadline_s=_wait_s(project),
        poll_s=project.config.vast.poll_seconds,
        on_event=say,
    )
    meta = {
        "profile": spec.profile.name,
        "image": spec.image,
        "disk_gb": spec.disk_gb,
        "identity_file": project.config.vast.identity_file,
        "gpu_name": inst.gpu_name,
        "num_gpus": inst.num_gpus,
        "gpu_ram_gb": inst.gpu_ram_gb,
    }
    rec = record(st, name, inst, source="rent", meta=meta, remote_root=project.config.vast.remote_root)
    return {"instance_id": inst.id, "reused": False, "address": rec.address, "dph_total": inst.dph_total}


def _check_budget(project: Project, st: State, new_dph: float) -> None:
    try:
        from tether import cost
    except ImportError:
        return
    ledger = cost.ledger(st.event_log(), time.time())
    cost.check_budget(project.config.policy, ledger, new_dph)


def observe(project: Project, st: State, name: str, *, provider: VastProvider | None = None) -> InstanceRecord:
    """Ask the provider for the instance's state and prices now, and write them to the ledger."""
    rec = rented(st, name)
    assert rec.instance_id is not None
    inst = (provider or provider_for(project)).show(rec.instance_id)
    return record(st, name, inst, source="observe")


def start(
    project: Project, st: State, name: str, *, say: Say = _quiet, provider: VastProvider | None = None
) -> dict[str, Any]:
    """Start a stopped server, wait until it runs and re-read its SSH address (it changes across a restart)."""
    prov = provider or provider_for(project)
    rec = rented(st, name)
    assert rec.instance_id is not None
    prov.start(rec.instance_id)
    record(st, name, prov.show(rec.instance_id), source="start")
    try:
        inst = wait_running(prov, rec.instance_id, _wait_s(project), poll_s=project.config.vast.poll_seconds)
    except TetherError as exc:
        record(st, name, prov.show(rec.instance_id), source="start-failed")
        raise ProviderError(
            f"{name} did not come back after a start: {exc.message}",
            "The GPU was probably rented by someone else while it was stopped. Its disk is kept (and billed for "
            f"storage): wait and retry `tether start {name}`, or rent a new server and move the data "
            f"(`tether up NEW --profile ...`), then `tether destroy {name}`.",
        ) from None
    new = record(st, name, inst, source="start")
    say(f"{name} is running at {new.address}.")
    return {"instance_id": inst.id, "reused": True, "address": new.address, "dph_total": inst.dph_total}


def stop(project: Project, st: State, name: str, *, provider: VastProvider | None = None) -> InstanceRecord:
    prov = provider or provider_for(project)
    rec = rented(st, name)
    assert rec.instance_id is not None
    prov.stop(rec.instance_id)
    return record(st, name, prov.show(rec.instance_id), source="stop")


def destroy(project: Project, st: State, name: str, *, provider: VastProvider | None = None) -> InstanceRecord:
    """Destroy (idempotent) and verify the provider no longer has it. Safety checks are the caller's."""
    prov = provider or provider_for(project)
    rec = rented(st, name)
    assert rec.instance_id is not None
    if rec.state != "gone":
        destroy_verified(prov, rec.instance_id)
    return record(st, name, prov.show(rec.instance_id), source="destroy")
