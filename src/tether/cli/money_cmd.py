"""``tether plan``, ``cost``, ``down``, ``autopilot``, ``status``: where to run, what it costs, and no idle bills."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import click

from tether import agents, autopilot, cost, plan, rentals
from tether import status as status_core
from tether.cli.common import (
    bar,
    context,
    duration,
    emit_json,
    json_option,
    load_project,
    managed_line,
    new_table,
    out,
    parse_every,
    say,
    status_text,
    warn,
)
from tether.config import Project
from tether.errors import AuthError, ConfigError, ProviderError
from tether.providers import Offer, provider_for
from tether.renting import find_offers


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
            found = find_offers(provider, spec.offer_query(limit=5), notes.append)
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
    project = load_project(ctx, needs="the [experiments] it plans")
    lookup, notes = (None, ["prices not asked (--offline)"]) if offline else _offer_lookup(project)
    entries = plan.plan_all(project, local_busy=local_busy, offer_lookup=lookup, names=list(experiments) or None)
    if as_json:
        emit_json({"plan": [e.to_json() for e in entries], "notes": notes})
        return
    table = new_table(show_lines=False)
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


@click.command(name="cost")
@click.option("--since", default=None, help="Only money spent from this date (YYYY-MM-DD, UTC).")
@click.option("--no-refresh", is_flag=True, help="Use the ledger as recorded; do not ask the provider now.")
@json_option
@click.pass_context
def cost_cmd(ctx: click.Context, since: str | None, no_refresh: bool, as_json: bool) -> None:
    """Money spent per server, per experiment and per day; what burns now and the next 24 h projected."""
    start = _parse_since(since)
    with context(ctx) as here:
        st = here.state
        problems = [] if no_refresh else status_core.observe_rented(here)
        now = here.now()
        events = st.event_log()
        led = cost.ledger(events, now, since=start)
        runs = st.runs()
        per_exp = cost.cost_by_experiment(events, runs, now, since=start)
        idle = cost.idle_by_instance(events, runs, now, since=start)
    doc = {
        **led.to_json(),
        "by_experiment": {k: round(v, 6) for k, v in sorted(per_exp.items())},
        "idle_by_server": {k: round(v, 6) for k, v in sorted(idle.items())},
        "problems": problems,
    }
    if as_json:
        emit_json(doc)
        return
    table = new_table(title="per server")
    # "idle" means one thing in both places: billed while no run was live (per server, and "(idle)" per experiment).
    for col in ("server", "state", "$/hr now", "running h", "storage-billed h", "spent", "of it idle"):
        table.add_column(col)
    for c in led.by_instance.values():
        table.add_row(
            c.name,
            status_text(c.state),
            f"{c.burn_dph:.4f}",
            f"{c.running_hours:.2f}",
            f"{c.billed_idle_hours:.2f}",
            f"${c.total_usd:.2f}",
            f"${idle.get(c.name, 0.0):.2f}",
        )
    out.print(table)
    if per_exp:
        shown = {cost.IDLE: "idle (no run live)"}
        out.print("per experiment: " + ", ".join(f"{shown.get(k, k)} ${v:.2f}" for k, v in sorted(per_exp.items())))
    if led.by_day:
        out.print("per day: " + ", ".join(f"{d} ${v:.2f}" for d, v in sorted(led.by_day.items())))
    out.print(
        f"total ${led.total_usd:.2f}; burning ${led.burn_dph:.4f}/hr now; next 24 h ~${led.projected_24h_usd:.2f}"
    )
    for line in [*led.warnings, *problems]:
        warn(line)


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
    """Apply the runbook's decision tree to NAME now: more work planned within [policy] more_work_within_hours
    → pull, stop; else → pull, verify, destroy. Nothing is destroyed unless its results were pulled and verified."""
    with context(ctx, needs="the results folders it pulls into first") as c:
        outcome = autopilot.down(c, name, more_work=more_work)
    if as_json:
        emit_json(outcome)
        return
    if outcome["action"] == "none":  # otherwise the act said what it did, once
        say(f"{name}: nothing to do ({outcome['reason']})")


@click.command(name="autopilot")
@click.option("--every", default="5m", show_default=True, help="How often to apply the policies.")
@click.option("--once", is_flag=True, help="One pass, then exit (for cron).")
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@json_option
@click.pass_context
def autopilot_cmd(ctx: click.Context, every: str, once: bool, dry_run: bool, as_json: bool) -> None:
    """Apply the stop/destroy policies to every rented server, logging each decision with its reason.

    Run it in a tmux window on an always-on machine (or --once from cron). An idle server is stopped, destroyed
    or kept by the expected cost of each, learned from the gaps between its runs (without a history: stopped after
    idle_stop_minutes when more work is planned, else destroyed); stopped ones are destroyed after
    destroy_after_idle_hours at the latest. Every stop and destroy is preceded by a verified pull.
    """
    period = parse_every(every)
    load_project(
        ctx, needs="the results folders it pulls into first"
    )  # a bad tether.toml is reported before the first pass
    while True:
        with context(ctx, needs="the results folders it pulls into first") as c:
            results = autopilot.tick(c, dry_run=dry_run)
        if as_json:
            emit_json({"time": time.time(), "dry_run": dry_run, "decisions": results})
        elif not results:
            say("autopilot: no rented servers to look after.")
        if once:
            return
        time.sleep(period)  # the period the user asked for between passes


@click.command()
@click.option("--all", "every_project", is_flag=True, help="Every project's runs, not only this project's.")
@json_option
@click.pass_context
def status(ctx: click.Context, every_project: bool, as_json: bool) -> None:
    """One screen for the project: servers, runs, agents, money and warnings."""
    from tether.scope import Scope

    with context(ctx) as c:
        rep = status_core.report(c, Scope.of(c.project, every_project))
    if as_json:
        emit_json(rep.to_json())
        return
    if (sentence := rep.scope.sentence()) is not None:
        say(sentence)
    now, led = rep.now, rep.ledger
    assert led is not None
    if rep.servers:
        table = new_table(title="servers")
        for col in ("name", "state", "$/hr", "uptime", "spent", "idle for", "last pull", "unsynced", "autopilot"):
            table.add_column(col)
        for s in rep.servers:
            table.add_row(
                s.name,
                status_text(s.state, f" ({duration(now - s.since)} ago)" if s.state in ("preempted", "queued") else ""),
                f"{(s.dph_now or 0):.4f}",
                duration(s.uptime_s),
                f"${s.accrued_usd:.2f}",
                duration(s.idle_s),
                f"{duration(now - s.last_pull)} ago" if s.last_pull else "never",
                {True: "yes", False: "no", None: "?"}[s.unsynced],
                s.decision.action,
            )
        out.print(table)
    if rep.runs:
        table = new_table(title="runs")
        for col in ("host", "run", "state", "progress", "done", "rate", "ETA"):
            table.add_column(col)
        for hr in rep.runs:
            r = hr.run
            table.add_row(
                hr.host,
                r.id,
                status_text(r.status),
                bar(r.completed, r.total),
                f"{r.completed}/{r.total if r.total is not None else '?'}",
                f"{r.rate_per_s:.2f}/s" if r.rate_per_s else "-",
                duration(r.eta_s) if r.status == "running" else "-",
            )
        out.print(table)
    for view in rep.managed:
        out.print(managed_line(view))
    for host, adoc in rep.agents.items():
        for e in agents.live_entries(adoc):
            out.print(
                f"agent {e.get('id')} on {host}: {e.get('experiment')} {_gb(e.get('gpu_gb'))} GB "
                f"GPUs {','.join(str(g) for g in e.get('gpus') or []) or '-'}"
            )
    out.print(f"money: ${led.total_usd:.2f} spent, ${led.burn_dph:.4f}/hr now, next 24 h ~${led.projected_24h_usd:.2f}")
    if not rep.servers and not rep.runs and not rep.managed:
        say("Nothing running. `tether plan` says where each experiment should run.")
    for w in rep.warnings:
        warn(w)


def _gb(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
