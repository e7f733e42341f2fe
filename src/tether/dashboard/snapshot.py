"""The dashboard's data: one observation of the project as one JSON document (``/api/snapshot``).

Two depths, so that the page follows changes within seconds at the price of ``tether progress``:

- :func:`build`, the whole observation: the same core function as ``tether status`` (:func:`tether.status.report`:
  the provider's states and prices, one progress scan per host (the ones ``tether progress`` makes:
  :func:`tether.runs.observe`), the agent registries, what is not home yet);
- :func:`refresh`, what changes from second to second: one progress scan per host (exactly what ``tether progress``
  does: :func:`tether.runs.progress`) and what local state says (managed runs, money, the chart), laid over the
  last whole observation (its servers and warnings).

A server's agent registry is a second round trip: it is read beside the scans (a thread per server), and each at
most every :data:`REGISTRY_S`, a few servers per update (the :class:`Cache` keeps the listings between), so no
observation reads them all at once once the first has.

Then what a page needs: runs grouped by experiment, money per day and week, the budget lines, and points of cost
over time: one per observation of an instance in the ledger (the latest :data:`HISTORY_POINTS`) and one for now, so
a page left open for hours costs the same memory as a fresh one. The points before now change only when the ledger
does: a :class:`Cache` keeps them between observations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tether import agents, cost, managed, runs, status
from tether.context import Ctx
from tether.errors import TetherError
from tether.hosts import LOCAL, Target
from tether.scope import Scope
from tether.state import RunRecord

#: How many observations of the ledger the chart shows at most (the latest ones).
HISTORY_POINTS = 200
#: How old a server's agent registry (its GPUs' reservations) may grow on the page: each is read again after this,
#: a few servers per update, beside that update's scans.
REGISTRY_S = 30.0

Listing = dict[str, Any] | TetherError


@dataclass
class Cache:
    """What one observation keeps for the next: the chart's points before now and the ledger they were made of
    (its size and ends: the points are made again only when it changed), and each server's agent registry listing
    (or why it could not be read) with when it was read (monotonic seconds)."""

    key: tuple[Any, ...] | None = None
    points: list[dict[str, Any]] = field(default_factory=list)
    listings: dict[str, tuple[float, Listing]] = field(default_factory=dict)


def _read_listing(target: Target) -> Listing:
    try:
        return agents.listing(target)
    except TetherError as exc:
        return exc


def _read_registries(
    pool: ThreadPoolExecutor, targets: Sequence[Target], cache: Cache, limit: int, older_than: float = REGISTRY_S
) -> dict[str, Future[Listing]]:
    """Start reading (in ``pool``) the registries never read, then the oldest ones read ``older_than`` seconds
    ago or more, at most ``limit`` of the latter."""
    now = time.monotonic()
    never = [t for t in targets if t.name not in cache.listings]
    stale = sorted(
        (t for t in targets if t.name in cache.listings and now - cache.listings[t.name][0] >= older_than),
        key=lambda t: cache.listings[t.name][0],
    )
    return {t.name: pool.submit(_read_listing, t) for t in [*never, *stale[: max(0, limit)]]}


def _store(cache: Cache, reading: Mapping[str, Future[Listing]], targets: Sequence[Target]) -> None:
    for name, future in reading.items():
        cache.listings[name] = (time.monotonic(), future.result())
    wanted = {t.name for t in targets}
    for name in [n for n in cache.listings if n not in wanted]:
        del cache.listings[name]  # a server no longer scanned


def _point(moment: float, events: Sequence[Mapping[str, Any]], records: list[RunRecord]) -> dict[str, Any]:
    seen = [e for e in events if isinstance(e.get("ts"), (int, float)) and e["ts"] <= moment]
    led = cost.ledger(seen, moment)
    by_exp = cost.cost_by_experiment(seen, [r for r in records if r.started <= moment], moment)
    return {
        "t": moment,
        "total_usd": round(led.total_usd, 6),
        "by_server": {c.name: round(c.total_usd, 6) for c in led.by_instance.values()},
        "by_experiment": {k: round(v, 6) for k, v in sorted(by_exp.items())},
    }


def ledger_points(
    events: Sequence[Mapping[str, Any]], run_records: Iterable[RunRecord], now: float, cache: Cache | None = None
) -> list[dict[str, Any]]:
    """Cost so far at each recorded observation of an instance (the ledger's events), and at ``now``.

    Capped to the latest :data:`HISTORY_POINTS` moments. With a ``cache``, the points before now are made again
    only when the ledger or the runs changed (each point sums the ledger up to its moment).
    """
    record_list = list(run_records)
    stamps = [float(e["ts"]) for e in events if isinstance(e.get("ts"), (int, float))]
    key = (len(stamps), min(stamps, default=None), max(stamps, default=None), len(record_list))
    if cache is not None and cache.key == key and all(p["t"] <= now for p in cache.points):
        history = cache.points
    else:
        moments = sorted({t for t in stamps if t <= now})[-(HISTORY_POINTS - 1) :]
        history = [_point(moment, events, record_list) for moment in moments]
        if cache is not None:
            cache.key, cache.points = key, history
    return [*history, _point(now, events, record_list)]


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def money(ledger: cost.Ledger, policy: Any) -> dict[str, Any]:
    """Spent today / this week / total, burn now, the next 24 h, and the budget limits (pure)."""
    today = _day(ledger.now)
    week_start = (datetime.fromtimestamp(ledger.now, UTC) - timedelta(days=6)).strftime("%Y-%m-%d")
    return {
        "total_usd": round(ledger.total_usd, 6),
        "today_usd": round(ledger.by_day.get(today, 0.0), 6),
        "week_usd": round(sum(v for d, v in ledger.by_day.items() if d >= week_start), 6),
        "burn_dph": round(ledger.burn_dph, 6),
        "projected_24h_usd": round(ledger.projected_24h_usd, 6),
        "max_total_usd": policy.max_total_usd,
        "max_hourly_usd": policy.max_hourly_usd,
    }


def _gpus(listing: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per GPU: total memory, what live agents reserve on it, and what is used outside the registry."""
    raw = listing.get("gpus")
    gpus: list[Any] = raw if isinstance(raw, list) else []
    live = agents.live_entries(dict(listing))
    out: list[dict[str, Any]] = []
    for gpu in gpus:
        if not isinstance(gpu, dict):
            continue
        index = gpu.get("index")
        holders = [e for e in live if index in (e.get("gpus") or [])]
        reserved = [
            {"id": str(e.get("id")), "gb": e.get("gpu_gb") if isinstance(e.get("gpu_gb"), (int, float)) else None}
            for e in holders
        ]
        out.append(
            {
                "index": index,
                "total_gb": gpu.get("total_gb"),
                "used_gb": gpu.get("used_gb"),
                "reserved_gb": gpu.get("reserved_gb"),
                "outside_registry_gb": gpu.get("outside_gb"),
                "free_gb": gpu.get("free_gb"),
                "reserved": reserved,
            }
        )
    return out


def _registry_targets(ctx: Ctx, scope: Scope) -> list[Target]:
    """The hosts whose agent registry the whole observation reads: those it scans (hosts with runs, not this
    machine, not a rented server known not to be running), in ``scope``."""
    out: list[Target] = []
    for name in sorted(set(scope.hosts(ctx.state)) - {LOCAL}):
        rented = ctx.state.instance(name)
        if rented is not None and rented.state != "running":
            continue
        try:
            out.append(runs.target_of(ctx, name))
        except TetherError:
            continue  # the report says why
    return out


def _runs_part(hosts: Sequence[runs.HostProgress], now: float) -> dict[str, Any]:
    by_experiment: dict[str, list[dict[str, Any]]] = {}
    host_rows: list[dict[str, Any]] = []
    for hp in hosts:
        if hp.server_state is not None:
            continue  # a rented server known not to be running: the servers table says so
        error = hp.error
        host_rows.append({"host": hp.host, "error": error, "runs": len(hp.runs)})
        for run in hp.runs:
            row = {**run.to_json(), "host": hp.host, "age_s": (now - run.started) if run.started else None}
            row.pop("checkpoints", None)
            by_experiment.setdefault(run.experiment or "?", []).append(row)
    return {"runs": [{"experiment": k, "runs": v} for k, v in sorted(by_experiment.items())], "hosts": host_rows}


def _local_part(
    ctx: Ctx, now: float, cache: Cache | None, mviews: list[managed.ManagedView] | None, scope: Scope
) -> dict[str, Any]:
    """What local state alone says: the managed runs in ``scope``, money, the chart (no remote call)."""
    events = ctx.state.event_log()
    if mviews is None:
        mine = scope.managed_ids(ctx.state)
        mviews = [m for m in managed.views(ctx) if m.id in mine]
    return {
        "managed": [m.to_json() for m in mviews],
        "money": money(cost.ledger(events, now), ctx.project.config.policy),
        "chart": ledger_points(events, ctx.state.runs(), now, cache),
    }


def build(ctx: Ctx, cache: Cache | None = None, scope: Scope | None = None) -> dict[str, Any]:
    """The whole observation (see the module docstring): everything the page shows, the runs in ``scope`` (default:
    the project's; ``project`` names it, or "all projects"), every server. The agent registries are read beside
    the scans; with a ``cache``, only those never read or not read for twice :data:`REGISTRY_S`."""
    started = time.monotonic()
    cache = cache if cache is not None else Cache()
    scope = scope or Scope.of(ctx.project)
    targets = _registry_targets(ctx, scope)
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="tether-registry") as pool:
        # the updates between keep the others fresh; those they did not (updates as rare as this) are read now
        reading = _read_registries(pool, targets, cache, len(targets), 2 * REGISTRY_S)

        def listing(target: Target) -> dict[str, Any]:
            future = reading.get(target.name)
            if future is not None:
                found = future.result()
            elif target.name in cache.listings:
                found = cache.listings[target.name][1]
            else:
                found = _read_listing(target)
            if isinstance(found, TetherError):
                raise found
            return found

        report = status.report(ctx, scope, listing=listing)
        _store(cache, reading, targets)
    now = report.now
    policy = ctx.project.config.policy
    servers = []
    for server in report.servers:
        doc = server.to_json()
        doc["results_not_home"] = server.unsynced is not False and server.state != "gone"
        doc["next"] = _next_action(server, policy)
        servers.append(doc)
    return {
        "time": now,
        "project": report.scope.label,
        "scope": report.scope.to_json(),
        **_runs_part(report.hosts, now),
        **_local_part(ctx, now, cache, report.managed, report.scope),
        "servers": servers,
        "gpus": {host: _gpus(listing) for host, listing in report.agents.items()},
        "warnings": [{"text": w, "fix": _fix_of(w)} for w in report.warnings],
        "took_s": round(time.monotonic() - started, 3),
    }


def refresh(
    ctx: Ctx, last: Mapping[str, Any], cache: Cache | None = None, *, every_s: float = 5.0, scope: Scope | None = None
) -> dict[str, Any]:
    """The runs (one progress scan per host: what ``tether progress`` does) and what local state says, laid over
    ``last``, the latest whole observation (:func:`build`): its servers and warnings stand until the next. With a
    ``cache``, the agent registries older than :data:`REGISTRY_S` are read beside the scans, spread over the updates
    (made every ``every_s``): a few servers each time, never all at once."""
    started = time.monotonic()
    scope = scope or Scope.of(ctx.project)
    gpus = dict(last.get("gpus") or {})
    if cache is None:
        hosts = runs.progress(ctx, scope=scope)
    else:
        targets = _registry_targets(ctx, scope)
        per_update = math.ceil(len(targets) * every_s / REGISTRY_S)
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="tether-registry") as pool:
            reading = _read_registries(pool, targets, cache, per_update)
            hosts = runs.progress(ctx, scope=scope)
            _store(cache, reading, targets)
        scanned = {hp.host for hp in hosts if hp.error is None}
        gpus = {
            name: _gpus(found)
            for name, (_at, found) in sorted(cache.listings.items())
            if name in scanned and isinstance(found, dict)
        }
    now = ctx.now()
    return {
        **last,
        "time": now,
        "project": scope.label,
        "scope": scope.to_json(),
        **_runs_part(hosts, now),
        **_local_part(ctx, now, cache, None, scope),
        "gpus": gpus,
        "took_s": round(time.monotonic() - started, 3),
    }


def refresh_local(
    ctx: Ctx, last: Mapping[str, Any], cache: Cache | None = None, scope: Scope | None = None
) -> dict[str, Any]:
    """What local state says (the managed runs in ``scope``, money, the chart), laid over ``last``: no remote
    call."""
    now = ctx.now()
    return {**last, "time": now, **_local_part(ctx, now, cache, None, scope or Scope.of(ctx.project))}


def _next_action(row: status.ServerRow, policy: Any) -> dict[str, Any]:
    """What the autopilot will do with a server next, and in about how long (None: now or unknown)."""
    decision = row.decision
    if decision.action != "none":
        return {"action": decision.action, "in_s": 0, "reason": decision.reason}
    in_s = None
    if row.state == "running" and row.idle_s is not None:
        in_s = max(0.0, policy.idle_stop_minutes * 60 - row.idle_s)
    return {"action": "none", "in_s": in_s, "reason": decision.reason}


def _fix_of(warning: str) -> str | None:
    """The command a warning names (between backticks), for the page to show beside it."""
    if "`" in warning:
        parts = warning.split("`")
        if len(parts) >= 3:
            return parts[1]
    return None
