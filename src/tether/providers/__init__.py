"""Providers give rented instances; this package's root is their registry.

:mod:`tether.providers.base` holds the :class:`Provider` ABC and the models. Each provider lives in its own package
(``tether.providers.vast``: Vast.ai) and is reached only through the functions here, so the rest of tether
(rentals, renting, the CLI, the plan, the autopilot) speaks the ABC and never a provider's JSON or query language.
This module is the only importer of ``tether.providers.vast`` outside that package's own tests.
"""

from __future__ import annotations

import os
from typing import Any

from tether.config import Project
from tether.errors import ConfigError
from tether.providers.base import (
    OFFER_TYPES,
    STOPPED_STATES,
    Instance,
    InstanceState,
    Offer,
    OfferQuery,
    OfferType,
    Provider,
    ssh_address,
)

__all__ = [
    "OFFER_TYPES",
    "PROVIDERS",
    "STOPPED_STATES",
    "Instance",
    "InstanceState",
    "Offer",
    "OfferQuery",
    "OfferType",
    "Provider",
    "check_query",
    "provider_class",
    "provider_for",
    "search_body",
    "ssh_address",
]

#: The providers tether knows, by the name recorded in local state.
PROVIDERS = ("vast",)
DEFAULT = "vast"


def provider_class(name: str = DEFAULT) -> type[Provider]:
    """The :class:`Provider` class called ``name`` (as recorded in local state)."""
    if name == "vast":
        from tether.providers.vast import VastProvider

        return VastProvider
    raise ConfigError(f"Unknown provider {name!r}.", "Known providers: " + ", ".join(PROVIDERS) + ".")


def provider_for(project: Project, name: str = DEFAULT) -> Provider:
    """The project's provider, configured from ``tether.toml``.

    Vast.ai: the key from ``VAST_API_KEY`` or the vendor CLI's key files; the URL from ``[vast] url`` or
    ``VAST_URL``; retries and backoff from ``[vast]``.
    """
    if name == "vast":
        from tether.providers.vast import VastClient, VastProvider

        vast = project.config.vast
        return VastProvider(VastClient(base_url=vast.url, max_retries=vast.retries, backoff_base=vast.backoff_seconds))
    provider_class(name)  # raises for an unknown name
    raise AssertionError(f"provider {name!r} is registered but cannot be built")


def api_url(project: Project, name: str = DEFAULT) -> str:
    """The provider API a server of this project reaches to stop itself (Vast.ai: ``[vast] url``, else
    ``VAST_URL``, else the service's own address)."""
    if name == "vast":
        from tether.providers.vast.api import DEFAULT_URL

        return (project.config.vast.url or os.environ.get("VAST_URL") or DEFAULT_URL).rstrip("/")
    provider_class(name)
    raise AssertionError(f"provider {name!r} is registered but has no API address")


def check_query(text: str, order: str, provider: str = DEFAULT) -> None:
    """Refuse a query or order the provider cannot read (ConfigError with the position); no request is made."""
    provider_class(provider).check_query(text, order)


def search_body(query: OfferQuery, provider: str = DEFAULT) -> dict[str, Any]:
    """The exact request body the provider sends for ``query`` (for emulators and simulations that skip HTTP)."""
    if provider == "vast":
        from tether.providers.vast.query import body_for

        return body_for(query)
    provider_class(provider)
    raise AssertionError(f"provider {provider!r} has no wire body")
