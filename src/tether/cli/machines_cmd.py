"""``tether machines``: the memory of machines (how each rental on a provider's machine went)."""

from __future__ import annotations

from typing import Any

import click

from tether import machines
from tether.cli.common import context, emit_json, json_option, new_table, out, say, status_text
from tether.errors import ConfigError
from tether.fmt import iso


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def machines_cmd(ctx: click.Context, as_json: bool) -> None:
    """The machines tether rented on, how each rental went, and which are avoided now (and why).

    Example: `tether machines`, then `tether machines forget 41234` to rent on that machine again.
    """
    if ctx.invoked_subcommand is not None:
        return
    with context(ctx) as c:
        outcomes = c.state.machine_outcomes()
        now = c.now()
        avoid = machines.avoided(outcomes, now, c.project.config.vast.avoid_days)
    rows = summary(outcomes, avoid)
    if as_json:
        emit_json({"machines": rows})
        return
    if not rows:
        say("No rentals remembered yet.")
        return
    table = new_table()
    for col in ("machine", "rentals", "passed", "last", "ready min", "avoided until", "why"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["machine_id"]),
            str(r["rentals"]),
            str(r["passed"]),
            status_text(r["last_outcome"]),
            "-" if r["ready_minutes"] is None else f"{r['ready_minutes']:.1f}",
            iso(r["avoided_until"]) if r["avoided_until"] else "-",
            r["why"] or "-",
        )
    out.print(table)


def summary(outcomes: list[machines.Outcome], avoid: dict[int, machines.Avoided]) -> list[dict[str, Any]]:
    by: dict[int, list[machines.Outcome]] = {}
    for o in outcomes:
        by.setdefault(o.machine_id, []).append(o)
    rows = []
    for machine_id, seen in sorted(by.items()):
        passed = [o for o in seen if o.outcome == "passed"]
        last = seen[-1]
        rows.append(
            {
                "machine_id": machine_id,
                "rentals": sum(1 for o in seen if o.outcome != "preempted"),
                "passed": len(passed),
                "last_outcome": last.outcome,
                "last_ts": last.ts,
                "ready_minutes": machines.ready_minutes(seen) if passed else None,
                "avoided_until": avoid[machine_id].until if machine_id in avoid else None,
                "why": avoid[machine_id].why if machine_id in avoid else last.why,
            }
        )
    return rows


@machines_cmd.command(name="forget")
@click.argument("machine_id", type=int)
@json_option
@click.pass_context
def forget(ctx: click.Context, machine_id: int, as_json: bool) -> None:
    """Forget what happened on a machine: it is no longer avoided."""
    with context(ctx) as c:
        n = c.state.forget_machine(machine_id)
        outcomes = c.state.machine_outcomes()
        avoid = machines.avoided(outcomes, c.now(), c.project.config.vast.avoid_days)
    if n == 0:
        raise ConfigError(f"No rental on machine {machine_id} is remembered.", "`tether machines` lists them.")
    if as_json:
        emit_json({"machines": summary(outcomes, avoid), "forgotten": {"machine_id": machine_id, "rentals": n}})
        return
    say(f"Forgot {n} rental(s) on machine {machine_id}; it may be rented again.")
