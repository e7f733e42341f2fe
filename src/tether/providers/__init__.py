"""Providers give instances: ``local`` (this machine), ``ssh`` (hosts the user owns), ``vast`` (rented).

A provider knows offers and lifecycle (search, create, show, list, stop, start, destroy); it knows nothing
about SSH sessions or experiments. Destroy is idempotent. :mod:`tether.providers.base` holds the protocol
and the models.
"""

from tether.providers.base import Instance, InstanceState, Offer, Provider

__all__ = ["Instance", "InstanceState", "Offer", "Provider"]
