"""The locked store: the registry file in memory, its ``flock``-ed sidecar, loading (a damaged file is kept aside,
never overwritten), reclaiming dead owners, and the atomic save; :meth:`Store.transaction` does all of it around
one change (stdlib only, Python 3.8+)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tether.errors import RegistryError
from tether.server.procinfo import owner_gone
from tether.server.registry.entries import DEFAULT_PIDLESS_LEASE_S, DONE_STATUSES, Entry, iso, parse_iso

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system
    fcntl = None  # type: ignore[assignment]


@dataclass
class Doc:
    """The list in memory. ``lines`` keeps each unchanged item's text so a write re-encodes only what changed;
    ``parsed`` holds the entries that matter for admission (all but the finished ones unless ``full``); ``now`` is
    the time the transaction that loaded it began."""

    items: list[Any]
    lines: list[str | None] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    parsed: list[tuple[int, Entry]] = field(default_factory=list)
    changed: bool = False
    now: float = 0.0

    def __post_init__(self) -> None:
        if len(self.lines) != len(self.items):
            self.lines = [None] * len(self.items)

    def reparse(self, full: bool = False) -> None:
        self.problems = []
        self.parsed = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(self.items):
            if (
                not full
                and isinstance(raw, dict)
                and raw.get("status") in DONE_STATUSES
                and isinstance(raw.get("id"), str)
            ):
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
        """Write ``entry`` over item ``index``, changing only the fields that differ from what the item read as:
        keys this module does not know, and odd values it read conservatively (a gpu_gb of "lots"), stay as they
        are."""
        raw = self.items[index]
        before, _ = Entry.from_raw(raw, index)
        merged = dict(raw) if isinstance(raw, dict) else {}
        was = before.to_dict() if before is not None else {}
        for key, value in entry.to_dict().items():
            if key not in was or was[key] != value:
                merged[key] = value
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


def parse_lines(text: str) -> Doc | None:
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
    return Doc(items=items, lines=lines)


# --------------------------------------------------------------------------------------------------------------
# liveness


def dead_reason(e: Entry, now: float, host: str) -> str | None:
    """Why a live entry's owner is gone (process gone or replaced, or heartbeat older than its lease), or None.

    Only ``lease_s`` expires an entry by age: one with neither a pid nor a lease (the runbook's own shape) is never
    taken for dead, since nothing says its owner stopped; it counts until a person marks it done or removes it."""
    local = e.host is None or e.host == host
    if e.pid and local:
        reason = owner_gone(e.pid, e.pid_start, e.boot_id)
        if reason:
            return reason
    lease = e.lease_s
    if lease is not None:
        last = parse_iso(e.heartbeat)
        if last is None:
            last = parse_iso(e.started)
        if last is not None and now - last > lease:
            return f"no heartbeat for {now - last:.0f} s (lease {lease:g} s)"
    return None


def by_hand_only(e: Entry) -> bool:
    """Whether nothing but a person ends this live entry: it has no owner pid and no heartbeat lease."""
    return e.is_live and not e.pid and e.lease_s is None


def held_until(e: Entry, host: str) -> str | None:
    """What ends a live entry's hold, for people (None for a finished entry)."""
    if not e.is_live:
        return None
    lease = f"its heartbeat is {e.lease_s:g} s late" if e.lease_s is not None else None
    if e.pid:
        local = e.host is None or e.host == host
        gone = f"process {e.pid} ends" if local else f"process {e.pid} on {e.host} ends (checked there only)"
        return f"{gone} or {lease}" if lease else gone
    if lease:
        return lease
    since = f" (registered {e.started})" if e.started else ""
    return f"marked done or removed by hand: no pid and no heartbeat, so it never expires{since}"


def stale_warnings(doc: Doc, now: float) -> list[str]:
    """A warning for each entry that only a person can end and that has been there longer than a pidless lease."""
    warnings = []
    for _, e in doc.live():
        started = parse_iso(e.started)
        if by_hand_only(e) and started is not None and now - started > DEFAULT_PIDLESS_LEASE_S:
            warnings.append(
                f"entry {e.id!r} has no pid and no heartbeat and was registered {(now - started) / 3600:.1f} h ago; "
                f"it still counts: run `tether agents done {e.id}` if it has finished"
            )
    return warnings


# --------------------------------------------------------------------------------------------------------------
# the store


class Store:
    """``path`` under the exclusive lock ``<path>.lock``: load, reclaim, change, save atomically."""

    def __init__(self, path: str, host: str, lock_timeout: float, history_s: float) -> None:
        self.path = path
        self.lock_path = path + ".lock"
        self.host = host
        self.lock_timeout = lock_timeout
        self.history_s = history_s
        self._held: int | None = None

    # ---- the lock ----------------------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's exclusive lock (waits at most ``lock_timeout`` seconds).

        The lock is held only on the file that ``<path>.lock`` names once it is locked: if the path was removed or
        replaced while this process waited on the old file, the old one is let go and the new one locked, so a
        process that waited on a removed lock file does not run beside the one holding its replacement."""
        if fcntl is None:  # pragma: no cover
            raise RegistryError("This system has no flock, so the agent registry cannot be locked.")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            fd = self._open_lock()
            try:
                self._flock(fd, deadline)
                if self._is_current(fd):
                    break
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            if time.monotonic() >= deadline:
                raise RegistryError(
                    f"The registry lock {self.lock_path} kept being removed or replaced for {self.lock_timeout:g} s.",
                    "Find what deletes it and stop that; the lock file must stay in place.",
                )
        try:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {iso(time.time())} {self.host}\n".encode(), 0)
            except OSError:
                pass  # read-only lock file: the holder note is informative only
            self._held = fd
            try:
                yield
            finally:
                self._held = None
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _open_lock(self) -> int:
        parent = os.path.dirname(self.path) or "."
        try:
            os.makedirs(parent, exist_ok=True)
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            try:
                return os.open(self.lock_path, os.O_RDONLY)
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

    def _flock(self, fd: int, deadline: float) -> None:
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise self._lock_timeout_error(fd) from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.02)

    def _is_current(self, fd: int) -> bool:
        """Whether ``<path>.lock`` still names the file open as ``fd`` (same device and inode)."""
        held = os.fstat(fd)
        try:
            named = os.stat(self.lock_path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise RegistryError(f"Cannot check the registry lock {self.lock_path}: {exc.strerror}.") from exc
        return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)

    def _check_still_locked(self) -> None:
        """Refuse to write when the lock file this process holds was removed or replaced since it was locked:
        another process may have locked the new one and changed the file meanwhile."""
        if self._held is not None and not self._is_current(self._held):
            raise RegistryError(
                f"The registry lock {self.lock_path} was removed or replaced while this process held it, so another "
                f"process may have changed {self.path} meanwhile; nothing was written.",
                "Run it again; and leave the .lock file in place (removing it lets a second writer in).",
            )

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

    # ---- reading and writing -----------------------------------------------------------------------------

    def keep_aside(self, data: bytes) -> str:
        """Keep a copy of a damaged file as ``<path>.bad-<UTC time>`` (the same copy once) and return its path."""
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
        self.write_bytes(target, data)
        return target

    def read_bytes(self) -> bytes | None:
        try:
            with open(self.path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryError(
                f"Cannot read the agent registry {self.path}: {exc.strerror}.", "Check its permissions."
            ) from exc

    def peek_items(self) -> list[Any] | None:
        """The list as it is on disk now, read without the lock (the file is replaced atomically); None if it
        cannot be read as a list."""
        try:
            data = self.read_bytes()
            if data is None:
                return None
            text = data.decode("utf-8")
            fast = parse_lines(text)
            items = fast.items if fast is not None else json.loads(text)
        except (RegistryError, UnicodeDecodeError, ValueError):
            return None
        return items if isinstance(items, list) else None

    def load(self) -> Doc:
        """The file as a :class:`Doc`; a file that is not a JSON list is kept aside and refused."""
        data = self.read_bytes()
        if data is None or not data.strip():
            return Doc(items=[])
        try:
            text = data.decode("utf-8")
            fast = parse_lines(text)
            if fast is not None:
                fast.reparse()
                return fast
            items = json.loads(text)
            what = "" if isinstance(items, list) else f"a JSON {type(items).__name__}, not a list"
        except (UnicodeDecodeError, ValueError) as exc:
            what = f"not valid JSON ({exc})"
        if what:
            aside = self.keep_aside(data)
            raise RegistryError(
                f"The agent registry {self.path} is {what}; it was left untouched and a copy kept at {aside}.",
                "Run `tether agents repair` to rebuild it from the entries still readable and the live processes.",
            )
        doc = Doc(items=items)
        doc.reparse()
        return doc

    def write_bytes(self, target: str, data: bytes, check: Callable[[], None] | None = None) -> None:
        """Write ``target`` through a temporary file ``os.replace``-d over it (``check`` runs just before the
        replace; if it raises, nothing is replaced)."""
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
            if check is not None:
                check()
            os.replace(tmp, target)
        except RegistryError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise RegistryError(
                f"Cannot write the agent registry {target}: {exc.strerror}.", "Check free disk space and permissions."
            ) from exc

    def save(self, doc: Doc) -> None:
        self.write_bytes(self.path, doc.text().encode("utf-8"), check=self._check_still_locked)
        doc.changed = False

    # ---- reclaiming --------------------------------------------------------------------------------------

    def reclaim(self, doc: Doc, now: float) -> None:
        """Mark live entries whose owner is gone ``lost``; drop finished entries older than ``history_s``."""
        for i, e in doc.live():
            reason = dead_reason(e, now, self.host)
            if reason:
                e.status = "lost"
                e.ended = iso(now)
                e.note = reason
                doc.put(i, e)
        cutoff = now - self.history_s
        cutoff_iso = iso(cutoff)
        drop = set()
        for i, raw in enumerate(doc.items):
            if not isinstance(raw, dict) or raw.get("status") not in DONE_STATUSES:
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

    # ---- the one way to change the file ------------------------------------------------------------------

    @contextmanager
    def transaction(self, load: Callable[[], Doc] | None = None) -> Iterator[Doc]:
        """Lock, load (``load``, default :meth:`load`), reclaim dead owners, yield the document, and save it if it
        changed (also when the block raises, so a reclaim or a dropped ticket is not lost)."""
        with self.locked():
            doc = (load or self.load)()
            doc.now = time.time()
            self.reclaim(doc, doc.now)
            try:
                yield doc
            finally:
                if doc.changed:
                    self.save(doc)
