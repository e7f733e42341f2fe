"""Dispatch, pure: where each experiment should run and why, by the runbook's rules.

The rules, first match wins:

1. figure or LaTeX work (``figures = true``) and ``kind = "local"`` run **locally** (free, instant; nothing to rent);
2. short runs (``items x item_seconds / concurrency`` under ``[policy] local_max_minutes``, 30 by default) run
   **locally**, unless the local machine is marked off or busy (``--local-busy`` or ``[policy] local_busy``);
3. ``kind = "api"`` with more than 100 items, or with the local machine busy ("rent even for API-only": a cheap CPU
   instance keeps runs going around the clock), runs **remotely on a CPU-ok offer** (profile ``api``); with 100 items
   or fewer it runs locally;
4. ``kind = "inference"`` runs on a **remote GPU** of profile ``inference``, ``kind = "finetune"`` on profile
   ``finetune``.

An experiment without ``items`` or ``item_seconds`` is still placed by its kind (and by ``items`` when known), but
its duration and cost are unknown: ``missing`` names the keys to add. The estimated cost is the duration in hours
times the ``dph_total`` of the cheapest matching offer today (``offer_lookup(profile)``, which the caller backs with a
provider search); local runs cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tether.config import ExperimentConfig, PolicyConfig, Project
from tether.profiles import profile_for_kind
from tether.providers import Offer

__all__ = ["API_REMOTE_MIN_ITEMS", "OfferLookup", "PlanEntry", "estimate_duration", "plan_all", "plan_experiment"]

#: API-only experiments with more items than this run remotely (the runbook's "N>100").
API_REMOTE_MIN_ITEMS = 100

Where = Literal["local", "remote-cpu", "remote-gpu"]
OfferLookup = Callable[[str], Offer | None]

_OFFER_KEYS = (
    "id",
    "gpu_name",
    "num_gpus",
    "gpu_ram_gb",
    "dph_total",
    "storage_total_cost",
    "reliability",
    "geolocation",
)


@dataclass(frozen=True)
class PlanEntry:
    """Where one experiment runs, why, and what it should take and cost."""

    experiment: str
    where: Where
    profile: str | None
    reasons: list[str]
    est_duration_s: float | None
    est_cost_usd: float | None
    cheapest_offer: dict[str, Any] | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def remote(self) -> bool:
        return self.where != "local"

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "where": self.where,
            "profile": self.profile,
            "reasons": list(self.reasons),
            "est_duration_s": self.est_duration_s,
            "est_cost_usd": None if self.est_cost_usd is None else round(self.est_cost_usd, 6),
            "cheapest_offer": self.cheapest_offer,
            "missing": list(self.missing),
        }


def estimate_duration(exp: ExperimentConfig, items: int | None = None) -> float | None:
    """Seconds ``items`` items take (``items x item_seconds / concurrency``; by default the experiment's ``items``:
    one whole run), or None when a figure is missing. The one duration estimate of tether: plans, ``tether vast
    offers --for`` and a managed run's shards (``items`` left in a shard) use it."""
    count = exp.items if items is None else items
    if count is None or exp.item_seconds is None:
        return None
    return max(0, count) * exp.item_seconds / max(1, exp.concurrency)


def _minutes(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def gpu_need_gb(exp: ExperimentConfig) -> float:
    """GPU memory an experiment needs: its ``gpu_gb``, else what its kind implies (24 GB, 40 GB, none)."""
    if exp.gpu_gb > 0:
        return exp.gpu_gb
    return {"inference": 24.0, "finetune": 40.0}.get(exp.kind, 0.0)


def _fits_here(exp: ExperimentConfig, policy: PolicyConfig) -> bool:
    return gpu_need_gb(exp) <= policy.local_gpu_gb


def plan_experiment(
    name: str,
    exp: ExperimentConfig,
    policy: PolicyConfig,
    *,
    local_busy: bool = False,
    offer_lookup: OfferLookup | None = None,
) -> PlanEntry:
    """Where experiment ``name`` should run and why (see the module docstring for the rules)."""
    busy = local_busy or policy.local_busy
    duration = estimate_duration(exp)
    missing = [key for key in ("items", "item_seconds") if getattr(exp, key) is None]
    reasons: list[str] = []
    if missing:
        reasons.append(
            f"duration unknown: add {' and '.join(missing)} to [experiments.{name}] in tether.toml "
            "for a duration and cost estimate; placed by its kind"
            + (" and item count" if exp.items is not None else "")
            + " meanwhile"
        )
    elif duration is not None:
        reasons.append(
            f"estimated {_minutes(duration)} ({exp.items} items x {exp.item_seconds:g} s / {exp.concurrency} at once)"
        )
    limit_s = policy.local_max_minutes * 60.0
    where: Where
    profile: str | None
    if exp.figures or exp.kind == "local":
        where, profile = "local", None
        what = "figure or LaTeX work" if exp.figures else "a local experiment (kind local)"
        reasons.append(f"{what} runs on this machine: free and instant")
        if busy:
            reasons.append("the local machine is marked busy; it runs here when the machine is free")
    elif duration is not None and duration < limit_s and not busy and _fits_here(exp, policy):
        where, profile = "local", None
        reasons.append(f"a short run (under {policy.local_max_minutes:g} min) runs on this machine: free and instant")
    elif exp.kind == "api":
        many = exp.items is not None and exp.items > API_REMOTE_MIN_ITEMS
        if busy:
            where, profile = "remote-cpu", "api"
            reasons.append(
                "the local machine is marked off or busy: rent even for API-only, a cheap CPU-ok instance keeps "
                "the run going around the clock"
            )
        elif many:
            where, profile = "remote-cpu", "api"
            reasons.append(
                f"API-only with {exp.items} items (more than {API_REMOTE_MIN_ITEMS}) runs remotely on a CPU-ok "
                "offer, unattended overnight"
            )
        elif exp.items is None:
            where, profile = "remote-cpu", "api"
            reasons.append("API-only with an unknown item count: planned remotely on a CPU-ok offer by its kind")
        else:
            where, profile = "local", None
            reasons.append(
                f"API-only with {exp.items} items ({API_REMOTE_MIN_ITEMS} or fewer) runs on this machine: "
                "no GPU needed and nothing to rent"
            )
    else:
        profile = profile_for_kind(exp.kind)
        where = "remote-gpu"
        need = "24 GB" if exp.kind == "inference" else "40+ GB on 2+ GPUs"
        if exp.gpu_gb > 0:
            need = f"{exp.gpu_gb:g} GB"
        what = "local-model inference" if exp.kind == "inference" else "fine-tuning"
        reasons.append(f"{what} needs GPU memory ({need}): rent a GPU of profile {profile}")
        if busy:
            reasons.append("the local machine is marked off or busy")
    offer_row: dict[str, Any] | None = None
    cost: float | None = 0.0 if where == "local" else None
    if profile is not None:
        offer = offer_lookup(profile) if offer_lookup is not None else None
        if offer is not None:
            full = offer.row()
            offer_row = {key: full.get(key) for key in _OFFER_KEYS}
            if duration is not None:
                cost = duration / 3600.0 * offer.dph_total
                reasons.append(
                    f"about ${cost:.2f} on today's cheapest {profile} offer ({offer.gpu_name or 'CPU'}, "
                    f"${offer.dph_total:.3f}/hr)"
                )
            else:
                reasons.append(f"today's cheapest {profile} offer costs ${offer.dph_total:.3f}/hr")
        elif offer_lookup is not None:
            reasons.append(f"no offer matches profile {profile} today: cost unknown")
    return PlanEntry(
        experiment=name,
        where=where,
        profile=profile,
        reasons=reasons,
        est_duration_s=duration,
        est_cost_usd=cost,
        cheapest_offer=offer_row,
        missing=missing,
    )


def plan_all(
    project: Project,
    local_busy: bool = False,
    offer_lookup: OfferLookup | None = None,
    names: Sequence[str] | None = None,
) -> list[PlanEntry]:
    """The plan of every experiment in ``tether.toml`` (or of ``names``, in that order; an unknown name raises
    ``ConfigError``). ``offer_lookup`` is asked at most once per profile."""
    cache: dict[str, Offer | None] = {}

    def lookup(profile: str) -> Offer | None:
        if offer_lookup is None:
            return None
        if profile not in cache:
            cache[profile] = offer_lookup(profile)
        return cache[profile]

    chosen = list(names) if names else list(project.config.experiments)
    return [
        plan_experiment(
            name,
            project.experiment(name),
            project.config.policy,
            local_busy=local_busy,
            offer_lookup=lookup if offer_lookup is not None else None,
        )
        for name in chosen
    ]
