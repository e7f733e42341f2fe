"""Vast.ai: the HTTP client (:mod:`.api`), JSON → models (:mod:`.translate`), the query language (:mod:`.query`)
and the :class:`~tether.providers.base.Provider` built on them (:mod:`.provider`).

Only the registry (:mod:`tether.providers`) and this package's tests import it.
"""

from tether.providers.vast.api import VastClient, find_api_key
from tether.providers.vast.provider import VastProvider

__all__ = ["VastClient", "VastProvider", "find_api_key"]
