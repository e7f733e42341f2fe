"""``tether runs`` (past runs with the figures they ended with) and ``tether forget`` (their records)."""

from __future__ import annotations

from typing import Any

import click

from tether import history
from tether.cli.common import emit_json, json_option, load_project, new_table, out, say, state, status_text
from tether.fmt import duration, iso
from tether.scope import Scope


def _row(rec: Any) -> dict[str, Any]:
    return {
        "id": rec.id,
        "experiment": rec.experiment,
        "host": rec.host,
        "status": rec.status,
        "started": rec.started,
        "ended": rec.ended,
        "exit_code": rec.exit_code,
        "completed": rec.completed,
        "failed": rec.failed,
        "total": rec.total,
        "frozen": rec.frozen is not None,
    }


@click.command(name="runs")
@click.argument("experiment", required=False)
@click.option("--all", "every_project", is_flag=True, help="Every project's runs, not only this project's.")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
@click.pass_context
def runs_history(ctx: click.Context, experiment: str | None, every_project: bool, limit: int, as_json: bool) -> None:
    """Past runs, newest first, with the figures each ended with (frozen when it ended).

    Example: `tether runs exp --limit 10`.
    """
    scope = Scope.of(load_project(ctx), every_project)
    with state() as st:
        found = history.history(st, scope, experiment=experiment)[:limit]
    rows = [_row(r) for r in found]
    if as_json:
        emit_json({"runs": rows, "scope": scope.to_json()})
        return
    if (sentence := scope.sentence()) is not None:
        say(sentence)
    if not rows:
        say("No runs recorded" + ("" if scope.every else " for this project") + ".")
        return
    table = new_table()
    for col in ("run", "host", "state", "done", "failed", "started", "took", "exit"):
        table.add_column(col)
    for r in rows:
        done = f"{r['completed'] if r['completed'] is not None else '?'}/{r['total'] if r['total'] else '?'}"
        took = duration(r["ended"] - r["started"]) if r["ended"] else "-"
        table.add_row(
            r["id"],
            r["host"],
            status_text(r["status"]),
            done,
            str(r["failed"] if r["failed"] is not None else "-"),
            iso(r["started"]),
            took,
            "-" if r["exit_code"] is None else str(r["exit_code"]),
        )
    out.print(table)


@click.command(name="forget")
@click.argument("refs", nargs=-1, metavar="[RUN]...")
@click.option("--finished-before", "before", default=None, metavar="DATE", help="Every run that ended before DATE.")
@json_option
@click.pass_context
def forget(ctx: click.Context, refs: tuple[str, ...], before: str | None, as_json: bool) -> None:
    """Forget run records (never results: files here and on servers stay; a live run is never forgotten).

    Example: `tether forget --finished-before 2026-11-01`.
    """
    project = load_project(ctx)
    experiments = list(project.config.experiments) if project.found else []
    finished_before = history.parse_date(before) if before is not None else None
    with state() as st:
        chosen = history.to_forget(st, refs, finished_before, experiments)
        n = st.forget_runs([r.id for r in chosen])
    if as_json:
        emit_json({"forgotten": [r.id for r in chosen], "count": n})
        return
    say(f"Forgot {n} run record(s); their results stay where they are." if n else "No run matched; nothing forgotten.")
