"""``tether offers``, ``ls``, ``stop``, ``start``, ``destroy``: rented servers (Vast.ai)."""

from __future__ import annotations

import math
import time
from typing import Any

import click

from tether import autopilot, machines, rentals, watchdogs
from tether import status as status_core
from tether.cli.common import (
    context,
    duration,
    emit_json,
    json_option,
    load_project,
    new_table,
    out,
    say,
    state,
    status_text,
    warn,
)
from tether.cost import rate_kind
from tether.errors import ConfigError
from tether.fmt import iso
from tether.plan import estimate_duration
from tether.profiles import estimate_cost
from tether.providers import provider_for
from tether.renting import rental_cost
from tether.state import entered_state_at


@click.command()
@click.option("--profile", default=None, help="A GPU profile: api, inference, finetune, or one from tether.toml.")
@click.option("--query", default=None, help="A search in Vast.ai's query language, e.g. 'gpu_ram>=24 num_gpus=1'.")
@click.option("--order", default=None, help="Sort order, e.g. 'dph+' (cheapest first) or 'dph+,reliability-'.")
@click.option("--type", "offer_type", type=click.Choice(["on-demand", "bid", "reserved"]), default=None)
@click.option("--disk", "disk_gb", type=float, default=None, help="Disk GB to rent with (it changes the $/hr).")
@click.option("--limit", type=int, default=10, show_default=True)
@click.option(
    "--for",
    "for_exp",
    default=None,
    metavar="EXP",
    help="Estimate the cost of running EXP on each offer, and say which ones `up` would skip now.",
)
@json_option
@click.pass_context
def offers(
    ctx: click.Context,
    profile: str | None,
    query: str | None,
    order: str | None,
    offer_type: str | None,
    disk_gb: float | None,
    limit: int,
    for_exp: str | None,
    as_json: bool,
) -> None:
    """Live offers, cheapest first, with $/hr including the disk asked for (no project needed, but --for)."""
    project = load_project(ctx, needs=f"the [experiments.{for_exp}] table that --for names" if for_exp else None)
    hours: float | None = None
    if for_exp:
        exp = project.experiment(for_exp)
        seconds = estimate_duration(exp)
        if seconds is None:
            raise ConfigError(
                f"Experiment {for_exp!r} has no items or item_seconds, so its cost cannot be estimated.",
                f"Add items = N and item_seconds = S under [experiments.{for_exp}].",
            )
        hours = seconds / 3600
        if profile is None and query is None:
            from tether.profiles import profile_for_kind

            profile = profile_for_kind(exp.kind) or "api"
    spec = rentals.profile_for(project, profile or "api", disk_gb=disk_gb, offer_type=offer_type)
    with provider_for(project) as provider:
        found = rentals.search(provider, spec, query=query, order=order, limit=limit, warn=warn)
    memory: list[machines.Outcome] = []
    if hours is not None:
        with state() as st:
            memory = st.machine_outcomes()
    price_for = rentals.bid_pricing(spec, found)
    skips = rentals.would_skip(project, memory, found, time.time()) if hours is not None else {}
    rows = []
    for o in found[:limit]:
        row = o.row()
        row["skipped_because"] = skips[o.id].words if o.id in skips else None
        row["est_cost_usd"] = estimate_cost(o, hours) if hours is not None else None
        price = rental_cost(o, price_for(o) if price_for else None)
        mine = [m for m in memory if m.machine_id == o.machine_id]
        expected = machines.expected_cost(price, hours or 0.0, o.reliability, mine, interruptible=price_for is not None)
        row["expected_usd"] = round(expected, 6) if hours is not None and math.isfinite(expected) else None
        rows.append(row)
    if hours is not None and order is None:
        # What `up` and managed runs rent by: the expected cost of the work (price, reliability, the machine's
        # record); --order keeps the provider's plain order.
        rows.sort(key=lambda r: (r["expected_usd"] is None, r["expected_usd"] or 0.0, r["dph_total"]))
    if as_json:
        emit_json(
            {
                "profile": spec.name,
                "query": query or spec.query,
                "disk_gb": spec.min_disk_gb,
                "hours": hours,
                "offers": rows,
            }
        )
        return
    table = new_table()
    cols = ["offer", "$/hr", "GPU", "VRAM", "CPU", "RAM", "reliab.", "location"]
    if hours is not None:
        cols += [f"{for_exp} (~{hours:.1f} h)", "expected"]
    for c in cols:
        table.add_column(c)
    for r in rows:
        gpu = f"{r['num_gpus']}x {r['gpu_name']}" if r["num_gpus"] else "-"
        cells = [
            str(r["id"]),
            f"{r['dph_total']:.4f}",
            gpu,
            f"{r['gpu_ram_gb']:.1f} GB",
            f"{r['cpu_cores']:.0f}",
            f"{r['cpu_ram_gb']:.0f} GB",
            f"{r['reliability']:.3f}",
            str(r.get("geolocation") or "-"),
        ]
        if hours is not None:
            cells.append(f"${r['est_cost_usd']:.2f}" if r["est_cost_usd"] >= 0.01 else f"${r['est_cost_usd']:.4f}")
            cells.append("-" if r["expected_usd"] is None else f"${r['expected_usd']:.4f}")
        table.add_row(*cells)
    out.print(table)
    for r in rows:
        if r["skipped_because"]:
            say(f"`tether up` would skip offer {r['id']}: {r['skipped_because']}.")
    ranked = "by expected cost (price, reliability, the machine's record)" if hours and not order else "cheapest first"
    say(f"{len(rows)} offers for {query or spec.query!r} with {spec.min_disk_gb:g} GB disk, {ranked}.")


@click.command(name="ls")
@click.option("--refresh/--no-refresh", default=True, help="Ask the provider for current states (default).")
@click.option("--all", "every", is_flag=True, help="Also the servers that are gone (destroyed or vanished).")
@json_option
@click.pass_context
def ls_cmd(ctx: click.Context, refresh: bool, every: bool, as_json: bool) -> None:
    """Servers tether rented: state, $/hr, address, age."""
    rows: list[dict[str, Any]] = []
    with context(ctx) as c:
        problems = status_core.observe_rented(c) if refresh else []
        now = c.now()
        rented = [r for r in c.state.instances() if r.provider == rentals.PROVIDER]
        hidden = 0 if every else sum(1 for r in rented if r.gone)
        for r in (r for r in rented if every or not r.gone):
            kind = rate_kind(r.state)
            hourly = r.dph_total if kind == "full" else r.storage_dph if kind == "storage" else 0.0
            rows.append(
                {
                    "name": r.name,
                    "instance_id": r.instance_id,
                    "state": r.state,
                    "since": entered_state_at(c.state, r),
                    "address": r.address,
                    "dph_total": r.dph_total,
                    "storage_dph": r.storage_dph,
                    "hourly_now": hourly,
                    "created": r.created,
                    "age_s": now - r.created,
                    "stopped_by": watchdogs.describe(r.meta, r.state),
                    "machine_id": r.meta.get("machine_id"),
                    "preflight": r.meta.get("preflight"),
                    "offer_type": r.meta.get("offer_type") or "on-demand",
                    "bid_usd": r.meta.get("bid_usd"),
                    **{k: r.meta.get(k) for k in ("profile", "gpu_name", "num_gpus")},
                }
            )
    for problem in problems:
        warn(problem)
    if as_json:
        emit_json({"instances": rows})
        return
    gone_note = f" ({hidden} gone: `tether ls --all`)" if hidden else ""
    if not rows:
        say(f"No rented servers{gone_note}. Rent one with `tether up NAME --profile api`.")
        return
    table = new_table()
    for col in ("name", "instance", "state", "$/hr now", "GPU", "address", "age"):
        table.add_column(col)
    for row in rows:
        gpu = f"{row['num_gpus']}x {row['gpu_name']}" if row.get("num_gpus") else "-"
        since = row["state"] in ("preempted", "queued", "frozen", "exited", "unknown")
        state_cell = status_text(row["state"], f" ({duration(now - row['since'])} ago)" if since else "")
        price = f"{(row['hourly_now'] or 0):.4f}"
        if row["bid_usd"] is not None:
            price += f" (bid {row['bid_usd']:.4f})"
        table.add_row(
            row["name"],
            str(row["instance_id"]),
            state_cell,
            price,
            gpu,
            row["address"] or "-",
            duration(row["age_s"]),
        )
    out.print(table)
    if hidden:
        say(f"{hidden} gone server(s) not shown: `tether ls --all`.")
    for row in rows:
        if row["stopped_by"]:
            say(f"{row['name']} was {row['stopped_by']}: its results stay on its disk; `tether start {row['name']}`.")
        if row["state"] == "preempted":
            say(
                f"{row['name']} was preempted (outbid) at {iso(row['since'])}: its disk is kept and billed; "
                f"`tether up {row['name']}` starts it again."
            )


@click.command()
@click.argument("name")
@click.option("--no-pull", is_flag=True, help="Do not pull results before stopping.")
@json_option
@click.pass_context
def stop(ctx: click.Context, name: str, no_pull: bool, as_json: bool) -> None:
    """Stop a rented server: the GPU stops billing, the disk is kept (and billed as storage).

    Results are pulled and verified first, since a stopped server cannot be read without starting it again: if
    that fails, nothing is stopped (exit 3). Refused while a run or agent is alive on it.
    """
    with context(ctx, needs=None if no_pull else "the results folders it pulls into first") as c:
        new, report = autopilot.stop(c, name, no_pull=no_pull)
    pulled = report.to_json() if report is not None else None
    doc = {
        "name": name,
        "instance_id": new.instance_id,
        "state": new.state,
        "storage_dph": new.storage_dph,
        "pull": pulled,
    }
    if as_json:
        emit_json(doc)
        return
    say(
        f"{name} is {new.state}; it now costs ${(new.storage_dph or 0):.4f}/hr for its disk. "
        f"`tether start {name}` resumes it."
    )


@click.command()
@click.argument("name")
@json_option
@click.pass_context
def start(ctx: click.Context, name: str, as_json: bool) -> None:
    """Start a stopped rented server and re-read its SSH address (it changes across a restart)."""
    with context(ctx) as c:
        doc = rentals.start(c.project, c.state, name, say=say)
        learned = watchdogs.learn_stop(c, name)
    if learned:
        say(learned)
        doc["stopped_by_watchdog"] = learned
    if as_json:
        emit_json({"name": name, **doc})


@click.command()
@click.argument("name")
@click.option("--discard-unsynced", is_flag=True, help="Destroy even if results on it are not verified home.")
@json_option
@click.pass_context
def destroy(ctx: click.Context, name: str, discard_unsynced: bool, as_json: bool) -> None:
    """Destroy a rented server (irreversible; safe to run twice).

    Refused (exit code 3) while a run is alive on it, or while it holds results newer than the last verified pull,
    unless --discard-unsynced.
    """
    with context(ctx, needs="the results folders it pulls into first") as c:
        new, facts = autopilot.destroy(c, name, discard_unsynced=discard_unsynced)
    if facts is not None:
        for note in facts.notes:
            say(note)
    doc: dict[str, Any] = {
        "name": name,
        "instance_id": new.instance_id,
        "state": new.state,
        "already": facts is None,
        "unsynced_files": facts.unsynced_files if facts is not None else [],
    }
    if as_json:
        emit_json(doc)
        return
    say(f"{name} was destroyed already." if doc["already"] else f"{name} is destroyed; it no longer bills.")
