"""A managed run as ``progress``, ``status`` and the dashboard show it (from local state; no remote call)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tether import cost, vocab
from tether.context import Ctx
from tether.managed.local import controller_alive
from tether.state import ManagedShardRecord

# ------------------------------------------------------------------------------------------ views


@dataclass(frozen=True)
class ManagedView:
    """One managed run as ``progress``, ``status`` and the dashboard show it (from local state; no remote call)."""

    id: str
    experiment: str
    status: str
    reason: str | None
    shards: list[dict[str, Any]]
    completed: int
    total: int | None
    recoveries: int
    cost_usd: float
    started: float
    ended: float | None
    controller: bool
    results: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "experiment": self.experiment,
            "status": self.status,
            "reason": self.reason,
            "shards": self.shards,
            "completed": self.completed,
            "total": self.total,
            "recoveries": self.recoveries,
            "cost_usd": round(self.cost_usd, 6),
            "started": self.started,
            "ended": self.ended,
            "controller": self.controller,
            "results": self.results,
        }

    def line(self) -> str:
        """``A5-m1a2b3 running 1210/2000 · s0 …-s0-1 412/500 · s1 restarting (server was preempted) · 2
        recoveries · $0.1200``"""
        total = self.total if self.total is not None else "?"
        parts = [f"{self.id} {self.status} {self.completed}/{total}"]
        for s in self.shards:
            where = s["server"] or "-"
            done = f"{s['completed']}/{s['total'] if s['total'] is not None else '?'}"
            extra = f" ({s['reason']})" if s["reason"] and s["status"] not in ("running", "completed") else ""
            parts.append(f"s{s['shard']} {s['status']} {where} {done}{extra}".replace("\n", " "))
        parts.append(f"{self.recoveries} recoveries")
        parts.append(f"${self.cost_usd:.4f}")
        if not self.controller and self.status not in vocab.MANAGED_FINAL:
            parts.append(f"no controller: `tether run {self.experiment} --managed` picks it up")
        return " · ".join(parts)


def views(ctx: Ctx, *, finished_within_s: float = 86400.0) -> list[ManagedView]:
    """Every unfinished managed run and those that ended within ``finished_within_s``, oldest first."""
    st = ctx.state
    now = ctx.now()
    led = cost.ledger(st.event_log(), now)
    out: list[ManagedView] = []
    for rec in st.managed_runs():
        if rec.status in vocab.MANAGED_FINAL and rec.ended is not None and now - rec.ended > finished_within_s:
            continue
        shards = st.managed_shards(rec.id)
        prefix = rec.id + "-s"
        spent = sum(c.total_usd for name, c in led.by_instance.items() if name.startswith(prefix))
        totals = [s.total for s in shards]
        out.append(
            ManagedView(
                id=rec.id,
                experiment=rec.experiment,
                status=rec.status,
                reason=rec.reason,
                shards=[shard_json(s) for s in shards],
                completed=sum(s.completed for s in shards),
                total=sum(t for t in totals if t is not None) if all(t is not None for t in totals) else None,
                recoveries=sum(s.recoveries for s in shards),
                cost_usd=spent,
                started=rec.started,
                ended=rec.ended,
                controller=rec.status not in vocab.MANAGED_FINAL and controller_alive(rec.experiment),
                results=rec.results_path,
            )
        )
    return out


def shard_json(s: ManagedShardRecord) -> dict[str, Any]:
    """A shard as the views show it. ``synced`` is what came home: the last journal sync's count, and all it
    completed once its final pull verified."""
    return {
        "shard": s.shard,
        "status": s.status,
        "server": s.server,
        "own_host": s.own_host,
        "run": s.run,
        "completed": s.completed,
        "total": s.total,
        "synced": s.synced,
        "recoveries": s.recoveries,
        "reason": s.reason,
    }
