"""The ``local`` provider: this machine, always there, never rented, never billed."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from tether.errors import ProviderError
from tether.providers.base import Instance, Offer

LOCAL_ID = "local"


class LocalProvider:
    """This machine as an instance named ``local``; lifecycle operations that rent or bill are refused."""

    name = "local"

    def _instance(self) -> Instance:
        return Instance(id=LOCAL_ID, label=socket.gethostname(), state="running", status="this machine")

    def search(self, query_body: Mapping[str, Any]) -> list[Offer]:
        return []

    def create(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        label: str | None = None,
        onstart: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        raise ProviderError("The local provider has no offers to rent.", "Use --provider vast to rent a server.")

    def show(self, instance_id: str) -> Instance:
        if instance_id != LOCAL_ID:
            raise ProviderError(f"The local provider has only the instance 'local', not {instance_id!r}.")
        return self._instance()

    def list(self) -> list[Instance]:
        return [self._instance()]

    def stop(self, instance_id: str) -> None:
        raise ProviderError("Stop is only for rented instances; this machine is not billed.")

    def start(self, instance_id: str) -> None:
        raise ProviderError("Start is only for rented instances; this machine is always available.")

    def destroy(self, instance_id: str) -> None:
        raise ProviderError("Destroy is only for rented instances; tether never deletes this machine.")
