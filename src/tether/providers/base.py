"""The Provider protocol and the Offer and Instance models every provider returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

InstanceState = Literal["creating", "loading", "running", "stopped", "exited", "unknown", "gone"]

#: States an instance never leaves by itself on the way to ``running``.
DEAD_STATES: frozenset[str] = frozenset({"exited", "unknown", "gone"})


class Offer(BaseModel):
    """A machine for rent, with its price quoted for the disk size asked in the search."""

    model_config = ConfigDict(frozen=True)

    id: int
    gpu_name: str = ""
    num_gpus: int = 0
    gpu_ram_gb: float = 0.0
    gpu_total_ram_gb: float = 0.0
    dph_total: float
    dph_base: float = 0.0
    storage_cost: float = 0.0
    """$/GB/month."""
    storage_total_cost: float = 0.0
    """$/hr for the disk size asked."""
    reliability: float = 0.0
    geolocation: str | None = None
    cpu_cores: float = 0.0
    cpu_ram_gb: float = 0.0
    disk_space_gb: float = 0.0
    inet_up: float = 0.0
    inet_down: float = 0.0
    cuda_max_good: float | None = None
    machine_id: int | None = None
    verified: bool | None = None
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        """The fields a CLI table or ``--json`` output shows."""
        return self.model_dump(exclude={"raw"})


class Instance(BaseModel):
    """A rented or configured server and how to reach it."""

    model_config = ConfigDict(frozen=True)

    id: str
    label: str | None = None
    state: InstanceState = "unknown"
    status: str | None = None
    """The provider's own status word and message, for humans (e.g. ``loading: pulling image``)."""
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_user: str = "root"
    dph_total: float = 0.0
    dph_base: float = 0.0
    storage_total_cost: float = 0.0
    """$/hr of the storage alone (what a stopped instance costs)."""
    gpu_name: str = ""
    num_gpus: int = 0
    gpu_ram_gb: float = 0.0
    disk_gb: float = 0.0
    start_date: float | None = None
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    @property
    def hourly_cost(self) -> float:
        """What this instance costs per hour in its current state."""
        # Vast.ai bills the GPU from `running` on, and the disk from creation until destroyed.
        if self.state == "running":
            return self.dph_total
        if self.state in ("creating", "loading", "stopped", "exited", "unknown"):
            return self.storage_total_cost
        return 0.0

    def row(self) -> dict[str, Any]:
        """The fields a CLI table or ``--json`` output shows."""
        out = self.model_dump(exclude={"raw"})
        out["hourly_cost"] = self.hourly_cost
        return out


@runtime_checkable
class Provider(Protocol):
    """What every provider offers. Instance ids are strings; offer ids are the provider's ask ids."""

    name: str

    def search(self, query_body: Mapping[str, Any]) -> list[Offer]: ...

    def create(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        label: str | None = None,
        onstart: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str: ...

    def show(self, instance_id: str) -> Instance: ...

    def list(self) -> list[Instance]: ...

    def stop(self, instance_id: str) -> None: ...

    def start(self, instance_id: str) -> None: ...

    def destroy(self, instance_id: str) -> None: ...
