"""The agent registry: ``AGENT_STATUS.json`` made safe for many agents on one server (stdlib only, Python 3.8+).

The file
    A JSON list, one entry per line so ``cat`` still reads well. Each entry keeps the runbook's keys ``id``,
    ``experiment``, ``gpu_gb``, ``status``, ``started`` and adds what liveness and placement need::

        [
          {"id": "agent-1", "experiment": "A5", "gpu_gb": 20, "status": "running", "started": "2026-02-11T10:00:00Z",
           "pid": 4242, "pid_start": 81234, "boot_id": "7b04...", "host": "gpu-box", "heartbeat": "...",
           "lease_s": null, "gpus": [0], "ended": null, "note": null}
        ]

    ``status`` is ``running``, ``queued`` (waiting for room, in file order), ``completed``, ``failed`` or ``lost``
    (its owner died or stopped heart-beating; ``note`` says why). ``gpus`` are nvidia-smi indices; a request spread
    over k GPUs holds ``gpu_gb / k`` on each. Keys this module does not know are kept as they are.

Every change happens under an exclusive ``flock`` on the sidecar ``<path>.lock`` (bounded wait, then a
:class:`~tether.errors.RegistryError` naming the holder) and is written to a temporary file that is
``os.replace``-d over the old one, so a reader never sees half a file. (It is not fsynced: after a power loss
every owner is gone anyway, and the boot id tells.)

Liveness
    An entry owned by a process stores ``pid`` + ``pid_start`` (``/proc/<pid>/stat`` field 22) + ``boot_id``; it is
    live only while all three still match, so a reused pid is not taken for the owner (without ``/proc`` the pid's
    existence is used). An entry with ``lease_s`` is also lost when its ``heartbeat`` is older than the lease.
    Entries without an owner process (hand registration from the CLI) get a lease of
    :data:`DEFAULT_PIDLESS_LEASE_S` unless they say otherwise. Lost entries are marked at the next locked operation
    and hold nothing. Finished entries stay as history for ``history_s`` seconds.

Admission (one step under the lock)
    ``gpu_gb == 0`` (API-only) is always admitted, with no GPU visible. Otherwise, per GPU, each live running entry
    counts at max(declared share, measured use) (measured from ``nvidia-smi --query-compute-apps`` when its pids are
    visible), and memory the GPU reports as used but no live entry accounts for counts too, so a process outside
    the registry is not overrun; without per-process figures this is max(sum of reservations, used). The request
    goes on the fullest single GPU it fits on, else on the fewest GPUs with equal shares; the job gets those
    indices as ``CUDA_VISIBLE_DEVICES``. A refusal (:class:`NoRoom`) says what is free, what was asked, and who
    holds the rest. With ``wait`` the request queues: a queued request is admitted only when nothing queued before
    it is still waiting, so a large job is not starved by a stream of small ones (small requests do not overtake
    it either); requests without ``wait`` are refused while anyone queues.

Bad input never loses data: a file that is not a JSON list is never overwritten (a copy is kept aside as
``<path>.bad-<UTC time>`` and every operation refuses until :meth:`Registry.repair` rebuilds it from the entries
still readable in it and from live processes that carry ``TETHER_AGENT_ID`` in their environment); odd entries are
kept, reported and counted conservatively.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tether.errors import AdmissionRefused, ConfigError, RegistryError
from tether.server import gpu as gpu_mod
from tether.server.procinfo import boot_id, have_proc, owner_gone, parent_pid, pid_start, proc_stat

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system
    fcntl = None  # type: ignore[assignment]

FILENAME = "AGENT_STATUS.json"
DEFAULT_PATH = "/workspace/" + FILENAME
PATH_ENV = "TETHER_AGENT_STATUS"

STATUSES = ("running", "queued", "completed", "failed", "lost")
LIVE_STATUSES = ("running", "queued")
FINAL_STATUSES = ("completed", "failed")

MAX_GPU_GB = 16384.0
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

_EPS = 1e-6
_SEED_KEYS = ("id", "experiment", "gpu_gb", "status", "started")


# --------------------------------------------------------------------------------------------------------------
# paths, time, process identity


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


# --------------------------------------------------------------------------------------------------------------
# entries


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _gb_json(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 3)


def fmt_gb(value: float) -> str:
    """GB for people: one decimal, no trailing zeros."""
    if abs(value) < 0.05:
        return "0"
    return f"{value:.1f}".rstrip("0").rstrip(".")


def floor_gb(value: float) -> float:
    """Free memory rounded down to 0.1 GB, so a figure shown as free really is."""
    return math.floor(value * 10 + 1e-6) / 10


@dataclass
class Entry:
    """One agent (or queued request) in the registry."""

    id: str
    experiment: str
    gpu_gb: float
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
    def cuda_visible_devices(self) -> str:
        """The value for ``CUDA_VISIBLE_DEVICES``: the GPUs this entry holds ("" for gpu_gb 0)."""
        return ",".join(str(i) for i in (self.gpus or []))

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES

    def share_gb(self) -> float:
        """GPU memory held on each of its GPUs."""
        if self.gpus:
            return self.gpu_gb / len(self.gpus)
        return self.gpu_gb

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "experiment": self.experiment,
            "gpu_gb": _gb_json(self.gpu_gb),
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
        gpu_gb = _number(raw.get("gpu_gb"))
        if gpu_gb is None or not math.isfinite(gpu_gb) or gpu_gb < 0 or gpu_gb > MAX_GPU_GB:
            problems.append(
                f"{where} has an unusable gpu_gb ({raw.get('gpu_gb')!r}); it is counted as 0 GB "
                "(the GPU's measured use still counts)"
            )
            gpu_gb = 0.0
        status = raw.get("status")
        if status not in STATUSES:
            problems.append(f"{where} has an unknown status ({status!r}); it is treated as running")
            status = "running"
        pid = raw.get("pid")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 0):
            problems.append(f"{where} has an unusable pid ({pid!r}); only its lease is checked")
            pid = None
        start = raw.get("pid_start")
        if start is not None and (isinstance(start, bool) or not isinstance(start, int)):
            problems.append(f"{where} has an unusable pid_start ({start!r})")
            start = None
        lease = _number(raw.get("lease_s"))
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
            boot_id=raw.get("boot_id") if isinstance(raw.get("boot_id"), str) else None,
            host=raw.get("host") if isinstance(raw.get("host"), str) else None,
            heartbeat=raw.get("heartbeat") if isinstance(raw.get("heartbeat"), str) else None,
            lease_s=lease,
            gpus=list(gpus) if gpus is not None else None,
            ended=raw.get("ended") if isinstance(raw.get("ended"), str) else None,
            note=raw.get("note") if isinstance(raw.get("note"), str) else None,
        )
        return entry, problems


def agent_env(entry: Entry, path: str | None = None) -> dict[str, str]:
    """Environment for the job an entry admits: its GPUs, and the ids :meth:`Registry.repair` finds it by."""
    env = {
        "CUDA_VISIBLE_DEVICES": entry.cuda_visible_devices,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        ENV_ID: entry.id,
        ENV_EXPERIMENT: entry.experiment,
        ENV_GPU_GB: str(_gb_json(entry.gpu_gb)),
    }
    if path:
        env[ENV_PATH] = path
    return env


# --------------------------------------------------------------------------------------------------------------
# capacity (pure)


@dataclass
class GpuUse:
    """How one GPU's memory is spoken for."""

    gpu: gpu_mod.Gpu
    reserved_gb: float = 0.0
    outside_gb: float = 0.0
    holders: list[tuple[str, str, float]] = field(default_factory=list)

    @property
    def committed_gb(self) -> float:
        return self.reserved_gb + self.outside_gb

    @property
    def free_gb(self) -> float:
        return max(0.0, self.gpu.total_gb - self.committed_gb)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.gpu.index,
            "uuid": self.gpu.uuid,
            "total_gb": round(self.gpu.total_gb, 3),
            "used_gb": round(self.gpu.used_gb, 3),
            "reserved_gb": round(self.reserved_gb, 3),
            "outside_gb": round(self.outside_gb, 3),
            "free_gb": round(self.free_gb, 3),
        }


def compute_use(
    gpus: Sequence[gpu_mod.Gpu],
    running: Sequence[Entry],
    measured_mib: Mapping[tuple[int, int], int] | None = None,
) -> list[GpuUse]:
    """Per GPU: live reservations (max of declared share and measured use) plus unaccounted used memory.

    ``measured_mib`` maps (position in ``running``, GPU index) to MiB that entry's processes hold there.
    """
    measured = measured_mib or {}
    uses = []
    for g in gpus:
        use = GpuUse(gpu=g)
        measured_total = 0.0
        unmeasured_declared = 0.0
        for pos, e in enumerate(running):
            placed = e.gpus is None or g.index in e.gpus
            share = e.share_gb() if placed else 0.0
            meas = measured.get((pos, g.index), 0) / gpu_mod.MIB_PER_GB
            held = max(share, meas)
            if held > 0:
                use.holders.append((e.id, e.experiment, held))
            use.reserved_gb += held
            measured_total += meas
            if meas == 0:
                unmeasured_declared += share
        use.outside_gb = max(0.0, g.used_gb - measured_total - unmeasured_declared)
        uses.append(use)
    return uses


def place(gpu_gb: float, uses: Sequence[GpuUse]) -> list[int] | None:
    """GPU indices for a request: the fullest single GPU it fits on, else the fewest GPUs with equal shares."""
    fits = [u for u in uses if u.free_gb + _EPS >= gpu_gb]
    if fits:
        best = min(fits, key=lambda u: (u.free_gb, u.gpu.index))
        return [best.gpu.index]
    roomiest = sorted(uses, key=lambda u: (-u.free_gb, u.gpu.index))
    for k in range(2, len(uses) + 1):
        chosen = roomiest[:k]
        if all(u.free_gb + _EPS >= gpu_gb / k for u in chosen):
            return sorted(u.gpu.index for u in chosen)
    return None


# --------------------------------------------------------------------------------------------------------------
# errors with details


class NoRoom(AdmissionRefused):
    """An admission refusal with its figures: ``details`` holds asked_gb, free_gb (per GPU), holders, queued."""

    def __init__(self, message: str, hint: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, hint)
        self.details: dict[str, Any] = details or {}


# --------------------------------------------------------------------------------------------------------------
# the registry


_DONE = ("completed", "failed", "lost")


@dataclass
class _Doc:
    """The list in memory. ``lines`` keeps each unchanged item's text so a write re-encodes only what changed;
    ``parsed`` holds the entries that matter for admission (all but the finished ones unless ``full``)."""

    items: list[Any]
    lines: list[str | None] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    parsed: list[tuple[int, Entry]] = field(default_factory=list)
    changed: bool = False

    def __post_init__(self) -> None:
        if len(self.lines) != len(self.items):
            self.lines = [None] * len(self.items)

    def reparse(self, full: bool = False) -> None:
        self.problems = []
        self.parsed = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(self.items):
            if not full and isinstance(raw, dict) and raw.get("status") in _DONE and isinstance(raw.get("id"), str):
                continue
            entry, problems = Entry.from_raw(raw, i)
            self.problems.extend(problems)
            if entry is not None:
                self.parsed.append((i, entry))
                if entry.is_live:
                    seen[entry.id] = seen.get(entry.id, 0) + 1
        for ident, n in seen.items():
            if n > 1:
                self.problems.append(f"agent id {ident!r} is live in {n} entries; each is counted")

    def matching(self, ident: str) -> list[tuple[int, Entry]]:
        """Every readable entry with this id, finished ones included, in file order."""
        found = []
        for i, raw in enumerate(self.items):
            if isinstance(raw, dict) and raw.get("id") == ident:
                entry, _ = Entry.from_raw(raw, i)
                if entry is not None:
                    found.append((i, entry))
        return found

    def put(self, index: int, entry: Entry) -> None:
        raw = self.items[index]
        merged = dict(raw) if isinstance(raw, dict) else {}
        merged.update(entry.to_dict())
        self.items[index] = merged
        self.lines[index] = None
        self.changed = True

    def append(self, entry: Entry) -> int:
        self.items.append(entry.to_dict())
        self.lines.append(None)
        self.changed = True
        return len(self.items) - 1

    def delete(self, indices: set[int]) -> None:
        keep = [i for i in range(len(self.items)) if i not in indices]
        self.items = [self.items[i] for i in keep]
        self.lines = [self.lines[i] for i in keep]
        self.changed = True

    def live(self, status: str | None = None) -> list[tuple[int, Entry]]:
        return [(i, e) for i, e in self.parsed if e.is_live and (status is None or e.status == status)]

    def text(self) -> str:
        if not self.items:
            return "[]\n"
        rows = []
        for item, line in zip(self.items, self.lines):
            rows.append("  " + (json.dumps(item) if line is None else line))
        return "[\n" + ",\n".join(rows) + "\n]\n"


def _parse_lines(text: str) -> _Doc | None:
    """Fast path for the file as this module writes it (one item per line); None if it has another layout."""
    rows = text.split("\n")
    while rows and not rows[-1].strip():
        rows.pop()
    if len(rows) < 2 or rows[0].strip() != "[" or rows[-1].strip() != "]":
        return None
    body = rows[1:-1]
    items: list[Any] = []
    lines: list[str | None] = []
    for n, row in enumerate(body):
        line = row.strip()
        if n < len(body) - 1:
            if not line.endswith(","):
                return None
            line = line[:-1].rstrip()
        elif line.endswith(","):
            return None
        if not line.startswith("{"):
            return None
        try:
            items.append(json.loads(line))
        except ValueError:
            return None
        lines.append(line)
    return _Doc(items=items, lines=lines)


@dataclass
class Listing:
    """What ``tether agents`` shows: entries (with queue positions), GPUs and their use, problems."""

    path: str
    host: str
    entries: list[Entry]
    queue: list[str]
    gpus: list[GpuUse] | None
    gpu_error: str | None
    problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        queue_pos: dict[str, int] = {}
        for n, ident in enumerate(self.queue, 1):
            queue_pos.setdefault(ident, n)
        rows = []
        for e in self.entries:
            row = e.to_dict()
            row["live"] = e.is_live
            row["queue_position"] = queue_pos.get(e.id) if e.status == "queued" else None
            row["cuda_visible_devices"] = e.cuda_visible_devices
            rows.append(row)
        return {
            "path": self.path,
            "host": self.host,
            "entries": rows,
            "queue": list(self.queue),
            "gpus": [u.to_dict() for u in self.gpus] if self.gpus is not None else None,
            "gpu_error": self.gpu_error,
            "problems": list(self.problems),
        }


@dataclass
class RepairReport:
    path: str
    kept_aside: str | None
    salvaged: int
    discovered: int
    entries: list[Entry]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kept_aside": self.kept_aside,
            "salvaged": self.salvaged,
            "discovered": self.discovered,
            "entries": [e.to_dict() for e in self.entries],
        }


def _validate_request(ident: Any, experiment: Any, gpu_gb: Any) -> float:
    if not isinstance(ident, str) or not ident.strip():
        raise ConfigError("The agent id must be a non-empty string.", "Pass --id NAME.")
    if len(ident) > MAX_ID_LEN or any(ord(c) < 32 for c in ident):
        raise ConfigError(
            f"The agent id {ident[:40]!r} is too long or holds control characters.",
            f"Use a short printable id (at most {MAX_ID_LEN} characters).",
        )
    if not isinstance(experiment, str):
        raise ConfigError("The experiment name must be a string.", "Pass --experiment NAME.")
    value = _number(gpu_gb)
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


class Registry:
    """``AGENT_STATUS.json`` with locked, atomic changes and VRAM admission.

    ``nvidia_smi``: the executable to query (default: ``nvidia-smi`` on ``$PATH`` at each query; none means a
    CPU-only server). ``lock_timeout``: seconds to wait for the lock before giving up. ``history_s``: how long
    finished entries stay in the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        nvidia_smi: str | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
        history_s: float = DEFAULT_HISTORY_S,
        host: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.lock_path = self.path + ".lock"
        self.nvidia_smi = nvidia_smi
        self.lock_timeout = lock_timeout
        self.history_s = history_s
        self.host = host or socket.gethostname()
        self._ahead = 0

    # ---- locking and file I/O ----------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's exclusive lock (waits at most ``lock_timeout`` seconds)."""
        if fcntl is None:  # pragma: no cover
            raise RegistryError("This system has no flock, so the agent registry cannot be locked.")
        parent = os.path.dirname(self.path) or "."
        try:
            os.makedirs(parent, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            try:
                fd = os.open(self.lock_path, os.O_RDONLY)
            except OSError as exc:
                raise RegistryError(
                    f"Cannot open the registry lock {self.lock_path}: {exc.strerror}.",
                    "Check the permissions of that folder.",
                ) from exc
        except OSError as exc:
            raise RegistryError(
                f"Cannot open the registry lock {self.lock_path}: {exc.strerror}.",
                "Check that the folder exists and is writable.",
            ) from exc
        try:
            deadline = time.monotonic() + self.lock_timeout
            delay = 0.0005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise self._lock_timeout_error(fd) from None
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.02)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {iso(time.time())} {self.host}\n".encode(), 0)
            except OSError:
                pass  # read-only lock file: the holder note is informative only
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _lock_timeout_error(self, fd: int) -> RegistryError:
        try:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        except OSError:
            holder = []
        who = f"pid {holder[0]} (since {holder[1]})" if len(holder) >= 2 else "another process"
        return RegistryError(
            f"Waited {self.lock_timeout:g} s for the registry lock {self.lock_path}, held by {who}.",
            "That process may be hung: check it with `ps`, and end it if it is stuck; the registry itself is intact.",
        )

    def _keep_aside(self, data: bytes) -> str:
        folder = os.path.dirname(self.path) or "."
        prefix = os.path.basename(self.path) + ".bad-"
        try:
            names = sorted(n for n in os.listdir(folder) if n.startswith(prefix))
        except OSError:
            names = []
        for name in names:
            other = os.path.join(folder, name)
            try:
                with open(other, "rb") as fh:
                    if fh.read() == data:
                        return other
            except OSError:
                continue
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = os.path.join(folder, prefix + stamp)
        n = 1
        while os.path.exists(target):
            n += 1
            target = os.path.join(folder, f"{prefix}{stamp}-{n}")
        self._write_bytes(target, data)
        return target

    def _read_bytes(self) -> bytes | None:
        try:
            with open(self.path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryError(
                f"Cannot read the agent registry {self.path}: {exc.strerror}.", "Check its permissions."
            ) from exc

    def _load(self) -> _Doc:
        data = self._read_bytes()
        if data is None or not data.strip():
            doc = _Doc(items=[])
            return doc
        try:
            text = data.decode("utf-8")
            fast = _parse_lines(text)
            if fast is not None:
                fast.reparse()
                return fast
            items = json.loads(text)
            what = "" if isinstance(items, list) else f"a JSON {type(items).__name__}, not a list"
        except (UnicodeDecodeError, ValueError) as exc:
            what = f"not valid JSON ({exc})"
        if what:
            aside = self._keep_aside(data)
            raise RegistryError(
                f"The agent registry {self.path} is {what}; it was left untouched and a copy kept at {aside}.",
                "Run `tether agents repair` to rebuild it from the entries still readable and the live processes.",
            )
        doc = _Doc(items=items)
        doc.reparse()
        return doc

    def _write_bytes(self, target: str, data: bytes) -> None:
        folder = os.path.dirname(target) or "."
        tmp = os.path.join(folder, f".{os.path.basename(target)}.tmp-{os.getpid()}-{random.getrandbits(32):08x}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                # No fsync: after a power loss every owner is gone anyway (the boot id changes), and an empty
                # or stale file after a crash reads as an empty or older list, which the reclaim then corrects.
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise RegistryError(
                f"Cannot write the agent registry {target}: {exc.strerror}.", "Check free disk space and permissions."
            ) from exc

    def _save(self, doc: _Doc) -> None:
        self._write_bytes(self.path, doc.text().encode("utf-8"))
        doc.changed = False

    # ---- liveness ------------------------------------------------------------------------------------------

    def _dead_reason(self, e: Entry, now: float) -> str | None:
        local = e.host is None or e.host == self.host
        if e.pid and local:
            reason = owner_gone(e.pid, e.pid_start, e.boot_id)
            if reason:
                return reason
        lease = e.lease_s
        if lease is None and not e.pid:
            lease = DEFAULT_PIDLESS_LEASE_S
        if lease is not None:
            last = parse_iso(e.heartbeat)
            if last is None:
                last = parse_iso(e.started)
            if last is not None and now - last > lease:
                return f"no heartbeat for {now - last:.0f} s (lease {lease:g} s)"
        return None

    def _reclaim(self, doc: _Doc, now: float) -> None:
        for i, e in doc.live():
            reason = self._dead_reason(e, now)
            if reason:
                e.status = "lost"
                e.ended = iso(now)
                e.note = reason
                doc.put(i, e)
        cutoff = now - self.history_s
        cutoff_iso = iso(cutoff)
        drop = set()
        for i, raw in enumerate(doc.items):
            if not isinstance(raw, dict) or raw.get("status") not in _DONE:
                continue
            when = raw.get("ended") or raw.get("started")
            if isinstance(when, str) and len(when) == 20 and when.endswith("Z") and when[10] == "T":
                old = when < cutoff_iso  # the form this module writes sorts like the time it stands for
            else:
                stamp = parse_iso(when)
                old = stamp is not None and stamp < cutoff
            if old:
                drop.add(i)
        if drop:
            doc.delete(drop)
        if doc.changed:
            doc.reparse()

    # ---- GPUs ----------------------------------------------------------------------------------------------

    def _nvidia_smi(self) -> str | None:
        return self.nvidia_smi if self.nvidia_smi is not None else gpu_mod.find_nvidia_smi()

    def _measure(self, exe: str, gpus: Sequence[gpu_mod.Gpu], running: Sequence[Entry]) -> dict[tuple[int, int], int]:
        owners = {e.pid: pos for pos, e in enumerate(running) if e.pid and (e.host in (None, self.host))}
        if not owners:
            return {}
        apps = gpu_mod.query_compute_apps(exe)
        by_uuid = {g.uuid: g.index for g in gpus}
        measured: dict[tuple[int, int], int] = {}
        for (uuid, pid), mib in apps.items():
            if uuid not in by_uuid:
                continue
            node: int | None = pid
            steps = 0
            while node and node not in owners and steps < 64:
                node = parent_pid(node)
                steps += 1
            if node and node in owners:
                key = (owners[node], by_uuid[uuid])
                measured[key] = measured.get(key, 0) + mib
        return measured

    def _use(self, doc: _Doc) -> tuple[list[gpu_mod.Gpu] | None, list[GpuUse] | None]:
        exe = self._nvidia_smi()
        if exe is None:
            return None, None
        gpus = gpu_mod.query_gpus(exe)
        assert gpus is not None
        running = [e for _, e in doc.live("running")]
        return gpus, compute_use(gpus, running, self._measure(exe, gpus, running))

    # ---- operations ----------------------------------------------------------------------------------------

    def register(
        self,
        id: str,
        experiment: str,
        gpu_gb: float,
        *,
        pid: int | None = None,
        wait: float | None = None,
        lease_s: float | None = None,
        poll_s: float = 0.1,
    ) -> Entry:
        """Admit a job (or wait for room up to ``wait`` seconds, in queue order) and return its entry.

        ``pid``: the owner process (default: this process; :data:`NO_PID` for none, then liveness is by lease).
        Raises :class:`NoRoom` (an AdmissionRefused) with the free/asked/holders figures, RegistryError for a
        duplicate live id, and ConfigError for a bad request. Registering the same id again from the same owner
        returns the existing entry.
        """
        gb = _validate_request(id, experiment, gpu_gb)
        if lease_s is not None and (not math.isfinite(lease_s) or lease_s <= 0):
            raise ConfigError(f"lease_s must be a positive number of seconds, not {lease_s!r}.")
        owner = os.getpid() if pid is None else pid
        if owner < 0:
            raise ConfigError(f"pid must be a process id, not {owner}.")
        owner_start: int | None = None
        if owner:
            owner_start = pid_start(owner)
            if owner_start is None and owner_gone(owner, None, None):
                raise RegistryError(f"Process {owner} does not exist, so it cannot own agent {id!r}.")
        if lease_s is None and not owner:
            lease_s = DEFAULT_PIDLESS_LEASE_S
        me = os.getpid()
        me_start = pid_start(me)
        deadline = None if not wait or wait <= 0 else time.monotonic() + wait
        queued = False
        done = False
        locked_at = 0.0
        try:
            while True:
                if queued and deadline is not None and time.monotonic() < deadline:
                    # Behind others in the queue: look without the lock (the file is replaced atomically) and
                    # take the lock only at the head of the queue, or once a second to reclaim dead waiters.
                    ahead = self._peek_ahead(id, me, me_start)
                    if ahead is not None and ahead > 0 and time.monotonic() - locked_at < 1.0:
                        time.sleep(min(poll_s * (1 + ahead), 0.1) * (0.75 + random.random() / 2))
                        continue
                with self.locked():
                    final = deadline is None or time.monotonic() >= deadline
                    doc = self._load()
                    now = time.time()
                    self._reclaim(doc, now)
                    try:
                        entry = self._admit(
                            doc, now, id, experiment, gb, owner or None, owner_start, lease_s, me, me_start, final
                        )
                    finally:
                        if doc.changed:
                            self._save(doc)
                locked_at = time.monotonic()
                if entry is not None:
                    done = True
                    return entry
                queued = True
                time.sleep(min(poll_s * (1 + self._ahead), 1.0) * (0.75 + random.random() / 2))
        finally:
            if queued and not done:
                self._drop_ticket(id, me, me_start)

    def _peek_ahead(self, ident: str, me: int, me_start: int | None) -> int | None:
        """How many queued entries stand before this process's ticket, read without the lock (None: unknown)."""
        try:
            data = self._read_bytes()
            if data is None:
                return None
            text = data.decode("utf-8")
            fast = _parse_lines(text)
            items = fast.items if fast is not None else json.loads(text)
        except (RegistryError, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(items, list):
            return None
        ahead = 0
        for item in items:
            if not isinstance(item, dict) or item.get("status") != "queued":
                continue
            if item.get("id") == ident and item.get("pid") == me and item.get("pid_start") == me_start:
                return ahead
            ahead += 1
        return None

    def _drop_ticket(self, ident: str, me: int, me_start: int | None) -> None:
        with self.locked():
            doc = self._load()
            mine = {
                i
                for i, item in enumerate(doc.items)
                if isinstance(item, dict)
                and item.get("id") == ident
                and item.get("status") == "queued"
                and item.get("pid") == me
                and item.get("pid_start") == me_start
            }
            if mine:
                doc.delete(mine)
                self._save(doc)

    def _admit(
        self,
        doc: _Doc,
        now: float,
        ident: str,
        experiment: str,
        gb: float,
        owner: int | None,
        owner_start: int | None,
        lease_s: float | None,
        me: int,
        me_start: int | None,
        final: bool,
    ) -> Entry | None:
        ticket: int | None = None
        for i, e in doc.live():
            if e.id != ident:
                continue
            if e.status == "queued" and e.pid == me and e.pid_start == me_start:
                ticket = i
                continue
            if (
                e.status == "running"
                and e.pid == owner
                and e.pid_start == owner_start
                and e.experiment == experiment
                and abs(e.gpu_gb - gb) < _EPS
            ):
                return e  # the same owner registering again: nothing to do
            since = f", since {e.started}" if e.started else ""
            who = f", pid {e.pid}" if e.pid else ""
            raise RegistryError(
                f"Agent id {ident!r} is already {e.status} ({e.experiment or 'no experiment'}, "
                f"{fmt_gb(e.gpu_gb)} GB{who}{since}).",
                f"Pick another --id, or run `tether agents done {ident}` if that agent has finished.",
            )

        def drop_ticket() -> None:
            if ticket is not None:
                doc.delete({ticket})

        entry = Entry(
            id=ident,
            experiment=experiment,
            gpu_gb=gb,
            status="running",
            started=iso(now),
            pid=owner,
            pid_start=owner_start if owner else None,
            boot_id=boot_id() if owner else None,
            host=self.host,
            heartbeat=iso(now),
            lease_s=lease_s,
            gpus=[],
        )
        if gb <= 0:
            doc.append(entry)
            return entry
        ahead = [e for i, e in doc.live("queued") if ticket is None or i < ticket]
        self._ahead = len(ahead)
        if ahead and ticket is not None and not final:
            return None  # still behind others: keep the place without asking nvidia-smi again
        try:
            gpus, uses = self._use(doc)
        except RegistryError:
            drop_ticket()
            raise
        if gpus is None or uses is None:
            drop_ticket()
            raise NoRoom(
                f"This server has no GPU (no nvidia-smi on PATH), so {ident!r} cannot get {fmt_gb(gb)} GB.",
                "Register with --gpu-gb 0 for API-only work, or run it on a GPU server.",
                {"asked_gb": gb, "free_gb": {}, "holders": [], "queued": [], "reason": "no_gpu"},
            )
        empty = [GpuUse(gpu=g) for g in gpus]
        if place(gb, empty) is None:
            drop_ticket()
            total = sum(g.total_gb for g in gpus)
            raise NoRoom(
                f"{ident!r} asks for {fmt_gb(gb)} GB but this server's {len(gpus)} GPU(s) hold "
                f"{fmt_gb(total)} GB in all, so it can never fit.",
                "Lower --gpu-gb or use a bigger GPU server.",
                {"asked_gb": gb, "free_gb": {}, "holders": [], "queued": [], "reason": "never_fits"},
            )
        placement = None if ahead else place(gb, uses)
        if placement is not None:
            entry.gpus = placement
            if ticket is not None:
                doc.put(ticket, entry)
            else:
                doc.append(entry)
            return entry
        if final:
            drop_ticket()
            raise self._refusal(ident, gb, uses, ahead)
        if ticket is None:
            doc.append(
                Entry(
                    id=ident,
                    experiment=experiment,
                    gpu_gb=gb,
                    status="queued",
                    started=iso(now),
                    pid=me,
                    pid_start=me_start,
                    boot_id=boot_id(),
                    host=self.host,
                    heartbeat=iso(now),
                    gpus=[],
                    note=f"waiting for {fmt_gb(gb)} GB",
                )
            )
        return None

    def _refusal(self, ident: str, gb: float, uses: Sequence[GpuUse], ahead: Sequence[Entry]) -> NoRoom:
        if len(uses) == 1:
            free_text = f"{fmt_gb(floor_gb(uses[0].free_gb))} GB free"
        else:
            per = ", ".join(f"GPU {u.gpu.index}: {fmt_gb(floor_gb(u.free_gb))}" for u in uses)
            free_text = f"{fmt_gb(floor_gb(sum(u.free_gb for u in uses)))} GB free in all ({per})"
        held: dict[str, tuple[str, float, list[int]]] = {}
        for u in uses:
            for hid, exp, gbs in u.holders:
                prev = held.get(hid, (exp, 0.0, []))
                held[hid] = (exp, prev[1] + gbs, [*prev[2], u.gpu.index])
        parts = []
        for hid, (exp, gbs, idx) in held.items():
            on = f" on GPU {','.join(str(i) for i in idx)}" if len(uses) > 1 else ""
            parts.append(f"{hid} ({exp or 'no experiment'}, {fmt_gb(gbs)} GB{on})")
        for u in uses:
            if u.outside_gb >= 0.05:
                on = f" on GPU {u.gpu.index}" if len(uses) > 1 else ""
                parts.append(f"{fmt_gb(u.outside_gb)} GB used outside the registry{on}")
        holders_text = ", ".join(parts) if parts else "nobody"
        queue_text = ""
        if ahead:
            queue_text = "; queued ahead: " + ", ".join(f"{e.id} ({fmt_gb(e.gpu_gb)} GB)" for e in ahead)
        details = {
            "asked_gb": gb,
            "free_gb": {str(u.gpu.index): round(u.free_gb, 3) for u in uses},
            "holders": [
                {"id": hid, "experiment": exp, "gpu_gb": round(gbs, 3), "gpus": idx}
                for hid, (exp, gbs, idx) in held.items()
            ],
            "outside_gb": {str(u.gpu.index): round(u.outside_gb, 3) for u in uses},
            "queued": [e.id for e in ahead],
            "reason": "queued_ahead" if ahead else "no_room",
        }
        return NoRoom(
            f"Not enough GPU memory for {ident!r}: {fmt_gb(gb)} GB asked, {free_text}; held by {holders_text}"
            f"{queue_text}.",
            "Retry with --wait SECONDS to queue for room, ask for less, or wait for a holder to finish.",
            details,
        )

    def release(self, id: str, status: str = "completed", note: str | None = None) -> Entry:
        """Mark agent ``id`` finished (``completed`` or ``failed``); safe to call twice."""
        if status not in FINAL_STATUSES:
            raise ConfigError(f"A finished agent's status is 'completed' or 'failed', not {status!r}.")
        with self.locked():
            doc = self._load()
            now = time.time()
            self._reclaim(doc, now)
            try:
                matches = doc.matching(id)
                if not matches:
                    raise RegistryError(f"No agent {id!r} in {self.path}.", "Check the id with `tether agents`.")
                live = [(i, e) for i, e in matches if e.is_live]
                targets = live or [matches[-1]]
                result = targets[-1][1]
                for i, e in targets:
                    if e.status in FINAL_STATUSES:
                        continue
                    if e.status == "lost":
                        e.note = f"{e.note}; then reported {status}" if e.note else None
                    e.status = status
                    e.ended = iso(now)
                    if note is not None:
                        e.note = note
                    doc.put(i, e)
                    result = e
            finally:
                if doc.changed:
                    self._save(doc)
            return result

    def heartbeat(self, id: str) -> Entry:
        """Renew agent ``id``'s lease."""
        with self.locked():
            doc = self._load()
            now = time.time()
            self._reclaim(doc, now)
            try:
                matches = doc.matching(id)
                live = [(i, e) for i, e in matches if e.is_live]
                if not live:
                    if not matches:
                        raise RegistryError(f"No agent {id!r} in {self.path}.", "Check the id with `tether agents`.")
                    last = matches[-1][1]
                    if last.status == "lost":
                        raise RegistryError(
                            f"Agent {id!r} was marked lost ({last.note}); its GPU share may already be given away.",
                            "Register again with `tether agents register` before using the GPU.",
                        )
                    raise RegistryError(f"Agent {id!r} has already {last.status}.", "Register again to run more.")
                for i, e in live:
                    e.heartbeat = iso(now)
                    doc.put(i, e)
                return live[-1][1]
            finally:
                if doc.changed:
                    self._save(doc)

    def entries(self) -> list[Entry]:
        """All readable entries, after reclaiming dead owners (read under the lock)."""
        with self.locked():
            doc = self._load()
            self._reclaim(doc, time.time())
            if doc.changed:
                self._save(doc)
            doc.reparse(full=True)
            return [e for _, e in doc.parsed]

    def listing(self) -> Listing:
        """Entries, queue, GPU use and problems, as ``tether agents`` shows them."""
        with self.locked():
            doc = self._load()
            self._reclaim(doc, time.time())
            if doc.changed:
                self._save(doc)
            doc.reparse(full=True)
            gpu_error = None
            uses: list[GpuUse] | None = None
            try:
                _, uses = self._use(doc)
            except RegistryError as exc:
                gpu_error = str(exc)
        return Listing(
            path=self.path,
            host=self.host,
            entries=[e for _, e in doc.parsed],
            queue=[e.id for _, e in doc.live("queued")],
            gpus=uses,
            gpu_error=gpu_error,
            problems=list(doc.problems),
        )

    @contextmanager
    def admitted(self, id: str, experiment: str, gpu_gb: float, **kwargs: Any) -> Iterator[Entry]:
        """Register, yield the entry, and release it as completed, or failed if the block raises."""
        entry = self.register(id, experiment, gpu_gb, **kwargs)
        try:
            yield entry
        except BaseException:
            self.release(id, "failed")
            raise
        self.release(id, "completed")

    # ---- repair --------------------------------------------------------------------------------------------

    def repair(self) -> RepairReport:
        """Rebuild the file: keep a bad file aside, salvage readable entries, add live tagged processes."""
        with self.locked():
            data = self._read_bytes()
            aside: str | None = None
            items: list[Any]
            try:
                loaded = json.loads(data.decode("utf-8")) if data and data.strip() else []
                ok = isinstance(loaded, list)
            except (UnicodeDecodeError, ValueError):
                ok = False
            if ok:
                items = loaded
            else:
                assert data is not None
                aside = self._keep_aside(data)
                items = _salvage(data.decode("utf-8", "replace"))
            salvaged = 0 if ok else len(items)
            doc = _Doc(items=items, changed=not ok)
            doc.reparse(full=True)
            now = time.time()
            self._reclaim(doc, now)
            known = {(e.id, e.pid) for _, e in doc.live()}
            live_ids = {e.id for _, e in doc.live()}
            discovered = 0
            for proc in _tagged_processes():
                if proc["id"] in live_ids or (proc["id"], proc["pid"]) in known:
                    continue
                doc.append(
                    Entry(
                        id=proc["id"],
                        experiment=proc["experiment"],
                        gpu_gb=proc["gpu_gb"],
                        status="running",
                        started=iso(now),
                        pid=proc["pid"],
                        pid_start=proc["pid_start"],
                        boot_id=boot_id(),
                        host=self.host,
                        heartbeat=iso(now),
                        gpus=proc["gpus"],
                        note="rebuilt by repair from a live process",
                    )
                )
                live_ids.add(proc["id"])
                discovered += 1
            doc.reparse(full=True)
            self._save(doc)
            return RepairReport(
                path=self.path,
                kept_aside=aside,
                salvaged=salvaged,
                discovered=discovered,
                entries=[e for _, e in doc.parsed],
            )


def _salvage(text: str) -> list[Any]:
    """Every JSON object with an ``id`` that can still be read out of a damaged file, in order."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    pos = text.find("{")
    while pos != -1:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except ValueError:
            pos = text.find("{", pos + 1)
            continue
        if isinstance(obj, dict) and "id" in obj:
            found.append(obj)
            pos = text.find("{", end)
        else:
            pos = text.find("{", pos + 1)
    return found


_TAG_KEYS = (ENV_ID.encode(), ENV_EXPERIMENT.encode(), ENV_GPU_GB.encode(), b"CUDA_VISIBLE_DEVICES")


def _tagged_processes() -> list[dict[str, Any]]:
    """Live processes whose environment names a registry agent (``TETHER_AGENT_ID``), one per agent: the
    top-most process of each agent's tree."""
    if not have_proc():
        return []
    tagged: dict[int, dict[str, Any]] = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        env = {}
        for chunk in raw.split(b"\0"):
            key, sep, value = chunk.partition(b"=")
            if sep and key in _TAG_KEYS:
                env[key.decode()] = value.decode("utf-8", "replace")
        ident = env.get(ENV_ID)
        stat = proc_stat(pid)
        if not ident or stat is None or stat[1] in ("Z", "X"):
            continue
        gb = _number(_float_or_none(env.get(ENV_GPU_GB)))
        devices = env.get("CUDA_VISIBLE_DEVICES", "")
        gpus = [int(d) for d in devices.split(",") if d.strip().isdigit()]
        tagged[pid] = {
            "id": ident,
            "experiment": env.get(ENV_EXPERIMENT, ""),
            "gpu_gb": gb if gb is not None and 0 <= gb <= MAX_GPU_GB else 0.0,
            "pid": pid,
            "pid_start": stat[0],
            "ppid": stat[2],
            "gpus": gpus,
        }
    roots: dict[str, dict[str, Any]] = {}
    for proc in tagged.values():
        parent = tagged.get(proc["ppid"])
        if parent is not None and parent["id"] == proc["id"]:
            continue
        best = roots.get(proc["id"])
        if best is None or proc["pid_start"] < best["pid_start"]:
            roots[proc["id"]] = proc
    return sorted(roots.values(), key=lambda p: (p["pid_start"], p["pid"]))


def _float_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None
