"""``tether plan``, ``cost``, ``down``, ``autopilot``, ``status``: where to run, what it costs, and no idle bills."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table

from tether import autopilot, cost, plan, rentals, runs
from tether.cli.agents_cmd import registry_argv
from tether.cli.common import bar, duration, emit_json, err, json_option, load_project, out, say, state
from tether.cli.remote_cmd import parse_every
from tether.config import Project
from tether.errors import AuthError, ConfigError, ProviderError, TetherError
from tether.providers import Offer, provider_for
from tether.renting import find_offers
from tether.targets import LOCAL, resolve


def _offer_lookup(project: Project) -> tuple[Any, list[str]]:
    """A function profile -> cheapest offer, or None (with a note) when Vast.ai cannot be asked."""
    notes: list[str] = []
    try:
        provider = provider_for(project)
    except AuthError as exc:
        return None, [f"costs unknown: {exc.message}"]

    def lookup(profile: str) -> Offer | None:
        try:
            spec = rentals.profile_for(project, profile)
            found = find_offers(provider, spec.offer_query(limit=5))
        except (AuthError, ProviderError) as exc:
            notes.append(f"{profile}: {exc.message}")
            return None
        return found[0] if found else None

    return lookup, notes


@click.command(name="plan")
@click.argument("experiments", nargs=-1)
@click.option("--local-busy", is_flag=True, help="This machine will be off or busy: rent even for API-only runs.")
@click.option("--offline", is_flag=True, help="Do not ask Vast.ai for today's prices.")
@json_option
@click.pass_context
def plan_cmd(ctx: click.Context, experiments: tuple[str, ...], local_busy: bool, offline: bool, as_json: bool) -> None:
    """Where each experiment should run and why, with its estimated duration and cost."""
    project = load_project(ctx)
    lookup, notes = (None, ["prices not asked (--offline)"]) if offline else _offer_lookup(project)
    entries = plan.plan_all(project, local_busy=local_busy, offer_lookup=lookup, names=list(experiments) or None)
    if as_json:
        emit_json({"plan": [e.to_json() for e in entries], "notes": notes})
        return
    table = Table(box=None, pad_edge=False, show_lines=False)
    for col in ("experiment", "where", "profile", "duration", "est. cost", "why"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(
            e.experiment,
            e.where,
            e.profile or "-",
            duration(e.est_duration_s),
            "-" if e.est_cost_usd is None else f"${e.est_cost_usd:.2f}",
            "; ".join(e.reasons),
        )
    out.print(table)
    for note in notes:
        say(f"note: {note}")


def _parse_since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"'{text}' is not a date.", "Write it as YYYY-MM-DD or YYYY-MM-DDTHH:MM.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _observe_all(project: Project, st: Any) -> list[str]:
    """Record the current state and price of every rented server in the ledger (best effort)."""
    live = [r for r in st.instances() if r.provider == rentals.PROVIDER and r.state != "gone"]
    if not live:
        return []
    problems: list[str] = []
    try:
        provider = provider_for(project)
    except TetherError as exc:
        return [f"could not ask the provider for current states: {exc.message}"]
    try:
        for rec in live:
            try:
                rentals.observe(project, st, rec.name, provider=provider)
            except TetherError as exc:
                problems.append(f"{rec.name}: {exc.message}")
    finally:
        provider.close()
    return problems


@click.command(name="cost")
@click.option("--since", default=None, help="Only money spent from this date (YYYY-MM-DD, UTC).")
@click.option("--no-refresh", is_flag=True, help="Use the ledger as recorded; do not ask the provider now.")
@json_option
@click.pass_context
def cost_cmd(ctx: click.Context, since: str | None, no_refresh: bool, as_json: bool) -> None:
    """Money spent per server, per experiment and per day; what burns now and the next 24 h projected."""
    project = load_project(ctx)
    start = _parse_since(since)
    with state() as st:
        problems = [] if no_refresh else _observe_all(project, st)
        now = time.time()
        events = st.events()
        led = cost.ledger(events, now, since=start)
        per_exp = cost.cost_by_experiment(events, st.runs(), now, since=start)
    doc = {**led.to_json(), "by_experiment": {k: round(v, 6) for k, v in sorted(per_exp.items())}, "problems": problems}
    if as_json:
        emit_json(doc)
        return
    table = Table(box=None, pad_edge=False, title="per server")
    for col in ("server", "state", "$/hr now", "running h", "idle-billed h", "spent"):
        table.add_column(col)
    for c in led.by_instance.values():
        table.add_row(
            c.name,
            c.state,
            f"{c.burn_dph:.4f}",
            f"{c.running_hours:.2f}",
            f"{c.billed_idle_hours:.2f}",
            f"${c.total_usd:.2f}",
        )
    out.print(table)
    if per_exp:
        out.print("per experiment: " + ", ".join(f"{k} ${v:.2f}" for k, v in sorted(per_exp.items())))
    if led.by_day:
        out.print("per day: " + ", ".join(f"{d} ${v:.2f}" for d, v in sorted(led.by_day.items())))
    out.print(
        f"total ${led.total_usd:.2f}; burning ${led.burn_dph:.4f}/hr now; next 24 h ~${led.projected_24h_usd:.2f}"
    )
    for line in [*led.warnings, *problems]:
        say(f"warning: {line}")


@click.command()
@click.argument("name")
@click.option(
    "--more-work/--no-more-work",
    default=None,
    help="Override the plan's answer to 'more experiments within 24 h?' (stop vs destroy).",
)
@json_option
@click.pass_context
def down(ctx: click.Context, name: str, more_work: bool | None, as_json: bool) -> None:
    """Apply the runbook's decision tree to NAME now: more work within 24 h → pull, stop; else → pull, verify,
    destroy. Nothing is destroyed unless its results were pulled and verified."""
    project = load_project(ctx)
    with state() as st:
        outcome = autopilot.down(project, st, name, more_work=more_work, say=say)
    if as_json:
        emit_json(outcome)
        return
    say(f"{name}: {outcome['action']} ({outcome['reason']})")


@click.command(name="autopilot")
@click.option("--every", default="5m", show_default=True, help="How often to apply the policies.")
@click.option("--once", is_flag=True, help="One pass, then exit (for cron).")
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@json_option
@click.pass_context
def autopilot_cmd(ctx: click.Context, every: str, once: bool, dry_run: bool, as_json: bool) -> None:
    """Apply the stop/destroy policies to every rented server, logging each decision with its reason.

    Run it in a tmux window on an always-on machine (or --once from cron). Idle servers are stopped after
    idle_stop_minutes when more work is planned, else destroyed; stopped ones are destroyed after
    destroy_after_idle_hours. Every stop and destroy is preceded by a verified pull.
    """
    period = parse_every(every)
    project = load_project(ctx)
    while True:
        with state() as st:
            results = autopilot.tick(project, st, dry_run=dry_run, say=say)
        if as_json:
            emit_json({"time": time.time(), "dry_run": dry_run, "decisions": results})
        elif not results:
            say("autopilot: no rented servers to look after.")
        if once:
            return
        time.sleep(period)  # the period the user asked for between passes


@click.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """One screen for the project: servers, runs, agents, money and warnings."""
    project = load_project(ctx)
    policy = project.config.policy
    warnings: list[str] = []
    with state() as st:
        warnings += _observe_all(project, st)
        now = time.time()
        led = cost.ledger(st.events(), now)
        servers: list[dict[str, Any]] = []
        hosts_with_runs = sorted({r.host for r in st.runs()})
        scans: dict[str, dict[str, Any]] = {}
        for name in hosts_with_runs:
            try:
                target = resolve(project, name, st)
                rented = st.instance(name)
                if rented is not None and rented.state != "running":
                    continue  # a stopped or destroyed server cannot be asked; its runs were pulled before
                scans[name] = runs.scan(target)
                runs.refresh(st, target, scans[name])
            except TetherError as exc:
                warnings.append(f"{name}: could not read runs ({exc.message})")
        for rec in st.instances():
            if rec.provider != rentals.PROVIDER or rec.state == "gone":
                continue
            facts = autopilot.gather(project, st, rec.name, now)
            view = facts.view
            warnings += facts.errors
            spent = led.by_instance.get(rec.name)
            last = st.last_pull(rec.name)
            idle_for = None if view.live_runs else now - (view.last_activity or view.since)
            servers.append(
                {
                    "name": rec.name,
                    "state": rec.state,
                    "dph_now": spent.burn_dph if spent else None,
                    "uptime_s": now - view.since if rec.state == "running" else None,
                    "accrued_usd": spent.total_usd if spent else 0.0,
                    "idle_s": idle_for,
                    "last_pull": last["ts"] if last else None,
                    "unsynced": view.unsynced,
                    "decision": cost.decide(view, now, policy).to_json(),
                }
            )
            if idle_for is not None and idle_for > 24 * 3600:
                warnings.append(f"{rec.name} has been idle {duration(idle_for)}: `tether down {rec.name}`.")
            if view.unsynced:
                warnings.append(f"{rec.name} holds results not pulled yet: `tether pull {rec.name}`.")
        agents_doc: dict[str, Any] = {}
        for name in scans:
            if name == LOCAL:
                continue
            try:
                target = resolve(project, name, st)
                result = target.transport.run(registry_argv(target, []), check=False)
                agents_doc[name] = json.loads(result.text())
            except (TetherError, ValueError) as exc:
                warnings.append(f"{name}: agents unreadable ({exc})")
    if policy.max_total_usd is not None and led.total_usd >= 0.8 * policy.max_total_usd:
        warnings.append(f"budget: ${led.total_usd:.2f} spent of max_total_usd ${policy.max_total_usd:.2f}.")
    if policy.max_hourly_usd is not None and led.burn_dph >= 0.8 * policy.max_hourly_usd:
        warnings.append(f"budget: burning ${led.burn_dph:.4f}/hr of max_hourly_usd ${policy.max_hourly_usd:.2f}.")
    run_rows = [dict(r, host=h) for h, doc in scans.items() for r in doc.get("runs", [])]
    doc = {"servers": servers, "runs": run_rows, "agents": agents_doc, "cost": led.to_json(), "warnings": warnings}
    if as_json:
        emit_json(doc)
        return
    if servers:
        table = Table(box=None, pad_edge=False, title="servers")
        for col in ("name", "state", "$/hr", "uptime", "spent", "idle for", "last pull", "unsynced", "autopilot"):
            table.add_column(col)
        for s in servers:
            table.add_row(
                s["name"],
                s["state"],
                f"{(s['dph_now'] or 0):.4f}",
                duration(s["uptime_s"]),
                f"${s['accrued_usd']:.2f}",
                duration(s["idle_s"]),
                f"{duration(now - s['last_pull'])} ago" if s["last_pull"] else "never",
                {True: "yes", False: "no", None: "?"}[s["unsynced"]],
                s["decision"]["action"],
            )
        out.print(table)
    if run_rows:
        table = Table(box=None, pad_edge=False, title="runs")
        for col in ("host", "run", "state", "progress", "done", "rate", "ETA"):
            table.add_column(col)
        for r in run_rows:
            done, total = int(r.get("completed") or 0), r.get("total")
            table.add_row(
                r["host"],
                r["id"],
                r["status"],
                bar(done, total),
                f"{done}/{total if total is not None else '?'}",
                f"{r['rate_per_s']:.2f}/s" if r.get("rate_per_s") else "-",
                duration(r.get("eta_s")) if r["status"] == "running" else "-",
            )
        out.print(table)
    for host, adoc in agents_doc.items():
        for e in adoc.get("entries", []):
            if e.get("live"):
                out.print(
                    f"agent {e['id']} on {host}: {e['experiment']} {float(e.get('gpu_gb') or 0):g} GB "
                    f"GPUs {','.join(str(g) for g in e.get('gpus') or []) or '-'}"
                )
    out.print(f"money: ${led.total_usd:.2f} spent, ${led.burn_dph:.4f}/hr now, next 24 h ~${led.projected_24h_usd:.2f}")
    if not servers and not run_rows:
        say("Nothing running. `tether plan` says where each experiment should run.")
    for w in warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")


def register(group: click.Group) -> None:
    for command in (plan_cmd, cost_cmd, down, autopilot_cmd, status):
        group.add_command(command)
