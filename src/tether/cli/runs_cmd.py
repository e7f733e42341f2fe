"""``tether init``, ``run``, ``progress``, ``logs``, ``attach``, ``cancel``."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from tether import config, runs
from tether.cli.common import bar, duration, emit_json, err, json_option, load_project, out, say, state
from tether.errors import ConfigError, TetherError
from tether.targets import LOCAL, Target, resolve
from tether.transport import tmux


@click.command()
@click.option("--name", default=None, help="Project name (default: this folder's name).")
@click.option("--print", "to_stdout", is_flag=True, help="Print the starter file instead of writing it.")
@click.option("--force", is_flag=True, help="Overwrite an existing tether.toml.")
def init(name: str | None, to_stdout: bool, force: bool) -> None:
    """Write a commented starter tether.toml in the current folder."""
    project_name = name or "".join(c if c.isalnum() or c in "._-" else "-" for c in Path.cwd().name) or "project"
    text = config.starter(project_name)
    if to_stdout:
        click.echo(text, nl=False)
        return
    path = Path.cwd() / config.CONFIG_NAME
    if path.exists() and not force:
        raise ConfigError(f"{path} exists already; nothing was changed.", "Use --force to overwrite it.")
    path.write_text(text, encoding="utf-8")
    say(f"Wrote {path}. Edit [experiments.*], then `tether run NAME --local`.")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("experiment")
@click.option("--local", is_flag=True, help="Run on this machine.")
@click.option("--on", "on", metavar="HOST", default=None, help="Run on a configured host or rented server.")
@click.option(
    "--wait-gpu",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Queue this long for GPU room on the server instead of failing at once.",
)
@click.option("--follow", is_flag=True, help="Stay and show progress until the run ends (Ctrl-C leaves it running).")
@click.option("--provision", is_flag=True, help="Allow renting a server if the plan says so (costs money).")
@click.option("--local-busy", is_flag=True, help="Treat this machine as off or busy when following the plan.")
@json_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(
    ctx: click.Context,
    experiment: str,
    local: bool,
    on: str | None,
    wait_gpu: float | None,
    follow: bool,
    provision: bool,
    local_busy: bool,
    as_json: bool,
    args: tuple[str, ...],
) -> None:
    """Start EXPERIMENT detached (in tmux) and print its run id at once.

    Arguments after `--` are appended to the experiment's command. Without --local or --on, tether follows
    `tether plan` for the experiment.
    """
    project = load_project(ctx)
    if local and on:
        raise click.UsageError("Give either --local or --on HOST, not both.")
    extra = list(args[1:] if args[:1] == ("--",) else args)
    project.experiment(experiment)
    with state() as st:
        if local:
            where = LOCAL
        elif on:
            where = on
        else:
            where = _follow_plan(ctx, project, st, experiment, provision, local_busy)
        target = resolve(project, where, st)
        if not target.local:
            from tether import remote

            remote.ensure_pushed(project, st, target)
        started = runs.start(project, st, target, experiment, extra, wait_s=wait_gpu)
    rec = started.run
    final = _follow(project, rec.id, rec.host) if follow else None
    if as_json:
        emit_json(
            {
                "run_id": rec.id,
                "experiment": rec.experiment,
                "host": rec.host,
                "status": started.status,
                "log": rec.log_path,
                "session": rec.session,
                "final": final,
            }
        )
        return
    click.echo(rec.id)
    if final is not None:
        done = f"{final.get('completed')}/{final.get('total') if final.get('total') is not None else '?'}"
        say(f"Run {rec.id} {final['status']} ({done} items, exit code {final.get('exit_code')}).")
        if final["status"] != "completed":
            raise TetherError(f"Run {rec.id} {final['status']}.", f"See `tether logs {rec.id}`.")
        return
    say(
        f"Started {experiment} on {rec.host} as {rec.id} ({started.status}). "
        f"Follow it with `tether progress`, `tether logs {rec.id} -f` or `tether attach {rec.id}`."
    )


def _follow(project: config.Project, run_id: str, host: str) -> dict[str, Any]:
    """Poll the run's target until the run ends, showing a progress line on stderr."""
    with state() as st:
        target = resolve(project, host, st)
        period = 0.5 if target.local else 5.0
        with err.status(f"{run_id}: starting") as status:
            while True:
                doc = runs.scan(target)
                runs.refresh(st, target, doc)
                run = next((r for r in doc.get("runs", []) if r.get("id") == run_id), None)
                if run is not None:
                    total = run.get("total")
                    done = int(run.get("completed") or 0)
                    status.update(
                        f"{run_id}: {run['status']} {bar(done, total)} {done}/{total if total is not None else '?'}"
                        f"  ETA {duration(run.get('eta_s'))}"
                    )
                    if run["status"] in runs.FINAL_STATES:
                        return dict(run)
                time.sleep(period)  # polling the target; the run lives in another process, maybe another machine


def _follow_plan(
    ctx: click.Context, project: config.Project, st: Any, experiment: str, provision: bool, local_busy: bool
) -> str:
    from tether import dispatch

    return dispatch.choose_target(project, st, experiment, provision=provision, local_busy=local_busy, say=say)


def _hosts_with_runs(project: config.Project, st: Any, host: str | None) -> list[str]:
    """Hosts to scan: the one asked for, else every host with runs except rented servers already destroyed."""
    if host:
        return [host]
    names = sorted({r.host for r in st.runs()})
    gone = {r.name for r in st.instances() if r.state == "gone"}
    return [n for n in names if n not in gone] or [LOCAL]


@click.command()
@click.argument("host", required=False)
@click.option("--local", is_flag=True, help="Only this machine.")
@json_option
@click.pass_context
def progress(ctx: click.Context, host: str | None, local: bool, as_json: bool) -> None:
    """Every run's completed/total, rate, ETA and state: one round trip per host."""
    project = load_project(ctx)
    docs: list[dict[str, Any]] = []
    with state() as st:
        for name in _hosts_with_runs(project, st, LOCAL if local else host):
            try:
                target = resolve(project, name, st)
                doc = runs.scan(target)
                runs.refresh(st, target, doc)
                docs.append({"host": name, "runs": doc.get("runs", []), "error": None})
            except TetherError as exc:
                if host:
                    raise
                docs.append({"host": name, "runs": [], "error": str(exc)})
    if as_json:
        emit_json({"hosts": docs})
        return
    table = Table(box=None, pad_edge=False)
    for col in ("host", "run", "state", "progress", "done", "failed", "rate", "ETA"):
        table.add_column(col, justify="right" if col in ("done", "failed", "rate", "ETA") else "left")
    for hd in docs:
        if hd["error"]:
            table.add_row(hd["host"], "-", "[red]unreachable[/red]", hd["error"], "", "", "", "")
        for r in hd["runs"]:
            total = r.get("total")
            done = int(r.get("completed") or 0)
            rate = r.get("rate_per_s")
            table.add_row(
                hd["host"],
                r["id"],
                _colour(r["status"]),
                bar(done, total),
                f"{done}/{total if total is not None else '?'}",
                str(r.get("failed") or 0),
                f"{rate:.2f}/s" if rate else "-",
                duration(r.get("eta_s")) if r["status"] == "running" else "-",
            )
    if table.row_count == 0:
        say("No runs yet. Start one with `tether run EXPERIMENT --local`.")
        return
    out.print(table)
    for hd in docs:
        for r in hd["runs"]:
            if r.get("log_tail") and r["status"] in ("failed", "dead", "refused"):
                err.print(f"[bold]{r['id']}[/bold] ({r['status']}) log tail:\n{r['log_tail']}")


def _colour(status: str) -> str:
    colour = {
        "running": "green",
        "completed": "cyan",
        "failed": "red",
        "dead": "red",
        "refused": "yellow",
        "cancelled": "yellow",
    }.get(status, "white")
    return f"[{colour}]{status}[/{colour}]"


def _run_and_target(ctx: click.Context, ref: str) -> tuple[Any, Target]:
    project = load_project(ctx)
    with state() as st:
        rec = st.find_run(ref)
        target = resolve(project, rec.host, st)
    return rec, target


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the run ends (Ctrl-C stops).")
@click.option("-n", "--lines", type=int, default=100, show_default=True, help="How many lines to show.")
@click.pass_context
def logs(ctx: click.Context, run_ref: str, follow: bool, lines: int) -> None:
    """Show the output of RUN (a run id, a unique prefix of one, or an experiment name for its latest run)."""
    rec, target = _run_and_target(ctx, run_ref)
    argv = ["tail", "-n", str(lines), rec.log_path]
    if not follow:
        result = target.transport.run(argv, check=False)
        if result.returncode != 0:
            raise TetherError(
                f"No log for run {rec.id} on {rec.host} yet ({rec.log_path}).",
                "The run may not have started; see `tether progress`.",
            )
        click.echo(result.text(), nl=False)
        return
    wrapper_pid = _wrapper_pid(target, rec.id)
    follow_argv = ["tail", "-n", str(lines), "-F", rec.log_path]
    if wrapper_pid:
        follow_argv.insert(1, f"--pid={wrapper_pid}")
    final = follow_argv if target.local else target.transport.interactive_argv(follow_argv)
    raise SystemExit(subprocess.call(final))


def _wrapper_pid(target: Target, run_id: str) -> int | None:
    doc = runs._read_run_json(target, run_id)
    if doc and doc.get("status") in ("starting", "running"):
        return int(doc.get("pid") or 0) or None
    return None


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.pass_context
def attach(ctx: click.Context, run_ref: str) -> None:
    """Open RUN's tmux window (detach again with Ctrl-B D; the run keeps going)."""
    rec, target = _run_and_target(ctx, run_ref)
    argv = tmux.attach_argv(target.tmux_socket, rec.session)
    probe = target.transport.run(tmux.has_session_argv(target.tmux_socket, rec.session), check=False)
    if probe.returncode != 0:
        raise TetherError(
            f"Run {rec.id} has no tmux window on {rec.host}: it has ended.",
            f"Its output is kept: `tether logs {rec.id}`.",
        )
    final = argv if target.local else target.transport.interactive_argv(argv)
    if not os.isatty(0):
        raise TetherError("`tether attach` needs a terminal.", f"Use `tether logs {rec.id} -f` instead.")
    # Inside tmux already: the run's tmux server is another one, so attaching nests (TMUX would make tmux refuse).
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    raise SystemExit(subprocess.call(final, env=env))


@click.command()
@click.argument("run_ref", metavar="RUN")
@json_option
@click.pass_context
def cancel(ctx: click.Context, run_ref: str, as_json: bool) -> None:
    """Stop RUN (SIGTERM to the experiment; the checkpoint journal keeps every finished item)."""
    rec, target = _run_and_target(ctx, run_ref)
    with state() as st:
        doc = runs.cancel(st, target, rec)
        deadline = time.monotonic() + 10
        status = rec.status
        while doc.get("cancelled") and time.monotonic() < deadline:
            scan = runs.scan(target)
            runs.refresh(st, target, scan)
            status = next((r["status"] for r in scan["runs"] if r["id"] == rec.id), status)
            if status in runs.FINAL_STATES:
                break
            time.sleep(0.2)  # the wrapper is stopping the experiment on the target
    doc["status"] = status
    if as_json:
        emit_json(doc)
        return
    say(f"Run {rec.id}: {'cancelled' if doc.get('cancelled') else doc.get('reason')} (now {status}).")


def register(group: click.Group) -> None:
    for command in (init, run, progress, logs, attach, cancel):
        group.add_command(command)
