"""Vast.ai's JSON as tether's models: offers, instances, states in tether's words, and the SSH address.

Pure functions, no I/O. MB fields (``gpu_ram``, ``cpu_ram``) become GB; numbers the API sends as strings are read
as numbers; a missing or malformed field gets a neutral default rather than an error, except in an offer: a price
that is not a finite non-negative number, or an id out of range, makes the offer unusable (:class:`MalformedOffer`),
and the search skips it with one warning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tether.providers.base import Instance, InstanceState, Offer


def _f(v: Any, default: float = 0.0) -> float:
    """A number, or ``default`` when ``v`` is missing, not a number, or not finite (NaN and infinities are never
    passed on: they are not JSON and they pass every comparison)."""
    if v is None or isinstance(v, bool):
        return default
    try:
        out = float(v)
    except (TypeError, ValueError, OverflowError):
        return default
    return out if math.isfinite(out) else default


def _i(v: Any, default: int = 0) -> int:
    return int(_f(v, float(default)))


class MalformedOffer(ValueError):
    """An offer with a field tether cannot use as it is (a price that is not a finite non-negative number, an id
    that is not a whole number in range); its message names the offer and the field."""


#: The largest id tether accepts from the provider (SQLite's and JSON consumers' 64-bit integers).
MAX_ID = 2**63 - 1

#: Price fields of an offer: each must be a finite non-negative number when present; ``dph_total`` must be present.
PRICE_FIELDS = ("dph_total", "dph_base", "storage_cost", "storage_total_cost", "min_bid")


def _price(raw: Mapping[str, Any], key: str, offer: str) -> float | None:
    v = raw.get(key)
    if v is None:
        if key == "dph_total":
            raise MalformedOffer(f"offer {offer} has no price (dph_total)")
        return None
    number: float | None = None
    if not isinstance(v, bool):
        try:
            number = float(v)
        except (TypeError, ValueError, OverflowError):
            number = None
    if number is None or not math.isfinite(number) or number < 0:
        raise MalformedOffer(f"offer {offer} has {key} {v!r}, not a finite non-negative price")
    return number


def _whole(raw: Mapping[str, Any], key: str, offer: str, *, required: bool = False) -> int | None:
    v = raw.get(key)
    if v is None:
        if required:
            raise MalformedOffer(f"an offer has no {key}")
        return None
    number: float | None = None
    if not isinstance(v, bool):
        try:
            number = float(v)
        except (TypeError, ValueError, OverflowError):
            number = None
    if number is None or not math.isfinite(number) or number != int(number) or not 0 <= number <= MAX_ID:
        raise MalformedOffer(f"offer {offer} has {key} {v!r}, not a whole number from 0 to 2^63-1")
    return int(number)


def offer_from_json(raw: Mapping[str, Any]) -> Offer:
    """An :class:`Offer` from one element of the search answer (MB fields become GB).

    :class:`MalformedOffer` when a price is not a finite non-negative number (a malformed price is never free) or
    ``id``, ``machine_id`` or ``num_gpus`` is not a whole number in range; other fields that are not finite numbers
    get a neutral default."""
    raw_id = raw.get("id") if raw.get("id") is not None else raw.get("ask_contract_id")
    offer_id = _whole({"id": raw_id}, "id", repr(raw_id)[:40], required=True)
    assert offer_id is not None
    name = str(offer_id)
    prices = {key: _price(raw, key, name) for key in PRICE_FIELDS}
    num_gpus = _whole(raw, "num_gpus", name)
    return Offer(
        id=offer_id,
        gpu_name=str(raw.get("gpu_name") or ""),
        num_gpus=num_gpus or 0,
        gpu_ram_gb=round(_f(raw.get("gpu_ram")) / 1000.0, 3),
        gpu_total_ram_gb=round(_f(raw.get("gpu_total_ram")) / 1000.0, 3),
        dph_total=prices["dph_total"] or 0.0,
        dph_base=prices["dph_base"] or 0.0,
        storage_cost=prices["storage_cost"] or 0.0,
        storage_total_cost=prices["storage_total_cost"] or 0.0,
        min_bid=prices["min_bid"],
        reliability=_f(raw.get("reliability", raw.get("reliability2"))),
        geolocation=str(raw["geolocation"]) if raw.get("geolocation") else None,
        cpu_cores=_f(raw.get("cpu_cores_effective", raw.get("cpu_cores"))),
        cpu_ram_gb=round(_f(raw.get("cpu_ram")) / 1000.0, 3),
        disk_space_gb=_f(raw.get("disk_space")),
        inet_up=_f(raw.get("inet_up")),
        inet_down=_f(raw.get("inet_down")),
        cuda_max_good=_f(raw["cuda_max_good"]) if raw.get("cuda_max_good") is not None else None,
        machine_id=_whole(raw, "machine_id", name),
        verified=bool(raw["verified"]) if raw.get("verified") is not None else None,
        raw=dict(raw),
    )


def offers_from_json(answer: Any) -> tuple[list[Offer], str | None]:
    """The usable offers of a search answer, and one sentence naming those skipped as malformed (None if none)."""
    offers: list[Offer] = []
    skipped: list[str] = []
    for raw in answer if isinstance(answer, list) else []:
        if not isinstance(raw, Mapping):
            skipped.append(f"an offer that is not a JSON object ({type(raw).__name__})")
            continue
        try:
            offers.append(offer_from_json(raw))
        except MalformedOffer as exc:
            skipped.append(str(exc))
    if not skipped:
        return offers, None
    return offers, (
        f"Skipped {len(skipped)} malformed offer(s) the provider sent ({'; '.join(skipped[:5])}"
        f"{'; ...' if len(skipped) > 5 else ''}); tether never rents an offer it cannot read."
    )


#: Status messages of an instance in ``created``/``loading`` that mean it will never start (the container could not
#: be created): it is failed at once instead of waited for (dstack reads "OCI runtime create failed" the same way).
TERMINAL_MESSAGES: tuple[str, ...] = (
    "oci runtime create failed",
    "error response from daemon",
    "failed to create task",
    "no such image",
    "manifest unknown",
    "pull access denied",
)


def terminal_error(raw: Mapping[str, Any]) -> bool:
    """Whether an instance that is not running yet says it cannot start (OCI or Docker daemon errors)."""
    msg = str(raw.get("status_msg") or "").lower()
    return any(m in msg for m in TERMINAL_MESSAGES)


def normalize_state(raw: Mapping[str, Any]) -> InstanceState:
    """Vast's ``actual_status`` (with ``intended_status``, ``cur_state``, ``next_state`` and ``status_msg``) as one of
    tether's instance states. Every status the vendor lists has a rule (README, "Instance states")."""
    actual = str(raw.get("actual_status") or "").lower()
    intended = str(raw.get("intended_status") or "").lower()
    if actual == "running":
        return "running"
    cur = str(raw.get("cur_state") or "").lower()
    nxt = str(raw.get("next_state") or "").lower()
    if actual in ("", "created", "loading") and terminal_error(raw):
        # The container could not be created: it never starts by itself.
        return "exited"
    if actual in ("stopped", "exited") and intended == "running" and cur == "stopped" and nxt == "stopped":
        # The service stopped it against the renter's intent and will not start it: outbid (dstack reads the
        # same three fields this way).
        return "preempted"
    if actual == "stopped" and intended == "running":
        # A start the service accepted but has not scheduled (the GPU is in use): it starts by itself later.
        return "queued"
    if intended == "stopped" and actual in ("", "stopped", "exited", "frozen", "created", "loading"):
        return "stopped"
    if actual in ("", "created", "scheduling"):
        return "creating"
    if actual == "loading":
        return "loading"
    if actual == "rebooting":
        return "rebooting"
    if actual == "frozen":
        return "frozen"
    if actual == "stopped":
        return "stopped"
    if actual == "exited":
        return "exited"
    # "unknown" (no heartbeat), "offline" (the host is disconnected) and anything new.
    return "unknown"


def ssh_pair(raw: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The SSH host and port: the direct mapping if there is one, else the proxy pair."""
    ports = raw.get("ports")
    ip = raw.get("public_ipaddr")
    if isinstance(ports, Mapping) and ip:
        mapping = ports.get("22/tcp")
        if isinstance(mapping, list) and mapping and isinstance(mapping[0], Mapping):
            port = _i(mapping[0].get("HostPort"), -1)
            if port > 0:
                return str(ip).strip(), port
    host, port_raw = raw.get("ssh_host"), raw.get("ssh_port")
    if host and port_raw is not None:
        port = _i(port_raw, -1)
        if port > 0:
            if "jupyter" in str(raw.get("image_runtype") or ""):
                port += 1
            return str(host), port
    return None, None


def _instance_price(v: Any) -> float:
    """An instance's price, or NaN when it is missing or not a finite non-negative number: never $0 for a price
    that is not known (:func:`tether.rentals.record` keeps the last price known, or the committed one, instead)."""
    price = _f(v, math.nan)
    return price if price >= 0 else math.nan


def instance_from_json(raw: Mapping[str, Any]) -> Instance:
    """An :class:`Instance` from the API's instance JSON (a price that is missing or malformed is NaN)."""
    state = normalize_state(raw)
    host, port = ssh_pair(raw) if state == "running" else (None, None)
    status_word = raw.get("actual_status") or "creating"
    msg = str(raw.get("status_msg") or "").strip()
    start = raw.get("start_date")
    return Instance(
        id=str(_i(raw.get("id"))),
        label=str(raw["label"]) if raw.get("label") else None,
        state=state,
        status=f"{status_word}: {msg}" if msg else str(status_word),
        ssh_host=host,
        ssh_port=port,
        ssh_user="root",
        dph_total=_instance_price(raw.get("dph_total")),
        dph_base=_instance_price(raw.get("dph_base")),
        storage_total_cost=_instance_price(raw.get("storage_total_cost")),
        gpu_name=str(raw.get("gpu_name") or ""),
        num_gpus=_i(raw.get("num_gpus")),
        gpu_ram_gb=round(_f(raw.get("gpu_ram")) / 1000.0, 3),
        disk_gb=_f(raw.get("disk_space")),
        start_date=_f(start) if start is not None else None,
        raw=dict(raw),
    )
