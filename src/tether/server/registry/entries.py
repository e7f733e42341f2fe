"""Registry entries: the constants of the file format, reading one list item (odd fields reported, never dropped),
validating a request, and the environment an admitted job gets (stdlib only, Python 3.8+, no I/O)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tether import vocab
from tether.errors import ConfigError

FILENAME = vocab.AGENT_STATUS
DEFAULT_PATH = "/workspace/" + FILENAME
PATH_ENV = "TETHER_AGENT_STATUS"

STATUSES = ("running", "queued", "completed", "failed", "lost")
LIVE_STATUSES = ("running", "queued")
FINAL_STATUSES = ("completed", "failed")
DONE_STATUSES = ("completed", "failed", "lost")

MAX_GPU_GB = 16384.0
MAX_COUNTED_GB = 1e9
"""A file entry declaring more than :data:`MAX_GPU_GB` counts as what it says, up to this (so sums stay finite)."""
MAX_ID_LEN = 200
DEFAULT_LOCK_TIMEOUT_S = 30.0
DEFAULT_HISTORY_S = 86400.0
DEFAULT_PIDLESS_LEASE_S = 3600.0
NO_PID = 0
"""Pass ``pid=NO_PID`` to register an entry with no owner process (liveness by heartbeat lease only)."""

ENV_ID = "TETHER_AGENT_ID"
ENV_EXPERIMENT = "TETHER_AGENT_EXPERIMENT"
ENV_GPU_GB = "TETHER_AGENT_GPU_GB"
ENV_PATH = PATH_ENV

EPS = 1e-6
SEED_KEYS = ("id", "experiment", "gpu_gb", "status", "started")


# --------------------------------------------------------------------------------------------------------------
# paths, time, numbers


def default_path(root: str | os.PathLike[str]) -> str:
    """``<root>/AGENT_STATUS.json``."""
    return os.path.join(os.fspath(root), FILENAME)


def resolve_path(path: str | None = None, root: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The registry file: ``path``, else ``<root>/AGENT_STATUS.json``, else ``$TETHER_AGENT_STATUS``, else
    ``/workspace/AGENT_STATUS.json``."""
    if path:
        return path
    if root:
        return default_path(root)
    env = os.environ if environ is None else environ
    return env.get(PATH_ENV) or DEFAULT_PATH


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse_iso(value: Any) -> float | None:
    """Seconds since the epoch for an ISO-8601 time (``Z`` or an offset; naive means UTC), or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def number(value: Any) -> float | None:
    """A JSON number as a float (booleans are not numbers), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def gb_json(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 3)


def fmt_gb(value: float | None) -> str:
    """GB for people: one decimal, no trailing zeros ("?" for an unusable figure)."""
    if value is None:
        return "?"
    if abs(value) < 0.05:
        return "0"
    return f"{value:.1f}".rstrip("0").rstrip(".")


def read_gpu_gb(value: Any) -> tuple[float | None, str | None]:
    """How much a ``gpu_gb`` read from the file (or from a process's environment) counts, and what is odd about
    it. Never less than it may be: a missing value, or one that is not a JSON number, negative, NaN or infinite,
    is None, which counts as the whole of every GPU the entry may be on; a number above :data:`MAX_GPU_GB` counts
    as it says (at most :data:`MAX_COUNTED_GB`), so nothing else fits beside it."""
    gb = number(value)
    if gb is None or not math.isfinite(gb) or gb < 0:
        return None, f"an unusable gpu_gb ({value!r})"
    if gb > MAX_GPU_GB:
        return min(gb, MAX_COUNTED_GB), f"a gpu_gb of {fmt_gb(gb)}, more than any server has"
    return gb, None


def floor_gb(value: float) -> float:
    """Free memory rounded down to 0.1 GB, so a figure shown as free really is."""
    return math.floor(value * 10 + 1e-6) / 10


# --------------------------------------------------------------------------------------------------------------
# entries


@dataclass
class Entry:
    """One agent (or queued request) in the registry."""

    id: str
    experiment: str
    gpu_gb: float | None
    """GB asked for; None for an unusable figure read from the file, which counts as the whole of each GPU."""
    status: str
    started: str | None
    pid: int | None = None
    pid_start: int | None = None
    boot_id: str | None = None
    host: str | None = None
    heartbeat: str | None = None
    lease_s: float | None = None
    gpus: list[int] | None = None
    ended: str | None = None
    note: str | None = None

    @property
    def gpu_gb_counted(self) -> str | None:
        """How an odd ``gpu_gb`` is counted, for people (None when it counts as declared)."""
        if self.gpu_gb is None:
            return "the whole of each GPU it may use (its gpu_gb is unusable)"
        if self.gpu_gb > MAX_GPU_GB:
            return "as declared, more than any GPU holds, so nothing else fits beside it"
        return None

    @property
    def cuda_visible_devices(self) -> str:
        """The value for ``CUDA_VISIBLE_DEVICES``: the GPUs this entry holds ("" for gpu_gb 0)."""
        return ",".join(str(i) for i in (self.gpus or []))

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES

    def share_gb(self) -> float | None:
        """GPU memory held on each of its GPUs (None: the whole of each, its gpu_gb being unusable)."""
        if self.gpu_gb is None:
            return None
        if self.gpus:
            return self.gpu_gb / len(self.gpus)
        return self.gpu_gb

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "experiment": self.experiment,
            "gpu_gb": None if self.gpu_gb is None else gb_json(self.gpu_gb),
            "status": self.status,
            "started": self.started,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "boot_id": self.boot_id,
            "host": self.host,
            "heartbeat": self.heartbeat,
            "lease_s": self.lease_s,
            "gpus": self.gpus,
            "ended": self.ended,
            "note": self.note,
        }

    @classmethod
    def from_raw(cls, raw: Any, position: int) -> tuple[Entry | None, list[str]]:
        """Read one list item; odd fields are reported and read conservatively, never dropped."""
        where = f"entry {position + 1}"
        if not isinstance(raw, dict):
            return None, [f"{where} is not an object ({json.dumps(raw)[:60]}); it is kept and ignored"]
        ident = raw.get("id")
        if not isinstance(ident, str) or not ident.strip():
            return None, [f"{where} has no usable id ({json.dumps(raw)[:80]}); it is kept and ignored"]
        where = f"entry {ident!r}"
        problems: list[str] = []
        experiment = raw.get("experiment")
        if not isinstance(experiment, str):
            problems.append(f"{where} has no experiment name")
            experiment = "" if experiment is None else str(experiment)
        status = raw.get("status")
        if status not in STATUSES:
            problems.append(f"{where} has an unknown status ({status!r}); it is treated as running")
            status = "running"
        gpu_gb, odd = read_gpu_gb(raw.get("gpu_gb") if "gpu_gb" in raw else _MISSING)
        if odd:
            if status not in LIVE_STATUSES:
                problems.append(f"{where} has {odd}")
            elif gpu_gb is None:
                problems.append(
                    f"{where} has {odd}; it counts as the whole of each GPU it may use until it is fixed "
                    f"or marked done (`tether agents done {ident}`)"
                )
            else:
                problems.append(f"{where} has {odd}; it counts as that, so nothing else fits beside it")
        pid = raw.get("pid")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 0):
            problems.append(f"{where} has an unusable pid ({pid!r}); only its lease is checked")
            pid = None
        start = raw.get("pid_start")
        if start is not None and (isinstance(start, bool) or not isinstance(start, int)):
            problems.append(f"{where} has an unusable pid_start ({start!r})")
            start = None
        lease = number(raw.get("lease_s"))
        if raw.get("lease_s") is not None and (lease is None or lease <= 0):
            problems.append(f"{where} has an unusable lease_s ({raw.get('lease_s')!r})")
            lease = None
        gpus = raw.get("gpus")
        if gpus is not None and (
            not isinstance(gpus, list)
            or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus)
        ):
            problems.append(f"{where} has unusable gpus ({gpus!r}); it is counted on every GPU")
            gpus = None
        started = raw.get("started")
        if started is not None and parse_iso(started) is None:
            problems.append(f"{where} has an unreadable started time ({started!r})")
        entry = cls(
            id=ident,
            experiment=experiment,
            gpu_gb=gpu_gb,
            status=status,
            started=started if isinstance(started, str) else None,
            pid=pid or None,
            pid_start=start,
            boot_id=_text(raw.get("boot_id")),
            host=_text(raw.get("host")),
            heartbeat=_text(raw.get("heartbeat")),
            lease_s=lease,
            gpus=list(gpus) if gpus is not None else None,
            ended=_text(raw.get("ended")),
            note=_text(raw.get("note")),
        )
        return entry, problems


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING = _Missing()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def agent_env(entry: Entry, path: str | None = None) -> dict[str, str]:
    """Environment for the job an entry admits: its GPUs, and the ids :meth:`Registry.repair` finds it by (the
    agent's id and, given ``path``, the registry's absolute path: repair adopts only processes naming its own)."""
    env = {
        "CUDA_VISIBLE_DEVICES": entry.cuda_visible_devices,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        ENV_ID: entry.id,
        ENV_EXPERIMENT: entry.experiment,
        ENV_GPU_GB: "" if entry.gpu_gb is None else str(gb_json(entry.gpu_gb)),
    }
    if path:
        env[ENV_PATH] = os.path.abspath(path)
    return env


def validate_request(ident: Any, experiment: Any, gpu_gb: Any) -> float:
    """The request's GB as a float, or ConfigError naming what is wrong with it."""
    if not isinstance(ident, str) or not ident.strip():
        raise ConfigError("The agent id must be a non-empty string.", "Pass --id NAME.")
    if len(ident) > MAX_ID_LEN or any(ord(c) < 32 for c in ident):
        raise ConfigError(
            f"The agent id {ident[:40]!r} is too long or holds control characters.",
            f"Use a short printable id (at most {MAX_ID_LEN} characters).",
        )
    if not isinstance(experiment, str):
        raise ConfigError("The experiment name must be a string.", "Pass --experiment NAME.")
    value = number(gpu_gb)
    if value is None or not math.isfinite(value):
        raise ConfigError(f"gpu_gb must be a number of GB, not {gpu_gb!r}.", "Pass --gpu-gb N (0 for API-only).")
    if value < 0:
        raise ConfigError(f"gpu_gb must be 0 or more, not {fmt_gb(value)}.", "Pass --gpu-gb N (0 for API-only).")
    if value > MAX_GPU_GB:
        raise ConfigError(
            f"gpu_gb {fmt_gb(value)} is more GPU memory than any server has (limit {fmt_gb(MAX_GPU_GB)} GB).",
            "Pass the GB your job needs, e.g. --gpu-gb 20.",
        )
    return value
