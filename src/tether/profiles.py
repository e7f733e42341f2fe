"""tether's side of renting: GPU profiles (what to search for, how to rank, what to rent with), ranking, estimates.

A :class:`Profile` is the one type of a profile: the search (a query in the provider's language, an order, the
offer type and the disk size) and what a rental of it gets (the image). The defaults are the runbook's table;
``[profiles.NAME]`` in ``tether.toml`` (:class:`tether.config.ProfileConfig`) overrides them or adds new ones, and
:func:`profile_from_config` is the one function that builds a profile from it. The query itself is checked by the
provider (:func:`tether.providers.check_query`): this module never parses a provider's query language.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from tether.config import ProfileConfig, Project
from tether.errors import ConfigError
from tether.providers import OfferQuery, OfferType, check_query

__all__ = [
    "DEFAULT_PROFILES",
    "KIND_PROFILES",
    "Profile",
    "estimate_cost",
    "profile_for_kind",
    "profile_from_config",
    "project_profile",
    "rank_offers",
    "resolve_profile",
]


# ------------------------------------------------------------------------------------------ profiles


@dataclass(frozen=True)
class Profile:
    """A named search and what a rental of it gets.

    ``query`` and ``order`` are in the provider's query language; ``min_disk_gb`` is the disk rented (and quoted:
    it changes the $/hr); ``image`` None means ``[vast] image``; ``type`` is ``on-demand``, ``bid``
    (interruptible) or ``reserved``.
    """

    name: str
    query: str
    order: str = "dph+"
    min_disk_gb: float = 20.0
    description: str = ""
    image: str | None = None
    type: OfferType = "on-demand"
    bid_usd: float | None = None
    bid_margin: float | None = None
    min_inet_down: float | None = None
    """Mb/s: a search filter (``inet_down>=X``); the preflight's download must reach a tenth of it."""
    direct_ssh: bool = False
    """Only offers with a direct port (``direct_port_count>=1``), not the provider's SSH proxy."""
    verified: bool | None = None
    """``verified=true``/``false``; None keeps the provider's default (verified machines)."""
    min_cuda: float | None = None
    """The least CUDA version the host's driver must support (checked by the preflight)."""
    min_disk_free_gb: float | None = None
    """Free disk the preflight requires on the workspace (None: half the rented disk)."""
    preflight_command: str | None = None
    """A command the preflight runs on every new rental before any code (e.g. a small torch matmul); exit 0."""

    def search_text(self) -> str:
        """The query with the profile's own filters added (``inet_down``, ``direct_port_count``, ``verified``)."""
        terms = [self.query] if self.query else []
        if self.min_inet_down is not None:
            terms.append(f"inet_down>={self.min_inet_down:g}")
        if self.direct_ssh:
            terms.append("direct_port_count>=1")
        if self.verified is not None:
            terms.append(f"verified={'true' if self.verified else 'false'}")
        return " ".join(terms)

    def bid_for(self, min_bid: float | None) -> float | None:
        """The $/hr this profile bids for an offer whose minimum bid is ``min_bid``; None when it cannot bid there
        (no minimum known, or ``bid_usd`` below it: the rental would be outbid at once)."""
        if min_bid is None:
            return None
        if self.bid_usd is not None:
            return self.bid_usd if self.bid_usd >= min_bid else None
        raised = min_bid * (1.0 + (self.bid_margin or 0.0))
        return math.ceil(raised * 10_000 - 1e-6) / 10_000  # whole 1/100 cents, never below the minimum

    def offer_query(
        self, *, query: str | None = None, order: str | None = None, limit: int | None = None
    ) -> OfferQuery:
        """The provider-neutral search for this profile (``query``/``order`` replace the profile's own)."""
        return OfferQuery(
            text=self.search_text() if query is None else query,
            order=order or self.order,
            type=self.type,
            disk_gb=self.min_disk_gb,
            limit=limit,
        )


DEFAULT_PROFILES: dict[str, Profile] = {
    "api": Profile("api", "reliability>0.95 num_gpus=1", "dph+", 20.0, "API-only experiments; CPU is enough"),
    "inference": Profile(
        "inference",
        "gpu_ram>=24 reliability>0.95 num_gpus=1",
        "dph+",
        60.0,
        "local inference (Ollama, llama.cpp); 24 GB VRAM",
    ),
    "finetune": Profile(
        "finetune",
        "gpu_ram>=40 reliability>0.95 num_gpus>=2",
        "dph+",
        150.0,
        "fine-tuning; 40+ GB VRAM on 2+ GPUs",
    ),
}

#: Experiment kind → profile name (``None``: runs here, rents nothing).
KIND_PROFILES: dict[str, str | None] = {
    "api": "api",
    "inference": "inference",
    "finetune": "finetune",
    "local": None,
}


def profile_from_config(name: str, cfg: ProfileConfig | None) -> Profile:
    """The profile called ``name``: ``[profiles.NAME]`` (unset keys keep the default profile's values) over the
    default one, its query and order checked by the provider. ConfigError for a name that is neither."""
    base = DEFAULT_PROFILES.get(name)
    if base is None and cfg is None:
        raise ConfigError(f"Unknown GPU profile {name!r}.", "Known profiles: " + ", ".join(DEFAULT_PROFILES) + ".")
    if base is None:
        base = Profile(name, "")
    if cfg is not None:
        base = replace(
            base,
            query=base.query if cfg.query is None else cfg.query,
            order=base.order if cfg.order is None else cfg.order,
            min_disk_gb=base.min_disk_gb if cfg.disk_gb is None else float(cfg.disk_gb),
            image=base.image if cfg.image is None else cfg.image,
            type=cfg.type,
            bid_usd=cfg.bid_usd,
            bid_margin=cfg.bid_margin,
            min_inet_down=cfg.min_inet_down,
            direct_ssh=cfg.direct_ssh,
            verified=cfg.verified,
            min_cuda=cfg.min_cuda,
            min_disk_free_gb=cfg.min_disk_free_gb,
            preflight_command=cfg.preflight_command,
        )
    check_query(base.search_text(), base.order)  # refuse a bad query now, with its position
    return base


def _config_of(name: str, over: ProfileConfig | Mapping[str, Any]) -> ProfileConfig:
    if isinstance(over, ProfileConfig):
        return over
    data = dict(over)
    if "min_disk_gb" in data:
        disk_raw = data.pop("min_disk_gb")
        try:
            data["disk_gb"] = float(disk_raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Profile {name!r} has a bad min_disk_gb {disk_raw!r}.", "Give a number of GB.") from exc
    try:
        return ProfileConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"Profile {name!r} has a bad {key}: {first['msg']}.") from None


def resolve_profile(name: str, overrides: Mapping[str, ProfileConfig | Mapping[str, Any]] | None = None) -> Profile:
    """The profile called ``name`` with its override, if any (``[profiles]`` of tether.toml, or a mapping with the
    same keys, ``min_disk_gb`` for ``disk_gb``), over the default one."""
    over = (overrides or {}).get(name)
    if over is None and name not in DEFAULT_PROFILES:
        known = sorted(set(DEFAULT_PROFILES) | set(overrides or {}))
        close = difflib.get_close_matches(name, known, n=1)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown GPU profile {name!r}{suggestion}", "Known profiles: " + ", ".join(known) + ".")
    return profile_from_config(name, None if over is None else _config_of(name, over))


def project_profile(
    project: Project,
    name: str,
    *,
    disk_gb: float | None = None,
    image: str | None = None,
    offer_type: OfferType | None = None,
) -> Profile:
    """The project's profile ``name``, its image defaulting to ``[vast] image``; ``disk_gb``, ``image`` and
    ``offer_type`` (from the command line) replace the configured ones."""
    prof = resolve_profile(name, project.config.profiles)
    return replace(
        prof,
        min_disk_gb=prof.min_disk_gb if disk_gb is None else disk_gb,
        image=image or prof.image or project.config.vast.image,
        type=offer_type or prof.type,
    )


def profile_for_kind(kind: str) -> str | None:
    """The profile an experiment kind rents with, or None for ``local``."""
    if kind not in KIND_PROFILES:
        raise ConfigError(f"Unknown experiment kind {kind!r}.", "Use one of: " + ", ".join(KIND_PROFILES) + ".")
    return KIND_PROFILES[kind]


# ------------------------------------------------------------------------------------------ ranking


class _Priced(Protocol):
    @property
    def dph_total(self) -> float: ...

    @property
    def reliability(self) -> float: ...


_T = TypeVar("_T", bound=_Priced)


def rank_offers(offers: Iterable[_T]) -> list[_T]:
    """Cheapest ``dph_total`` first (quoted for the disk asked), ties broken by higher reliability."""
    return sorted(offers, key=lambda o: (o.dph_total, -o.reliability))


def estimate_cost(offer: _Priced, hours: float) -> float:
    """Dollars an offer costs if it runs ``hours`` hours (GPU and storage, traffic not included)."""
    if hours < 0:
        raise ConfigError(f"Hours must not be negative, not {hours!r}.")
    return round(offer.dph_total * hours, 6)
