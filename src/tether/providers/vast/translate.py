"""Vast.ai's JSON as tether's models: offers, instances, states in tether's words, and the SSH address.

Pure functions, no I/O. MB fields (``gpu_ram``, ``cpu_ram``) become GB; numbers the API sends as strings are read
as numbers; a missing or malformed field gets a neutral default rather than an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tether.providers.base import Instance, InstanceState, Offer


def _f(v: Any, default: float = 0.0) -> float:
    if v is None or isinstance(v, bool):
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _i(v: Any, default: int = 0) -> int:
    return int(_f(v, float(default)))


def offer_from_json(raw: Mapping[str, Any]) -> Offer:
    """An :class:`Offer` from one element of the search answer (MB fields become GB)."""
    return Offer(
        id=_i(raw.get("id") if raw.get("id") is not None else raw.get("ask_contract_id")),
        gpu_name=str(raw.get("gpu_name") or ""),
        num_gpus=_i(raw.get("num_gpus")),
        gpu_ram_gb=round(_f(raw.get("gpu_ram")) / 1000.0, 3),
        gpu_total_ram_gb=round(_f(raw.get("gpu_total_ram")) / 1000.0, 3),
        dph_total=_f(raw.get("dph_total")),
        dph_base=_f(raw.get("dph_base")),
        storage_cost=_f(raw.get("storage_cost")),
        storage_total_cost=_f(raw.get("storage_total_cost")),
        min_bid=_f(raw["min_bid"]) if raw.get("min_bid") is not None else None,
        reliability=_f(raw.get("reliability", raw.get("reliability2"))),
        geolocation=str(raw["geolocation"]) if raw.get("geolocation") else None,
        cpu_cores=_f(raw.get("cpu_cores_effective", raw.get("cpu_cores"))),
        cpu_ram_gb=round(_f(raw.get("cpu_ram")) / 1000.0, 3),
        disk_space_gb=_f(raw.get("disk_space")),
        inet_up=_f(raw.get("inet_up")),
        inet_down=_f(raw.get("inet_down")),
        cuda_max_good=_f(raw["cuda_max_good"]) if raw.get("cuda_max_good") is not None else None,
        machine_id=_i(raw["machine_id"]) if raw.get("machine_id") is not None else None,
        verified=bool(raw["verified"]) if raw.get("verified") is not None else None,
        raw=dict(raw),
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


def instance_from_json(raw: Mapping[str, Any]) -> Instance:
    """An :class:`Instance` from the API's instance JSON."""
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
        dph_total=_f(raw.get("dph_total")),
        dph_base=_f(raw.get("dph_base")),
        storage_total_cost=_f(raw.get("storage_total_cost")),
        gpu_name=str(raw.get("gpu_name") or ""),
        num_gpus=_i(raw.get("num_gpus")),
        gpu_ram_gb=round(_f(raw.get("gpu_ram")) / 1000.0, 3),
        disk_gb=_f(raw.get("disk_space")),
        start_date=_f(start) if start is not None else None,
        raw=dict(raw),
    )
