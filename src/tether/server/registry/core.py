"""The registry's operations: register (admit, or queue in order), release, heartbeat, list, repair; each one
transaction of the locked store (stdlib only, Python 3.8+)."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tether.errors import ConfigError, RegistryError
from tether.server import gpu as gpu_mod
from tether.server.procinfo import boot_id, owner_gone, parent_pid, pid_start
from tether.server.registry import capacity
from tether.server.registry import store as store_mod
from tether.server.registry.capacity import GpuUse, compute_use, place
from tether.server.registry.entries import (
    DEFAULT_HISTORY_S,
    DEFAULT_LOCK_TIMEOUT_S,
    DEFAULT_PIDLESS_LEASE_S,
    EPS,
    FINAL_STATUSES,
    Entry,
    fmt_gb,
    iso,
    validate_request,
)
from tether.server.registry.store import Doc, Store

if TYPE_CHECKING:  # repair is imported when a repair runs: a listing, what agents poll, needs none of it
    from tether.server.registry.repair import RepairReport


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

    def held_until(self, e: Entry) -> str | None:
        """What ends a live entry's hold (its process, its lease, or only a person), for people."""
        return store_mod.held_until(e, self.host)

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
            row["gpu_gb_counted"] = e.gpu_gb_counted if e.is_live else None
            row["held_until"] = self.held_until(e)
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


@dataclass(frozen=True)
class AdmitRequest:
    """One registration: what is asked, who owns the entry, and which process holds the queue ticket."""

    id: str
    experiment: str
    gpu_gb: float
    owner: int | None
    owner_start: int | None
    lease_s: float | None
    waiter: int
    waiter_start: int | None

    def is_ticket(self, e: Entry) -> bool:
        """Whether ``e`` is this request's own queue ticket."""
        return e.status == "queued" and e.id == self.id and e.pid == self.waiter and e.pid_start == self.waiter_start

    def is_same(self, e: Entry) -> bool:
        """Whether ``e`` is this very registration, already admitted (registering again changes nothing)."""
        return (
            e.status == "running"
            and e.pid == self.owner
            and e.pid_start == self.owner_start
            and e.experiment == self.experiment
            and e.gpu_gb is not None
            and abs(e.gpu_gb - self.gpu_gb) < EPS
        )


@dataclass(frozen=True)
class Attempt:
    """One admission attempt: the admitted entry (None: still waiting) and how many queue ahead of it."""

    entry: Entry | None
    ahead: int = 0


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
        self.nvidia_smi = nvidia_smi
        self.store = Store(os.fspath(path), host or os.uname().nodename, lock_timeout, history_s)

    @property
    def path(self) -> str:
        return self.store.path

    @property
    def lock_path(self) -> str:
        return self.store.lock_path

    @property
    def host(self) -> str:
        return self.store.host

    @property
    def lock_timeout(self) -> float:
        return self.store.lock_timeout

    @lock_timeout.setter
    def lock_timeout(self, value: float) -> None:
        self.store.lock_timeout = value

    @property
    def history_s(self) -> float:
        return self.store.history_s

    @history_s.setter
    def history_s(self, value: float) -> None:
        self.store.history_s = value

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's exclusive lock (waits at most ``lock_timeout`` seconds)."""
        with self.store.locked():
            yield

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

    def _use(self, doc: Doc) -> tuple[list[gpu_mod.Gpu] | None, list[GpuUse] | None]:
        exe = self._nvidia_smi()
        if exe is None:
            return None, None
        gpus = gpu_mod.query_gpus(exe)
        assert gpus is not None
        running = [e for _, e in doc.live("running")]
        return gpus, compute_use(gpus, running, self._measure(exe, gpus, running))

    # ---- register ------------------------------------------------------------------------------------------

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
        gb = validate_request(id, experiment, gpu_gb)
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
        req = AdmitRequest(id, experiment, gb, owner or None, owner_start, lease_s, me, pid_start(me))
        deadline = None if not wait or wait <= 0 else time.monotonic() + wait
        queued = False
        done = False
        locked_at = 0.0
        try:
            while True:
                if queued and deadline is not None and time.monotonic() < deadline:
                    # Behind others in the queue: look without the lock (the file is replaced atomically) and
                    # take the lock only at the head of the queue, or once a second to reclaim dead waiters.
                    ahead = self._peek_ahead(req)
                    if ahead is not None and ahead > 0 and time.monotonic() - locked_at < 1.0:
                        time.sleep(min(poll_s * (1 + ahead), 0.1) * (0.75 + random.random() / 2))
                        continue
                with self.store.transaction() as doc:
                    final = deadline is None or time.monotonic() >= deadline
                    attempt = self._admit(doc, req, final)
                locked_at = time.monotonic()
                if attempt.entry is not None:
                    done = True
                    return attempt.entry
                queued = True
                time.sleep(min(poll_s * (1 + attempt.ahead), 1.0) * (0.75 + random.random() / 2))
        finally:
            if queued and not done:
                self._drop_ticket(req)

    def _peek_ahead(self, req: AdmitRequest) -> int | None:
        """How many queued entries stand before this process's ticket, read without the lock (None: unknown)."""
        items = self.store.peek_items()
        if items is None:
            return None
        ahead = 0
        for item in items:
            if not isinstance(item, dict) or item.get("status") != "queued":
                continue
            if item.get("id") == req.id and item.get("pid") == req.waiter and item.get("pid_start") == req.waiter_start:
                return ahead
            ahead += 1
        return None

    def _drop_ticket(self, req: AdmitRequest) -> None:
        with self.store.transaction() as doc:
            mine = {
                i
                for i, item in enumerate(doc.items)
                if isinstance(item, dict)
                and item.get("id") == req.id
                and item.get("status") == "queued"
                and item.get("pid") == req.waiter
                and item.get("pid_start") == req.waiter_start
            }
            if mine:
                doc.delete(mine)

    def _admit(self, doc: Doc, req: AdmitRequest, final: bool) -> Attempt:
        """One admission step under the lock: admit, keep (or take) a place in the queue, or refuse."""
        ticket: int | None = None
        for i, e in doc.live():
            if e.id != req.id:
                continue
            if req.is_ticket(e):
                ticket = i
                continue
            if req.is_same(e):
                return Attempt(e)  # the same owner registering again: nothing to do
            since = f", since {e.started}" if e.started else ""
            who = f", pid {e.pid}" if e.pid else ""
            raise RegistryError(
                f"Agent id {req.id!r} is already {e.status} ({e.experiment or 'no experiment'}, "
                f"{fmt_gb(e.gpu_gb)} GB{who}{since}).",
                f"Pick another --id, or run `tether agents done {req.id}` if that agent has finished.",
            )

        def drop_ticket() -> None:
            if ticket is not None:
                doc.delete({ticket})

        entry = Entry(
            id=req.id,
            experiment=req.experiment,
            gpu_gb=req.gpu_gb,
            status="running",
            started=iso(doc.now),
            pid=req.owner,
            pid_start=req.owner_start if req.owner else None,
            boot_id=boot_id() if req.owner else None,
            host=self.host,
            heartbeat=iso(doc.now),
            lease_s=req.lease_s,
            gpus=[],
        )
        if req.gpu_gb <= 0:
            doc.append(entry)
            return Attempt(entry)
        ahead = [e for i, e in doc.live("queued") if ticket is None or i < ticket]
        if ahead and ticket is not None and not final:
            return Attempt(None, len(ahead))  # still behind others: keep the place without asking nvidia-smi
        try:
            gpus, uses = self._use(doc)
        except RegistryError:
            drop_ticket()
            raise
        if gpus is None or uses is None:
            drop_ticket()
            raise capacity.no_gpu(req.id, req.gpu_gb)
        never = capacity.never_fits(req.id, req.gpu_gb, gpus)
        if never is not None:
            drop_ticket()
            raise never
        placement = None if ahead else place(req.gpu_gb, uses)
        if placement is not None:
            entry.gpus = placement
            if ticket is not None:
                doc.put(ticket, entry)
            else:
                doc.append(entry)
            return Attempt(entry)
        if final:
            drop_ticket()
            raise capacity.no_room(req.id, req.gpu_gb, uses, ahead)
        if ticket is None:
            doc.append(
                Entry(
                    id=req.id,
                    experiment=req.experiment,
                    gpu_gb=req.gpu_gb,
                    status="queued",
                    started=iso(doc.now),
                    pid=req.waiter,
                    pid_start=req.waiter_start,
                    boot_id=boot_id(),
                    host=self.host,
                    heartbeat=iso(doc.now),
                    gpus=[],
                    note=f"waiting for {fmt_gb(req.gpu_gb)} GB",
                )
            )
        return Attempt(None, len(ahead))

    # ---- the other operations ------------------------------------------------------------------------------

    def release(self, id: str, status: str = "completed", note: str | None = None) -> Entry:
        """Mark agent ``id`` finished (``completed`` or ``failed``); safe to call twice."""
        if status not in FINAL_STATUSES:
            raise ConfigError(f"A finished agent's status is 'completed' or 'failed', not {status!r}.")
        with self.store.transaction() as doc:
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
                e.ended = iso(doc.now)
                if note is not None:
                    e.note = note
                doc.put(i, e)
                result = e
        return result

    def heartbeat(self, id: str) -> Entry:
        """Renew agent ``id``'s lease."""
        with self.store.transaction() as doc:
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
                e.heartbeat = iso(doc.now)
                doc.put(i, e)
        return live[-1][1]

    def entries(self) -> list[Entry]:
        """All readable entries, after reclaiming dead owners (read under the lock)."""
        with self.store.transaction() as doc:
            doc.reparse(full=True)
        return [e for _, e in doc.parsed]

    def listing(self) -> Listing:
        """Entries, queue, GPU use and problems, as ``tether agents`` shows them."""
        gpu_error = None
        uses: list[GpuUse] | None = None
        with self.store.transaction() as doc:
            doc.reparse(full=True)
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
            problems=[*doc.problems, *store_mod.stale_warnings(doc, doc.now)],
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

    def repair(self) -> RepairReport:
        """Rebuild the file: keep a bad file aside, salvage readable entries, add live tagged processes."""
        from tether.server.registry import repair as repair_mod

        return repair_mod.repair(self.store)
