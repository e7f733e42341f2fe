"""The ``ssh`` provider: servers the user already has, listed in config. Nothing is rented or billed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tether.errors import ConfigError, ProviderError
from tether.providers.base import Instance, Offer


@dataclass(frozen=True)
class SshHostSpec:
    """A configured host: its name in config and how to reach it."""

    name: str
    host: str
    port: int = 22
    user: str = "root"


class SshProvider:
    """Configured hosts as instances (always ``running`` as far as tether knows); no offers, no billing."""

    name = "ssh"

    def __init__(self, hosts: Iterable[SshHostSpec]) -> None:
        self._hosts: dict[str, SshHostSpec] = {}
        for h in hosts:
            if h.name in self._hosts:
                raise ConfigError(f"The host name {h.name!r} is configured twice.", "Give each host its own name.")
            self._hosts[h.name] = h

    def _instance(self, spec: SshHostSpec) -> Instance:
        return Instance(
            id=spec.name,
            label=spec.name,
            state="running",
            status="configured host",
            ssh_host=spec.host,
            ssh_port=spec.port,
            ssh_user=spec.user,
        )

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
        raise ProviderError(
            "The ssh provider has no offers to rent.",
            "Add the server to the hosts in tether.toml, or use --provider vast to rent one.",
        )

    def show(self, instance_id: str) -> Instance:
        spec = self._hosts.get(instance_id)
        if spec is None:
            known = ", ".join(sorted(self._hosts)) or "none"
            raise ConfigError(f"No configured host is named {instance_id!r}.", f"Configured hosts: {known}.")
        return self._instance(spec)

    def list(self) -> list[Instance]:
        return [self._instance(s) for s in self._hosts.values()]

    def stop(self, instance_id: str) -> None:
        self.show(instance_id)
        raise ProviderError("Stop is only for rented instances; tether does not power off your own servers.")

    def start(self, instance_id: str) -> None:
        self.show(instance_id)
        raise ProviderError("Start is only for rented instances; your own servers are started by you.")

    def destroy(self, instance_id: str) -> None:
        self.show(instance_id)
        raise ProviderError(
            "Destroy is only for rented instances; tether never deletes your own servers.",
            "Remove the host from tether.toml if you no longer want to use it.",
        )
