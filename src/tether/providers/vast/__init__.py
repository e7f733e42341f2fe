"""Vast.ai: the HTTP client (:mod:`.api`) and the provider with renting (:mod:`.provider`)."""

from tether.providers.vast.api import VastClient, find_api_key
from tether.providers.vast.provider import (
    VastProvider,
    destroy_verified,
    find_offers,
    rent,
    ssh_address,
    wait_running,
)

__all__ = [
    "VastClient",
    "VastProvider",
    "destroy_verified",
    "find_api_key",
    "find_offers",
    "rent",
    "ssh_address",
    "wait_running",
]
