"""The dashboard's data: one observation of the project as one JSON document (``/api/snapshot``).

It reads the same core function as ``tether status`` (:func:`tether.status.report`, whose host scans are the ones
``tether progress`` makes: :func:`tether.runs.observe`), then adds what a page needs: runs grouped by experiment,
money per day and week,
the budget lines, and points of cost over time: one per observation of an instance in the ledger (the latest
:data:`HISTORY_POINTS`) and one for now, so a page left open for hours costs the same memory as a fresh one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tether import agents, cost, status
from tether.context import Ctx
from tether.scope import Scope
from tether.state import RunRecord

#: How many observations of the ledger the chart shows at most (the latest ones).
HISTORY_POINTS = 200


def ledger_points(
    events: Sequence[Mapping[str, Any]], run_records: Iterable[RunRecord], now: float
) -> list[dict[str, Any]]:
    """Cost so far at each recorded observation of an instance (the ledger's events), and at ``now``.

    Capped to the latest :data:`HISTORY_POINTS` moments.
    """
    moments = sorted({float(e["ts"]) for e in events if isinstance(e.get("ts"), (int, float)) and e["ts"] <= now})
    moments = [*moments[-(HISTORY_POINTS - 1) :], now]
    record_list = list(run_records)
    out: list[dict[str, Any]] = []
    for moment in moments:
        seen = [e for e in events if isinstance(e.get("ts"), (int, float)) and e["ts"] <= moment]
        led = cost.ledger(seen, moment)
        by_exp = cost.cost_by_experiment(seen, [r for r in record_list if r.started <= moment], moment)
        out.append(
            {
                "t": moment,
                "total_usd": round(led.total_usd, 6),
                "by_server": {c.name: round(c.total_usd, 6) for c in led.by_instance.values()},
                "by_experiment": {k: round(v, 6) for k, v in sorted(by_exp.items())},
            }
        )
    return out


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


def build(ctx: Ctx, scope: Scope | None = None) -> dict[str, Any]:
    """One observation of everything the page shows: the runs in ``scope`` (default: the project's; ``project``
    names it, or "all projects"), every server."""
    started = time.monotonic()
    report = status.report(ctx, scope)
    now = report.now
    hosts = report.hosts  # the scans status made: one round trip per host, not two
    by_experiment: dict[str, list[dict[str, Any]]] = {}
    host_rows: list[dict[str, Any]] = []
    for hp in hosts:
        host_rows.append({"host": hp.host, "error": hp.error, "runs": len(hp.runs)})
        for run in hp.runs:
            row = {**run.to_json(), "host": hp.host, "age_s": (now - run.started) if run.started else None}
            row.pop("checkpoints", None)
            by_experiment.setdefault(run.experiment or "?", []).append(row)
    policy = ctx.project.config.policy
    assert report.ledger is not None
    events = ctx.state.event_log()
    points = ledger_points(events, ctx.state.runs(), now)
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
        "runs": [{"experiment": k, "runs": v} for k, v in sorted(by_experiment.items())],
        "managed": [m.to_json() for m in report.managed],
        "hosts": host_rows,
        "servers": servers,
        "gpus": {host: _gpus(listing) for host, listing in report.agents.items()},
        "money": money(report.ledger, policy),
        "chart": points,
        "warnings": [{"text": w, "fix": _fix_of(w)} for w in report.warnings],
        "took_s": round(time.monotonic() - started, 3),
    }


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
