"""Local state: one SQLite file under ``$TETHER_HOME`` (``state.db``).

Tables: ``runs`` (every run tether started, wherever it runs; schema 7: an ended run's frozen counts),
``instances`` (servers tether rented or knows), ``instance_events`` (every observed state and price of an instance:
the cost ledger), ``pulls`` (what each pull brought home, with a manifest of path, size, mtime and sha256, which
tells later whether results are unsynced), ``result_files`` (schema 7: per local result file, the host and run whose
pull last brought it and its sha256), ``decisions`` (what the autopilot did and why) and ``hosts`` (what tether set
up on each server: the server side's version, the interpreter's real path, the last pushed code fingerprint,
whether `.env` uploads are off), and
``managed_runs`` / ``managed_shards`` (schema 4: each managed run, its options and status, and each shard's server,
current run, sync point and recoveries; :mod:`tether.managed`); ``notifications`` (schema 5: each event announced,
by key, so no event is sent twice; :mod:`tether.notify`), ``machine_outcomes``
(schema 6: how each rental on a provider's machine went; :mod:`tether.machines`); schema 8: each run's project
(:mod:`tether.scope`), ``shown_tails`` (each failed run whose log tail ``progress`` has shown, so it is shown
once), and a finished shard's ``synced`` made equal to what it completed (its final pull brought that home).
The schema is versioned with ``PRAGMA user_version``; migrations run on open, in one transaction each (schema 3
moved the old ``kv`` facts ``up:NAME``, ``push:NAME``, ``python:NAME`` into ``hosts`` columns).
Every record comes back as a frozen dataclass; every INSERT names its columns.

The file is private: ``state.db`` and its ``-wal``/``-shm`` files are 0600 (looser ones are tightened on open) in a
``$TETHER_HOME`` that is 0700. A damaged file (not a database) or a full disk is one :class:`StateError` sentence,
raised at open, on a write or on a read, never a traceback.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypedDict, Unpack

from tether import vocab
from tether.errors import ConfigError, StateError
from tether.machines import Outcome
from tether.paths import private_dir, private_file, tether_home

MIGRATIONS: list[str] = [
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        experiment TEXT NOT NULL,
        host TEXT NOT NULL,
        argv TEXT NOT NULL,
        cwd TEXT NOT NULL,
        results_dir TEXT NOT NULL,
        log_path TEXT NOT NULL,
        session TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL,
        exit_code INTEGER,
        status TEXT NOT NULL
    );
    CREATE INDEX runs_host ON runs(host, started);
    CREATE TABLE instances (
        name TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        instance_id TEXT,
        address TEXT,
        remote_root TEXT NOT NULL DEFAULT '/workspace',
        state TEXT NOT NULL,
        dph_total REAL,
        storage_dph REAL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE instance_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        instance_id TEXT,
        ts REAL NOT NULL,
        state TEXT NOT NULL,
        dph_total REAL,
        storage_dph REAL,
        source TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX instance_events_name ON instance_events(name, ts);
    CREATE TABLE pulls (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        host TEXT NOT NULL,
        ts REAL NOT NULL,
        paths TEXT NOT NULL,
        manifest TEXT NOT NULL,
        bytes INTEGER NOT NULL DEFAULT 0,
        verified INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX pulls_host ON pulls(host, ts);
    CREATE TABLE decisions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        name TEXT NOT NULL,
        action TEXT NOT NULL,
        reason TEXT NOT NULL,
        done INTEGER NOT NULL
    );
    """,
    """
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        server_version TEXT,
        python TEXT,
        pushed_fingerprint TEXT,
        no_env INTEGER NOT NULL DEFAULT 0,
        updated REAL NOT NULL DEFAULT 0
    );
    INSERT INTO hosts(name) SELECT DISTINCT substr(key, instr(key, ':') + 1) FROM kv
        WHERE key LIKE 'up:%' OR key LIKE 'push:%' OR key LIKE 'python:%';
    UPDATE hosts SET server_version = (SELECT value FROM kv WHERE key = 'up:' || hosts.name);
    UPDATE hosts SET pushed_fingerprint = (SELECT value FROM kv WHERE key = 'push:' || hosts.name);
    UPDATE hosts SET python = (SELECT value FROM kv WHERE key = 'python:' || hosts.name);
    DROP TABLE kv;
    """,
    """
    CREATE TABLE managed_runs (
        id TEXT PRIMARY KEY,
        experiment TEXT NOT NULL,
        shards INTEGER NOT NULL,
        args TEXT NOT NULL DEFAULT '[]',
        profile TEXT,
        hosts TEXT NOT NULL DEFAULT '[]',
        max_usd REAL,
        sync_every REAL NOT NULL,
        mode TEXT NOT NULL DEFAULT 'journal',
        status TEXT NOT NULL,
        reason TEXT,
        started REAL NOT NULL,
        ended REAL,
        results_path TEXT,
        cost_usd REAL,
        controller_pid INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        updated REAL NOT NULL
    );
    CREATE INDEX managed_runs_experiment ON managed_runs(experiment, started);
    CREATE TABLE managed_shards (
        run_id TEXT NOT NULL,
        shard INTEGER NOT NULL,
        status TEXT NOT NULL,
        server TEXT,
        own_host INTEGER NOT NULL DEFAULT 0,
        run TEXT,
        attempt INTEGER NOT NULL DEFAULT 0,
        recoveries INTEGER NOT NULL DEFAULT 0,
        restarts INTEGER NOT NULL DEFAULT 0,
        completed INTEGER NOT NULL DEFAULT 0,
        total INTEGER,
        synced INTEGER NOT NULL DEFAULT 0,
        last_sync REAL,
        last_seen REAL,
        last_failure TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        retry_at REAL,
        updated REAL NOT NULL,
        PRIMARY KEY (run_id, shard)
    );
    """,
    """
    CREATE TABLE notifications (
        key TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        sent REAL NOT NULL
    );
    """,
    """
    CREATE TABLE machine_outcomes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        machine_id INTEGER NOT NULL,
        provider TEXT NOT NULL,
        ts REAL NOT NULL,
        outcome TEXT NOT NULL,
        why TEXT,
        instance TEXT,
        minutes_to_running REAL,
        setup_minutes REAL,
        forgotten INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX machine_outcomes_machine ON machine_outcomes(provider, machine_id, ts);
    """,
    """
    ALTER TABLE runs ADD COLUMN completed INTEGER;
    ALTER TABLE runs ADD COLUMN failed INTEGER;
    ALTER TABLE runs ADD COLUMN total INTEGER;
    ALTER TABLE runs ADD COLUMN frozen REAL;
    CREATE TABLE result_files (
        path BLOB PRIMARY KEY,
        host TEXT NOT NULL,
        run_id TEXT,
        sha256 TEXT NOT NULL,
        ts REAL NOT NULL
    );
    """,
    """
    ALTER TABLE runs ADD COLUMN project TEXT;
    UPDATE runs SET project = cwd WHERE host = 'local';
    CREATE TABLE shown_tails (
        host TEXT NOT NULL,
        run_id TEXT NOT NULL,
        shown REAL NOT NULL,
        PRIMARY KEY (host, run_id)
    );
    UPDATE managed_shards SET synced = MAX(synced, completed) WHERE status IN ('releasing', 'completed');
    """,
]


@dataclass(frozen=True)
class RunRecord:
    id: str
    experiment: str
    host: str
    argv: list[str]
    cwd: str
    results_dir: str
    log_path: str
    session: str
    started: float
    ended: float | None
    exit_code: int | None
    status: str
    completed: int | None = None
    """The counts the run ended with (``frozen`` set): from its own record, never read again from a results folder
    that later runs reuse."""
    failed: int | None = None
    total: int | None = None
    frozen: float | None = None
    """When tether first saw the run final and froze its status, exit code, end and counts (None: not yet)."""
    project: str | None = None
    """The folder of the project that started it, on this machine (schema 8; None: started outside a project, or
    recorded before runs carried it). :mod:`tether.scope` reads it."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ResultFile:
    """Where a local result file came from: the host and run whose pull last brought it, and its sha256 then."""

    path: Path
    host: str
    run_id: str | None
    sha256: str
    ts: float


@dataclass(frozen=True)
class InstanceRecord:
    name: str
    provider: str
    instance_id: str | None
    address: str | None
    remote_root: str
    state: str
    dph_total: float | None
    storage_dph: float | None
    created: float
    updated: float
    meta: dict[str, Any]

    @property
    def gone(self) -> bool:
        """Destroyed, or vanished at the provider: history, listed only by ``tether ls --all``."""
        return self.state == "gone"


@dataclass(frozen=True)
class EventRecord:
    """One observation of an instance: the cost ledger's input (:func:`tether.cost.ledger` reads ``to_json()``)."""

    seq: int
    name: str
    instance_id: str | None
    ts: float
    state: str
    dph_total: float | None
    storage_dph: float | None
    source: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PullRecord:
    """What one pull brought home: the paths, the server's manifest (path -> [size, mtime, sha256]), verified?"""

    seq: int
    host: str
    ts: float
    paths: list[str]
    manifest: dict[str, Any]
    bytes: int
    verified: bool


@dataclass(frozen=True)
class DecisionRecord:
    seq: int
    ts: float
    name: str
    action: str
    reason: str
    done: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HostFacts:
    """What tether set up on one server (``tether up``) and last pushed there."""

    name: str
    server_version: str | None = None
    """The server side's content hash installed by ``tether up`` (None: never set up)."""
    python: str | None = None
    """The real path of the server's interpreter (a pyenv-style shim can cost 100 ms a call)."""
    pushed_fingerprint: str | None = None
    no_env: bool = False
    """``tether up --no-env`` was used: later pushes do not upload ``.env`` until ``up`` or ``push --env``."""
    updated: float = 0.0


@dataclass(frozen=True)
class ManagedRunRecord:
    """A managed run (``tether run EXP --managed``): its options, where it stands, and what it cost."""

    id: str
    experiment: str
    shards: int
    args: list[str]
    profile: str | None
    hosts: list[str]
    """``--on``: servers the user owns that take the first shards."""
    max_usd: float | None
    sync_every: float
    mode: str
    """``journal`` (the experiment uses tether.checkpoint: journals sync incrementally) or ``folder``."""
    status: vocab.ManagedStatus
    reason: str | None
    started: float
    ended: float | None
    results_path: str | None
    cost_usd: float | None
    controller_pid: int | None
    cancel_requested: bool
    updated: float


@dataclass(frozen=True)
class ManagedShardRecord:
    """One shard of a managed run: its server (rented or owned), its current run there, and its history."""

    run_id: str
    shard: int
    status: vocab.ShardStatus
    server: str | None
    own_host: bool
    run: str | None
    attempt: int
    """How many servers this shard has been given (the rented server's name ends with it)."""
    recoveries: int
    restarts: int
    completed: int
    total: int | None
    synced: int
    """Items in the journal copy on this machine (the last sync)."""
    last_sync: float | None
    last_seen: float | None
    """The last time its server answered."""
    last_failure: str | None
    failures: int
    reason: str | None
    retry_at: float | None
    updated: float


class ShardUpdate(TypedDict, total=False):
    """A typed partial update of a :class:`ManagedShardRecord` (what a managed run's rules decide to change)."""

    status: vocab.ShardStatus
    server: str | None
    run: str | None
    attempt: int
    recoveries: int
    restarts: int
    completed: int
    total: int | None
    synced: int
    last_sync: float | None
    last_seen: float | None
    last_failure: str | None
    failures: int
    reason: str | None
    retry_at: float | None


class RunUpdate(TypedDict, total=False):
    """A typed partial update of a :class:`ManagedRunRecord`."""

    status: vocab.ManagedStatus
    reason: str | None
    ended: float | None
    results_path: str | None
    cost_usd: float | None
    controller_pid: int | None
    cancel_requested: bool
    max_usd: float | None
    sync_every: float
    args: list[str]
    hosts: list[str]
    profile: str | None


MANAGED_RUN_FIELDS = [f.name for f in fields(ManagedRunRecord)]
MANAGED_SHARD_FIELDS = [f.name for f in fields(ManagedShardRecord)]


class State:
    """The local SQLite store. Open with :func:`open_state`; use as a context manager or call ``close()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            if path.parent == tether_home():
                private_dir(path.parent)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
            # SQLite gives the -wal and -shm files the mode of the database file. An existing file is not opened
            # here: closing a descriptor of it would drop the locks SQLite holds through this process's other
            # connections (POSIX locks are per process), which makes them fail with "disk I/O error".
            private_file(path, create=not path.exists())
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(
                f"Cannot open the state database {path}: {exc}.",
                "Check that TETHER_HOME points to a writable folder.",
            ) from None
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute("PRAGMA busy_timeout=30000")
            self._wal()
            self._migrate()
            for suffix in ("-wal", "-shm"):
                private_file(path.with_name(path.name + suffix), create=False)
        except BaseException as exc:
            self.db.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise self._error(exc) from exc
            raise

    def _wal(self) -> None:
        """Switch to WAL. SQLite answers "locked" at once, without its busy handler, while another process
        creates the file, so a fresh state opened by two commands together retries here for a bounded time."""
        deadline = time.monotonic() + 30
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.db.close()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error | OSError) -> StateError:
        """One sentence for a database that cannot be used: damaged, on a full disk, busy, or otherwise."""
        return database_error(self.path, exc)

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """The rows of a read; a damaged or unreadable file is a :class:`StateError`."""
        try:
            return self.db.execute(query, args).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _row(self, query: str, args: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = self._rows(query, args)
        return rows[0] if rows else None

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; a full disk, a damaged file or a lock held too long is a :class:`StateError`."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            yield self.db
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._error(exc) from exc
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.db.in_transaction:
            with suppress(sqlite3.Error):  # SQLite may have rolled back already (a full disk does that)
                self.db.execute("ROLLBACK")

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])  # errors: see __init__
        if version > len(MIGRATIONS):
            raise StateError(
                f"The state database {self.path} was written by a newer tether (schema {version}).",
                "Upgrade tether, or point TETHER_HOME elsewhere.",
            )
        for number in range(version, len(MIGRATIONS)):
            with self.tx() as db:
                # Another process may have migrated between our read and this write lock: read it again under the lock.
                if int(db.execute("PRAGMA user_version").fetchone()[0]) > number:
                    continue
                for statement in _statements(MIGRATIONS[number]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")

    # --- runs -------------------------------------------------------------------------------------------------
    def add_run(self, run: RunRecord) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO runs(id, experiment, host, argv, cwd, results_dir, log_path, session, started, ended,"
                " exit_code, status, project) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run.id,
                    run.experiment,
                    run.host,
                    json.dumps(run.argv),
                    run.cwd,
                    run.results_dir,
                    run.log_path,
                    run.session,
                    run.started,
                    run.ended,
                    run.exit_code,
                    run.status,
                    run.project,
                ),
            )

    def update_run(self, run_id: str, *, status: str, ended: float | None, exit_code: int | None) -> None:
        """Record what a run's target says now; a frozen run (one that ended) never changes again."""
        with self.tx() as db:
            db.execute(
                "UPDATE runs SET status=?, ended=?, exit_code=? WHERE id=? AND frozen IS NULL",
                (status, ended, exit_code, run_id),
            )

    def freeze_run(
        self,
        run_id: str,
        *,
        status: str,
        ended: float | None,
        exit_code: int | None,
        completed: int,
        failed: int,
        total: int | None,
    ) -> RunRecord:
        """Freeze a run that ended: its status, end, exit code and counts, once (a second call changes nothing)."""
        with self.tx() as db:
            db.execute(
                "UPDATE runs SET status=?, ended=?, exit_code=?, completed=?, failed=?, total=?, frozen=?"
                " WHERE id=? AND frozen IS NULL",
                (status, ended, exit_code, completed, failed, total, time.time(), run_id),
            )
        rows = self._rows("SELECT * FROM runs WHERE id=?", (run_id,))
        return _run(rows[0])

    def runs(self, host: str | None = None, experiment: str | None = None) -> list[RunRecord]:
        query = "SELECT * FROM runs WHERE 1=1"
        args: list[Any] = []
        if host is not None:
            query += " AND host=?"
            args.append(host)
        if experiment is not None:
            query += " AND experiment=?"
            args.append(experiment)
        return [_run(row) for row in self._rows(query + " ORDER BY started", args)]

    def resolve_run(self, ref: str, experiments: Collection[str] = ()) -> RunRecord | ManagedRunRecord:
        """The one resolver of a run reference (``logs``, ``attach``, ``cancel``, managed runs): a plain or managed run.

        In this order: an exact run id (plain or managed); an exact experiment name (one of ``experiments``, or one
        with runs): that experiment's latest run (a managed run, or a plain run that is not a managed run's shard);
        a prefix of exactly one run id. A prefix of several is refused with the candidates, as is a name with no
        run: a usage error (exit 2), never a guess.
        """
        every: list[RunRecord | ManagedRunRecord] = [*self.runs(), *self.managed_runs()]
        exact = [r for r in every if r.id == ref]
        if exact:
            return exact[0]
        named = [r for r in every if r.experiment == ref and not (isinstance(r, RunRecord) and is_shard_run(r.id))]
        if named:
            return max(named, key=lambda r: r.started)
        if ref in experiments:
            raise ConfigError(f"Experiment {ref!r} has no runs here.", f"Start one with `tether run {ref}`.")
        prefixed = sorted((r for r in every if ref and r.id.startswith(ref)), key=lambda r: r.started)
        if len(prefixed) == 1:
            return prefixed[0]
        if not prefixed:
            raise ConfigError(f"No run {ref!r} is known here.", "`tether progress` lists the runs.")
        names = ", ".join(r.id for r in prefixed[:8]) + (" ..." if len(prefixed) > 8 else "")
        raise ConfigError(
            f"{ref!r} is the start of {len(prefixed)} run ids, so it names none of them.",
            f"Give a whole run id or an experiment's name: {names}.",
        )

    def forget_runs(self, ids: Collection[str]) -> int:
        """Delete these runs' records from local state (never a result, never anything on a server); how many."""
        with self.tx() as db:
            for run_id in ids:
                db.execute("DELETE FROM shown_tails WHERE run_id=?", (run_id,))
            return sum(int(db.execute("DELETE FROM runs WHERE id=?", (run_id,)).rowcount) for run_id in ids)

    def claim_tails(self, runs: Collection[tuple[str, str]], now: float | None = None) -> set[tuple[str, str]]:
        """Of these ``(host, run id)`` pairs, the ones whose log tail was never shown before, now recorded shown
        (each pair is claimed once, whichever command shows it first)."""
        when = time.time() if now is None else now
        claimed: set[tuple[str, str]] = set()
        with self.tx() as db:
            for host, run_id in runs:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO shown_tails(host, run_id, shown) VALUES (?,?,?)", (host, run_id, when)
                )
                if cursor.rowcount:
                    claimed.add((host, run_id))
        return claimed

    def find_run(self, ref: str, experiments: Collection[str] = ()) -> RunRecord:
        """:meth:`resolve_run` for a command that needs one run on one host (``logs``, ``attach``)."""
        found = self.resolve_run(ref, experiments)
        if isinstance(found, RunRecord):
            return found
        shards = [s.run for s in self.managed_shards(found.id) if s.run]
        raise ConfigError(
            f"{ref!r} is managed run {found.id}, which runs as one run per shard.",
            "Give a shard's run id: " + (", ".join(shards) if shards else "none has started yet") + ".",
        )

    # --- instances and the cost ledger --------------------------------------------------------------------------
    def upsert_instance(self, rec: InstanceRecord, *, source: str = "") -> None:
        with self.tx() as db:
            db.execute(
                """INSERT INTO instances(name, provider, instance_id, address, remote_root, state, dph_total,
                   storage_dph, created, updated, meta) VALUES (?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(name) DO UPDATE SET provider=excluded.provider, instance_id=excluded.instance_id,
                   address=excluded.address, remote_root=excluded.remote_root, state=excluded.state,
                   dph_total=excluded.dph_total, storage_dph=excluded.storage_dph, updated=excluded.updated,
                   meta=excluded.meta""",
                (
                    rec.name,
                    rec.provider,
                    rec.instance_id,
                    rec.address,
                    rec.remote_root,
                    rec.state,
                    rec.dph_total,
                    rec.storage_dph,
                    rec.created,
                    rec.updated,
                    json.dumps(rec.meta),
                ),
            )
            db.execute(
                "INSERT INTO instance_events(name, instance_id, ts, state, dph_total, storage_dph, source)"
                " VALUES (?,?,?,?,?,?,?)",
                (rec.name, rec.instance_id, rec.updated, rec.state, rec.dph_total, rec.storage_dph, source),
            )

    def merge_instance_meta(
        self, name: str, meta: dict[str, Any], *, stopped_at: tuple[float, str] | None = None
    ) -> None:
        """Merge ``meta`` into the instance's record; with ``stopped_at=(ts, source)``, also put a stop that happened
        at ``ts`` (learned later, e.g. from the server's watchdog) in the ledger at its own time."""
        with self.tx() as db:
            row = db.execute(
                "SELECT instance_id, meta, dph_total, storage_dph FROM instances WHERE name=?", (name,)
            ).fetchone()
            if row is None:
                return
            merged = {**json.loads(row["meta"] or "{}"), **meta}
            db.execute("UPDATE instances SET meta=? WHERE name=?", (json.dumps(merged), name))
            if stopped_at is not None:
                db.execute(
                    "INSERT INTO instance_events(name, instance_id, ts, state, dph_total, storage_dph, source)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (
                        name,
                        row["instance_id"],
                        stopped_at[0],
                        "stopped",
                        row["dph_total"],
                        row["storage_dph"],
                        stopped_at[1],
                    ),
                )

    def reserve_instance(self, name: str, provider: str, remote_root: str, meta: dict[str, Any]) -> None:
        """Record a rental about to be created (state ``creating``, no instance id yet), before any money is spent.

        Written without a ledger event (nothing bills yet); :func:`tether.rentals.reconcile` replaces it with the
        instance the provider made, found by its label, or drops it when nothing was made.
        """
        now = time.time()
        with self.tx() as db:
            db.execute(
                """INSERT INTO instances(name, provider, instance_id, address, remote_root, state, dph_total,
                   storage_dph, created, updated, meta) VALUES (?,?,NULL,NULL,?,'creating',NULL,NULL,?,?,?)
                   ON CONFLICT(name) DO UPDATE SET provider=excluded.provider, instance_id=NULL, address=NULL,
                   remote_root=excluded.remote_root, state='creating', dph_total=NULL, storage_dph=NULL,
                   created=excluded.created, updated=excluded.updated, meta=excluded.meta""",
                (name, provider, remote_root, now, now, json.dumps(meta)),
            )

    def set_instance_owner(self, name: str, owner: str | None) -> None:
        """Record who acts on a server (``managed:<run id>``: a managed run's controller) in its ``meta.owner``;
        the autopilot, ``stop`` and ``destroy`` leave it alone while that owner is live."""
        with self.tx() as db:
            db.execute(
                "UPDATE instances SET meta=json_set(COALESCE(meta, '{}'), '$.owner', ?) WHERE name=?", (owner, name)
            )

    def drop_reservation(self, name: str) -> None:
        """Forget a ``creating`` record whose create made nothing (a record with an instance is never dropped)."""
        with self.tx() as db:
            db.execute("DELETE FROM instances WHERE name=? AND state='creating' AND instance_id IS NULL", (name,))

    def instance(self, name: str) -> InstanceRecord | None:
        row = self._row("SELECT * FROM instances WHERE name=?", (name,))
        return _instance(row) if row else None

    def instances(self) -> list[InstanceRecord]:
        return [_instance(r) for r in self._rows("SELECT * FROM instances ORDER BY created")]

    def events(self, name: str | None = None) -> list[EventRecord]:
        if name is None:
            rows = self._rows("SELECT * FROM instance_events ORDER BY ts, seq")
        else:
            rows = self._rows("SELECT * FROM instance_events WHERE name=? ORDER BY ts, seq", (name,))
        return [EventRecord(**dict(r)) for r in rows]

    def event_log(self) -> list[dict[str, Any]]:
        """Every event as the cost ledger reads it (:func:`tether.cost.ledger`)."""
        return [e.to_json() for e in self.events()]

    # --- pulls --------------------------------------------------------------------------------------------------
    def add_pull(
        self,
        host: str,
        paths: list[str],
        manifest: dict[str, Any],
        nbytes: int,
        verified: bool,
        ts: float | None = None,
    ) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO pulls(host, ts, paths, manifest, bytes, verified) VALUES (?,?,?,?,?,?)",
                (
                    host,
                    ts if ts is not None else time.time(),
                    json.dumps(paths),
                    json.dumps(manifest),
                    nbytes,
                    int(verified),
                ),
            )

    def last_pull(self, host: str) -> PullRecord | None:
        row = self._row("SELECT * FROM pulls WHERE host=? ORDER BY ts DESC, seq DESC LIMIT 1", (host,))
        if row is None:
            return None
        return PullRecord(
            seq=row["seq"],
            host=row["host"],
            ts=row["ts"],
            paths=json.loads(row["paths"]),
            manifest=json.loads(row["manifest"]),
            bytes=row["bytes"],
            verified=bool(row["verified"]),
        )

    def result_file(self, path: Path) -> ResultFile | None:
        """Where the local result file ``path`` (absolute) last came from, or None when no pull brought it."""
        row = self._row("SELECT * FROM result_files WHERE path=?", (os.fsencode(path),))
        if row is None:
            return None
        return ResultFile(Path(os.fsdecode(row["path"])), row["host"], row["run_id"], row["sha256"], row["ts"])

    def set_result_files(self, host: str, files: Sequence[tuple[Path, str | None, str]]) -> None:
        """Record that a pull from ``host`` brought each ``(absolute path, run id, sha256)``."""
        now = time.time()
        with self.tx() as db:
            for path, run_id, sha in files:
                db.execute(
                    "INSERT INTO result_files(path, host, run_id, sha256, ts) VALUES (?,?,?,?,?) ON CONFLICT(path)"
                    " DO UPDATE SET host=excluded.host, run_id=excluded.run_id, sha256=excluded.sha256, ts=excluded.ts",
                    (os.fsencode(path), host, run_id, sha, now),
                )

    # --- what tether set up on each server ----------------------------------------------------------------------
    def host_facts(self, name: str) -> HostFacts:
        row = self._row("SELECT * FROM hosts WHERE name=?", (name,))
        if row is None:
            return HostFacts(name)
        return HostFacts(
            name=row["name"],
            server_version=row["server_version"],
            python=row["python"],
            pushed_fingerprint=row["pushed_fingerprint"],
            no_env=bool(row["no_env"]),
            updated=row["updated"],
        )

    def set_host_facts(
        self,
        name: str,
        *,
        server_version: str | None = None,
        python: str | None = None,
        pushed_fingerprint: str | None = None,
        no_env: bool | None = None,
    ) -> HostFacts:
        """Change the facts given (None leaves one as it is) and return them all."""
        with self.tx() as db:
            db.execute("INSERT INTO hosts(name) VALUES (?) ON CONFLICT(name) DO NOTHING", (name,))
            changes = {
                "server_version": server_version,
                "python": python,
                "pushed_fingerprint": pushed_fingerprint,
                "no_env": None if no_env is None else int(no_env),
            }
            for column, value in changes.items():
                if value is not None:
                    db.execute(f"UPDATE hosts SET {column}=?, updated=? WHERE name=?", (value, time.time(), name))
        return self.host_facts(name)

    # --- managed runs -------------------------------------------------------------------------------------------
    def add_managed_run(self, run: ManagedRunRecord, shards: Sequence[ManagedShardRecord]) -> None:
        """Record a managed run and its shards in one transaction (before anything is rented)."""
        with self.tx() as db:
            columns, marks = ", ".join(MANAGED_RUN_FIELDS), ",".join("?" * len(MANAGED_RUN_FIELDS))
            db.execute(f"INSERT INTO managed_runs({columns}) VALUES ({marks})", _managed_run_row(run))
            for shard in shards:
                db.execute(
                    f"INSERT INTO managed_shards({', '.join(MANAGED_SHARD_FIELDS)}) "
                    f"VALUES ({','.join('?' * len(MANAGED_SHARD_FIELDS))})",
                    _managed_shard_row(shard),
                )

    def managed_run(self, run_id: str) -> ManagedRunRecord | None:
        row = self._row("SELECT * FROM managed_runs WHERE id=?", (run_id,))
        return _managed_run(row) if row else None

    def managed_runs(self, experiment: str | None = None) -> list[ManagedRunRecord]:
        if experiment is None:
            rows = self._rows("SELECT * FROM managed_runs ORDER BY started")
        else:
            rows = self._rows("SELECT * FROM managed_runs WHERE experiment=? ORDER BY started", (experiment,))
        return [_managed_run(r) for r in rows]

    def update_managed_run(self, run_id: str, **changes: Unpack[RunUpdate]) -> ManagedRunRecord:
        """Change the columns given (``args``/``hosts`` as lists, ``cancel_requested`` as bool) and return the run."""
        self._update("managed_runs", MANAGED_RUN_FIELDS, "id=?", (run_id,), dict(changes))
        rec = self.managed_run(run_id)
        assert rec is not None
        return rec

    def managed_shards(self, run_id: str) -> list[ManagedShardRecord]:
        rows = self._rows("SELECT * FROM managed_shards WHERE run_id=? ORDER BY shard", (run_id,))
        return [_managed_shard(r) for r in rows]

    def update_managed_shard(self, run_id: str, shard: int, **changes: Unpack[ShardUpdate]) -> ManagedShardRecord:
        self._update("managed_shards", MANAGED_SHARD_FIELDS, "run_id=? AND shard=?", (run_id, shard), dict(changes))
        row = self._row("SELECT * FROM managed_shards WHERE run_id=? AND shard=?", (run_id, shard))
        assert row is not None
        return _managed_shard(row)

    def _update(
        self, table: str, fields: Sequence[str], where: str, key: Sequence[Any], changes: dict[str, Any]
    ) -> None:
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"unknown {table} columns: {unknown}")
        values = {
            k: (json.dumps(v) if isinstance(v, list) else int(v) if isinstance(v, bool) else v)
            for k, v in changes.items()
        }
        values["updated"] = time.time()
        assignments = ", ".join(f"{k}=?" for k in values)
        with self.tx() as db:
            db.execute(f"UPDATE {table} SET {assignments} WHERE {where}", (*values.values(), *key))

    # --- notifications ------------------------------------------------------------------------------------------
    def claim_notification(self, key: str, kind: str, subject: str, now: float | None = None) -> bool:
        """Record that the event ``key`` is being announced; False when it was already (by any process): each event
        is sent once."""
        with self.tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO notifications(key, kind, subject, sent) VALUES (?,?,?,?)",
                (key, kind, subject, now if now is not None else time.time()),
            )
            return cur.rowcount == 1

    # --- decisions ----------------------------------------------------------------------------------------------
    def add_decision(self, name: str, action: str, reason: str, done: bool, ts: float | None = None) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO decisions(ts, name, action, reason, done) VALUES (?,?,?,?,?)",
                (ts if ts is not None else time.time(), name, action, reason, int(done)),
            )

    # --- the memory of machines (tether.machines) --------------------------------------------------------------
    def add_machine_outcome(self, outcome: Outcome) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO machine_outcomes(machine_id, provider, ts, outcome, why, instance, minutes_to_running,"
                " setup_minutes) VALUES (?,?,?,?,?,?,?,?)",
                (
                    outcome.machine_id,
                    outcome.provider,
                    outcome.ts,
                    outcome.outcome,
                    outcome.why,
                    outcome.instance,
                    outcome.minutes_to_running,
                    outcome.setup_minutes,
                ),
            )

    def machine_outcomes(self, provider: str = "vast") -> list[Outcome]:
        """Every remembered outcome (``forget`` hides a machine's past), oldest first."""
        rows = self._rows(
            "SELECT * FROM machine_outcomes WHERE provider=? AND forgotten=0 ORDER BY ts, seq", (provider,)
        )
        return [
            Outcome(
                machine_id=int(r["machine_id"]),
                provider=r["provider"],
                ts=float(r["ts"]),
                outcome=r["outcome"],
                why=r["why"],
                instance=r["instance"],
                minutes_to_running=r["minutes_to_running"],
                setup_minutes=r["setup_minutes"],
            )
            for r in rows
        ]

    def forget_machine(self, machine_id: int, provider: str = "vast") -> int:
        """Forget what happened on a machine (it is no longer avoided); how many outcomes were forgotten."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE machine_outcomes SET forgotten=1 WHERE provider=? AND machine_id=? AND forgotten=0",
                (provider, machine_id),
            )
            return int(cur.rowcount)

    def decisions(self) -> list[DecisionRecord]:
        return [
            DecisionRecord(r["seq"], r["ts"], r["name"], r["action"], r["reason"], bool(r["done"]))
            for r in self._rows("SELECT * FROM decisions ORDER BY ts, seq")
        ]


def is_shard_run(run_id: str) -> bool:
    """Whether ``run_id`` is a managed run's shard run (``<experiment>-<stamp>-<hex>-s<i>``)."""
    head, sep, tail = run_id.rpartition("-s")
    return bool(sep and head and tail.isdigit())


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _run(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        experiment=row["experiment"],
        host=row["host"],
        argv=json.loads(row["argv"]),
        cwd=row["cwd"],
        results_dir=row["results_dir"],
        log_path=row["log_path"],
        session=row["session"],
        started=row["started"],
        ended=row["ended"],
        exit_code=row["exit_code"],
        status=row["status"],
        completed=row["completed"],
        failed=row["failed"],
        total=row["total"],
        frozen=row["frozen"],
        project=row["project"],
    )


def _instance(row: sqlite3.Row) -> InstanceRecord:
    return InstanceRecord(
        name=row["name"],
        provider=row["provider"],
        instance_id=row["instance_id"],
        address=row["address"],
        remote_root=row["remote_root"],
        state=row["state"],
        dph_total=row["dph_total"],
        storage_dph=row["storage_dph"],
        created=row["created"],
        updated=row["updated"],
        meta=json.loads(row["meta"]),
    )


def entered_state_at(st: State, rec: InstanceRecord) -> float:
    """When the instance entered its current state, from the ledger (the first of the last run of equal states)."""
    since = rec.updated
    for event in reversed(st.events(rec.name)):
        if event.state != rec.state or (rec.instance_id and event.instance_id != rec.instance_id):
            break
        since = event.ts
    return since


def _managed_run_row(run: ManagedRunRecord) -> tuple[Any, ...]:
    out = []
    for name in MANAGED_RUN_FIELDS:
        value = getattr(run, name)
        out.append(json.dumps(value) if isinstance(value, list) else int(value) if isinstance(value, bool) else value)
    return tuple(out)


def _managed_shard_row(shard: ManagedShardRecord) -> tuple[Any, ...]:
    return tuple(int(v) if isinstance(v, bool) else v for v in (getattr(shard, name) for name in MANAGED_SHARD_FIELDS))


def _managed_run(row: sqlite3.Row) -> ManagedRunRecord:
    doc = dict(row)
    doc["args"] = json.loads(doc["args"])
    doc["hosts"] = json.loads(doc["hosts"])
    doc["cancel_requested"] = bool(doc["cancel_requested"])
    return ManagedRunRecord(**doc)


def _managed_shard(row: sqlite3.Row) -> ManagedShardRecord:
    doc = dict(row)
    doc["own_host"] = bool(doc["own_host"])
    return ManagedShardRecord(**doc)


def database_error(path: Path, exc: sqlite3.Error | OSError) -> StateError:
    """The sentence (and what to do) for a state database that cannot be used."""
    text = str(exc).rstrip(".") or type(exc).__name__
    name = str(getattr(exc, "sqlite_errorname", ""))
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "not a database" in text or "malformed" in text:
        return StateError(
            f"The state database {path} is damaged ({text}).",
            f"Move it aside (mv {path} {path}.damaged) and run the command again to start a new one; servers "
            "rented before are then unknown here, so check your Vast.ai console for any that still bill.",
        )
    full = name == "SQLITE_FULL" or "disk is full" in text or getattr(exc, "errno", None) == 28
    if not full and (name.startswith("SQLITE_IOERR") or "disk I/O error" in text):
        full = _nearly_full(path.parent)
    if full:
        return StateError(
            f"The state database {path} cannot be written: the disk holding it is full ({text}).",
            "Free space on that disk, then run the command again; what was recorded before is kept.",
        )
    if name == "SQLITE_BUSY" or "locked" in text:
        return StateError(
            f"The state database {path} is busy: another tether process held it for more than 30 seconds.",
            "Wait for the other command (a `sync` or `autopilot` tick) to finish, then run this one again.",
        )
    return StateError(
        f"The state database {path} cannot be used ({text}).",
        "Check the disk and the permissions of TETHER_HOME, then run the command again.",
    )


def _nearly_full(folder: Path) -> bool:
    try:
        fs = os.statvfs(folder)  # what shutil.disk_usage reads, without importing shutil on every command
        return fs.f_bavail * fs.f_frsize < 1 << 20
    except OSError:
        return False


def open_state(path: Path | None = None) -> State:
    return State(path if path is not None else tether_home() / "state.db")
