"""The provider boundary: the :class:`Provider` ABC and the :class:`Offer`, :class:`Instance` and :class:`OfferQuery`
models every provider speaks.

A provider knows offers and the lifecycle of the instances it rents (search, create, show, list, stop, start,
destroy). It knows nothing of SSH sessions, experiments, local state or money policies: generic renting (cheapest
first, waiting with a deadline, verified destroy, the rent lock) is :mod:`tether.renting`, typed against this ABC,
and the project's view of rented servers is :mod:`tether.rentals`. Each provider translates its own API into these
models; nothing outside ``tether.providers.<name>`` sees a provider's JSON or query language.

Instance ids are strings (whatever the provider uses); offer ids are the provider's ask ids (integers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from tether.errors import ProviderError

InstanceState = Literal[
    "creating",
    "loading",
    "running",
    "rebooting",
    "frozen",
    "queued",
    "stopped",
    "preempted",
    "exited",
    "unknown",
    "gone",
]
OfferType = Literal["on-demand", "bid", "reserved"]
OFFER_TYPES: tuple[OfferType, ...] = ("on-demand", "bid", "reserved")

#: Not running, disk kept, can be started again: stopped by the renter, or by the service (outbid).
STOPPED_STATES: frozenset[str] = frozenset({"stopped", "preempted"})

#: States an instance never leaves by itself on the way to ``running``.
DEAD_STATES: frozenset[str] = frozenset({"exited", "unknown", "gone"})

#: What each state means and what it costs, for the README's table and ``--help`` texts.
STATE_MEANINGS: dict[str, tuple[str, str]] = {
    "creating": ("created, not provisioned yet", "storage"),
    "loading": ("the image is being pulled or the container is starting", "storage"),
    "running": ("the container runs", "full"),
    "rebooting": ("the container is restarting (transient)", "full"),
    "frozen": ("paused with its memory kept", "full"),
    "queued": ("a start waits for the GPU; it starts, and bills, by itself once the GPU is free", "storage"),
    "stopped": ("stopped; the disk is kept", "storage"),
    "preempted": ("stopped by the service (outbid), the renter still wants it running", "storage"),
    "exited": ("the container exited or failed to start; it never runs by itself", "storage"),
    "unknown": ("no heartbeat from the host, or the host is offline", "storage"),
    "gone": ("destroyed", "none"),
}


@dataclass(frozen=True)
class OfferQuery:
    """What to search for: a query in the provider's own language, an order, the offer type and the disk to quote.

    ``text`` and ``order`` are written in the provider's query language (for Vast.ai: what its CLI reads, e.g.
    ``'gpu_ram>=24 num_gpus=1'`` and ``'dph+'``); only the provider parses them. ``disk_gb`` changes the quoted
    price (storage is part of ``dph_total``). ``limit`` caps the answer; a provider may cap it lower.
    """

    text: str = ""
    order: str = "dph+"
    type: OfferType = "on-demand"
    disk_gb: float = 20.0
    limit: int | None = None


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
    min_bid: float | None = None
    """The least $/hr an interruptible (bid) rental of this machine may offer, when the provider has bids."""
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
    """The provider's own record of the offer, for diagnostics (never read outside the provider's package)."""

    def row(self) -> dict[str, Any]:
        """The fields a CLI table or ``--json`` output shows."""
        return self.model_dump(exclude={"raw"})


class Instance(BaseModel):
    """A rented server, its state in tether's words, its prices, and how to reach it."""

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
    """The provider's own record of the instance, for diagnostics (never read outside the provider's package)."""

    @property
    def hourly_cost(self) -> float:
        """What this instance costs per hour in its current state."""
        # Vast.ai bills the GPU while it is held (running, rebooting, frozen), the disk from creation until destroyed.
        kind = STATE_MEANINGS.get(self.state, ("", "storage"))[1]
        if kind == "full":
            return self.dph_total
        if kind == "storage":
            return self.storage_total_cost
        return 0.0

    def row(self) -> dict[str, Any]:
        """The fields a CLI table or ``--json`` output shows."""
        out = self.model_dump(exclude={"raw"})
        out["hourly_cost"] = self.hourly_cost
        return out


def gone(instance_id: str) -> Instance:
    """The model of an instance the provider no longer has."""
    return Instance(id=instance_id, state="gone", status="destroyed")


def ssh_address(instance: Instance) -> tuple[str, int, str]:
    """``(host, port, user)`` of a running instance; re-read it after every start (it changes)."""
    if instance.ssh_host is None or instance.ssh_port is None:
        raise ProviderError(
            f"Instance {instance.id} has no SSH address yet (state {instance.state}).",
            "Wait until it is running: `tether ls` shows its state.",
        )
    return instance.ssh_host, instance.ssh_port, instance.ssh_user


class Provider(ABC):
    """Where rented instances come from. Every method may raise :class:`~tether.errors.AuthError` (no key, or a
    rejected one), :class:`~tether.errors.RateLimited` (past the retry budget, or a quota) or
    :class:`~tether.errors.ProviderError` (any other answer that cannot be used); the more specific contracts are
    on each method. Use an instance as a context manager, or call :meth:`close`.
    """

    #: The name tether records for instances of this provider (``instances.provider`` in local state).
    name: ClassVar[str]

    @staticmethod
    @abstractmethod
    def check_query(text: str, order: str) -> None:
        """Refuse a query or an order this provider cannot read, with :class:`~tether.errors.ConfigError` naming
        the bad term and its position, without any request. Pure."""

    @abstractmethod
    def search(self, query: OfferQuery) -> list[Offer]:
        """Offers for ``query``, in ``query.order``, at most ``query.limit`` (the provider may cap lower), each
        priced for ``query.disk_gb``. An empty list when nothing matches (never an error for that); a query the
        provider cannot read raises ConfigError before any request."""

    def take_warnings(self) -> list[str]:
        """Sentences about what the last searches skipped (offers with a malformed price or id), each said once:
        taking them clears them. None by default."""
        return []

    @abstractmethod
    def explain_no_match(self, query: OfferQuery) -> str:
        """One sentence on why ``query`` matched nothing (e.g. the filter that ruled out most offers). May search
        again, without the user's filters."""

    @abstractmethod
    def create(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        label: str | None = None,
        onstart: str | None = None,
        env: Mapping[str, str] | None = None,
        price: float | None = None,
    ) -> str:
        """Rent offer ``offer_id`` with this image, disk (GB), label and start script; the new instance's id.

        ``price`` is the $/hr bid of an interruptible rental (None: on demand). Raises
        :class:`~tether.errors.NoCapacity` when the offer is gone (nothing was rented), and ProviderError when the
        outcome is unknown (e.g. no answer in time): the caller must then look for the instance by its label.
        Never retried blindly: a create is not idempotent.
        """

    @abstractmethod
    def show(self, instance_id: str) -> Instance | None:
        """The instance as the provider sees it now, or None once it is gone (destroyed, or never existed)."""

    @abstractmethod
    def list_instances(self, label_prefix: str | None = None) -> list[Instance]:
        """Every instance of the account whose label starts with ``label_prefix`` (all of them when None)."""

    @abstractmethod
    def stop(self, instance_id: str) -> None:
        """Ask the provider to stop the instance (the GPU stops billing, the disk is kept and billed). Returns once
        the request is accepted; :meth:`show` tells when it is stopped. ProviderError if it does not exist."""

    @abstractmethod
    def start(self, instance_id: str) -> None:
        """Ask the provider to start a stopped instance. Returns once the request is accepted, which does not mean
        it will run soon (the machine may have been rented by someone else meanwhile); poll :meth:`show` with a
        deadline. Its SSH address may change. ProviderError if it does not exist."""

    @abstractmethod
    def destroy(self, instance_id: str) -> None:
        """Destroy the instance and its disk; billing ends. Idempotent: destroying an instance that is already
        gone (or never existed) succeeds. Returns once the request is accepted; :meth:`show` returning None
        confirms it."""

    def account_keys(self) -> list[str] | None:
        """The SSH public keys (OpenSSH lines) the account puts on instances created from now on, or None when the
        provider keeps no keys on the account (then nothing can be checked before renting)."""
        return None

    def attach_key(self, instance_id: str, public_key: str) -> None:
        """Put one SSH public key on one instance (for an instance made before the key was on the account)."""
        raise ProviderError(f"The {self.name} provider cannot add an SSH key to instance {instance_id}.")

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op unless the provider holds connections
        """Release connections the provider holds."""

    def __enter__(self) -> Provider:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
