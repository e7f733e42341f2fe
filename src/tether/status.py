"""``tether status``: one observation of the whole project — servers, runs, agents, money and warnings.

It asks the provider for the state and price of every rented server (the same observation ``ls`` and ``cost``
make), scans once each host with runs in scope (this project's, or every project's: :mod:`tether.scope`), reads the
agent registries of the servers it scanned, and turns what it saw into warnings, each with the command that fixes
it. The thresholds are ``[policy]``'s: the idle warning fires past
``destroy_after_idle_hours``, the budget warnings at ``budget_warn_fraction`` of ``max_total_usd`` and
``max_hourly_usd``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tether import agents, autopilot, cost, managed, notify, rentals, runs, vocab, watchdogs
from tether.context import Ctx
from tether.errors import TetherError
from tether.fmt import duration, iso
from tether.hosts import LOCAL, Target
from tether.providers import provider_for
from tether.runs import HostProgress
from tether.scope import Scope


def observe_rented(ctx: Ctx) -> list[str]:
    """Record the current state and price of every rented server in the ledger; the problems met (best effort).

    Instances under this project's label that state does not know are adopted first (:func:`rentals.reconcile`),
    once this machine has rented anything (a reservation is written before every create).
    """
    known = [r for r in ctx.state.instances() if r.provider == rentals.PROVIDER]
    live = [r for r in known if r.state != "gone"]
    if not live:
        return []
    problems: list[str] = []
    try:
        provider = provider_for(ctx.project)
    except TetherError as exc:
        return [f"could not ask the provider for current states: {exc.message}"]
    try:
        try:
            for sentence in rentals.reconcile(ctx.project, ctx.state, provider):
                ctx.say(sentence)
        except TetherError as exc:
            problems.append(f"could not list this project's instances: {exc.message}")
        live = [
            r
            for r in ctx.state.instances()
            if r.provider == rentals.PROVIDER and r.state not in ("gone", "creating") and r.instance_id
        ]
        for rec in live:
            try:
                rentals.observe(ctx.project, ctx.state, rec.name, provider=provider)
                notify.announce_preempted(ctx, rec.name)  # said once, by whichever command sees it first
            except TetherError as exc:
                problems.append(f"{rec.name}: {exc.message}")
    finally:
        provider.close()
    return problems


@dataclass(frozen=True)
class ServerRow:
    name: str
    state: str
    since: float
    """When it entered ``state`` (first recorded), e.g. when it was preempted."""
    dph_now: float | None
    uptime_s: float | None
    accrued_usd: float
    idle_s: float | None
    last_pull: float | None
    unsynced: bool | None
    decision: cost.Decision

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "since": self.since,
            "dph_now": self.dph_now,
            "uptime_s": self.uptime_s,
            "accrued_usd": self.accrued_usd,
            "idle_s": self.idle_s,
            "last_pull": self.last_pull,
            "unsynced": self.unsynced,
            "decision": self.decision.to_json(),
        }


@dataclass(frozen=True)
class HostRun:
    host: str
    run: vocab.RunInfo

    def to_json(self) -> dict[str, Any]:
        return {**self.run.to_json(), "host": self.host}


@dataclass
class Report:
    now: float
    servers: list[ServerRow] = field(default_factory=list)
    runs: list[HostRun] = field(default_factory=list)
    hosts: list[HostProgress] = field(default_factory=list)
    """Every host with runs as it was read (``error`` when it could not be), what ``tether progress`` shows."""
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    ledger: cost.Ledger | None = None
    warnings: list[str] = field(default_factory=list)
    managed: list[managed.ManagedView] = field(default_factory=list)
    """Managed runs (unfinished, or ended in the last day), each with its shards, as local state has them."""
    scope: Scope = field(default_factory=lambda: Scope(None))
    """Whose runs ``runs``, ``hosts`` and ``managed`` hold (servers and money are every project's: servers are
    shared)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope.to_json(),
            "servers": [s.to_json() for s in self.servers],
            "runs": [r.to_json() for r in self.runs],
            "agents": self.agents,
            "cost": self.ledger.to_json() if self.ledger is not None else None,
            "warnings": self.warnings,
            "managed": [m.to_json() for m in self.managed],
        }


def budget_warnings(policy: Any, ledger: cost.Ledger) -> list[str]:
    """Warnings when spending nears ``[policy]``'s limits (pure)."""
    out: list[str] = []
    fraction = policy.budget_warn_fraction
    if policy.max_total_usd is not None and ledger.total_usd >= fraction * policy.max_total_usd:
        out.append(f"budget: ${ledger.total_usd:.2f} spent of max_total_usd ${policy.max_total_usd:.2f}.")
    if policy.max_hourly_usd is not None and ledger.burn_dph >= fraction * policy.max_hourly_usd:
        out.append(f"budget: burning ${ledger.burn_dph:.4f}/hr of max_hourly_usd ${policy.max_hourly_usd:.2f}.")
    return out


def report(
    ctx: Ctx, scope: Scope | None = None, *, listing: Callable[[Target], dict[str, Any]] | None = None
) -> Report:
    """Observe everything once (see the module docstring): the runs in ``scope`` (default: :meth:`Scope.of` the
    project), every server. ``listing`` reads a host's agent registry (default :func:`tether.agents.listing`; the
    dashboard passes one that reads them all at once, beside the scans)."""
    project, st = ctx.project, ctx.state
    scope = scope or Scope.of(project)
    policy = project.config.policy
    out = Report(now=0.0, scope=scope)
    out.warnings += observe_rented(ctx)
    now = out.now = ctx.now()
    out.ledger = led = cost.ledger(st.event_log(), now)
    scanned: list[str] = []
    for name in scope.hosts(st):
        rented = st.instance(name)
        if rented is not None and rented.state != "running":
            continue  # a stopped or destroyed server cannot be asked; its runs were pulled before
        try:
            target = runs.target_of(ctx, name)
            found = runs.observe(st, target, ctx=ctx)
        except TetherError as exc:
            out.warnings.append(f"{name}: could not read runs ({exc.message})")
            out.hosts.append(HostProgress(name, [], str(exc)))
            continue
        scanned.append(name)
        shown = scope.select(st, name, target.code_dir, found.runs)
        out.hosts.append(HostProgress(name, shown))
        out.runs += [HostRun(name, r) for r in shown]
    for rec in st.instances():
        if rec.provider != rentals.PROVIDER or rec.state == "gone":
            continue
        if rec.state == "creating" or not rec.instance_id:
            out.warnings.append(f"{rec.name} is being rented (or its rental was interrupted): `tether ls` adopts it.")
            continue
        facts = autopilot.gather(ctx, rec.name, now)
        view = facts.view
        out.warnings += facts.errors
        spent = led.by_instance.get(rec.name)
        last = st.last_pull(rec.name)
        idle_for = None if view.live_runs else now - (view.last_activity or view.since)
        out.servers.append(
            ServerRow(
                name=rec.name,
                state=rec.state,
                since=view.since,
                dph_now=spent.burn_dph if spent else None,
                uptime_s=now - view.since if rec.state == "running" else None,
                accrued_usd=spent.total_usd if spent else 0.0,
                idle_s=idle_for,
                last_pull=last.ts if last else None,
                unsynced=view.unsynced,
                decision=cost.decide(view, now, policy),
            )
        )
        stopped_by = watchdogs.describe(rec.meta, rec.state)
        if stopped_by:
            out.warnings.append(
                f"{rec.name} was {stopped_by}: its results stay on its disk; `tether start {rec.name}`."
            )
        if rec.state == "preempted":
            out.warnings.append(
                f"{rec.name} was preempted (outbid) at {iso(view.since)}: its disk is kept and billed; "
                f"`tether up {rec.name}` starts it again."
            )
        if idle_for is not None and idle_for > policy.destroy_after_idle_hours * 3600:
            out.warnings.append(f"{rec.name} has been idle {duration(idle_for)}: `tether down {rec.name}`.")
        if view.unsynced:
            out.warnings.append(f"{rec.name} holds results not pulled yet: `tether pull {rec.name}`.")
    for name in scanned:
        if name == LOCAL:
            continue
        try:
            out.agents[name] = (listing or agents.listing)(runs.target_of(ctx, name))
        except TetherError as exc:
            out.warnings.append(f"{name}: agents unreadable ({exc})")
    out.warnings += budget_warnings(policy, led)
    mine = scope.managed_ids(st)
    out.managed = [m for m in managed.views(ctx) if m.id in mine]
    for mrun in out.managed:
        if mrun.status not in vocab.MANAGED_FINAL and not mrun.controller:
            out.warnings.append(
                f"managed run {mrun.id} has no controller: `tether run {mrun.experiment} --managed` picks it up."
            )
    notify.announce_status(ctx, out)
    return out
