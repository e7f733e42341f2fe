"""``tether init``, ``run``, ``progress``, ``logs``, ``attach``, ``cancel``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tether import config, runs, vocab
from tether.cli.common import (
    bar,
    context,
    duration,
    emit_json,
    err,
    json_option,
    managed_line,
    new_table,
    out,
    parse_every,
    say,
    status_text,
    styled,
)
from tether.context import Ctx
from tether.errors import ConfigError, PolicyRefusal, RemoteError, RunFailed, TetherError
from tether.hosts import LOCAL, Target, resolve
from tether.state import RunRecord, State
from tether.transport import tmux

if TYPE_CHECKING:
    from tether import managed as managed_core


@click.command()
@click.option("--name", default=None, help="Project name (default: this folder's name).")
@click.option("--print", "to_stdout", is_flag=True, help="Print the starter file instead of writing it.")
@click.option("--force", is_flag=True, help="Overwrite an existing tether.toml.")
def init(name: str | None, to_stdout: bool, force: bool) -> None:
    """Write a commented starter tether.toml in the current folder, and the example experiment it runs."""
    project_name = name or config.folder_name(Path.cwd())
    problem = config.check_project_name(project_name)
    if problem is not None:
        raise click.BadParameter(problem + "; nothing was written.", param_hint="'--name'")
    text = config.starter(project_name)
    if to_stdout:
        click.echo(text, nl=False)
        return
    path = Path.cwd() / config.CONFIG_NAME
    if path.exists() and not force:
        raise ConfigError(f"{path} exists already; nothing was changed.", "Use --force to overwrite it.")
    path.write_text(text, encoding="utf-8")
    example = Path.cwd() / config.EXAMPLE_FILE
    try:
        with example.open("x", encoding="utf-8") as handle:  # never over a file of the user's
            handle.write(config.EXAMPLE)
        wrote = f"Wrote {path} and {example}."
    except FileExistsError:
        wrote = f"Wrote {path}; {example} exists already and was left as it is."
    say(f"{wrote} Try `tether run example --local --follow`, then describe your own [experiments.*].")


class ExperimentCommand(click.Command):
    """A command whose options are tether's up to ``--`` and whose arguments after ``--`` go to the experiment
    unchanged (``ctx.meta[EXPERIMENT_ARGS]``). Before ``--`` an unknown option is a usage error (with "did you
    mean", from the error edge in :mod:`tether.cli.main`), and a stray word says where the experiment's arguments
    go."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- ARGS...]"]

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ours, theirs = (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args else (args, [])
        ctx.meta[EXPERIMENT_ARGS] = tuple(theirs)
        rest = super().parse_args(ctx, ours)
        if ctx.args and not ctx.resilient_parsing:
            words = " ".join(ctx.args)
            ctx.fail(
                f"Got unexpected argument(s) {words!r}: the experiment's own arguments go after `--`, as in "
                f"`{ctx.command_path} {ctx.params.get('experiment') or 'EXP'} -- {words}`."
            )
        return rest


#: Where :class:`ExperimentCommand` puts the arguments that follow ``--``.
EXPERIMENT_ARGS = "tether.experiment_args"


@click.command(cls=ExperimentCommand, context_settings={"allow_extra_args": True})
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
@click.option("--provision", "may_rent", is_flag=True, help="Allow renting a server if the plan says so (costs money).")
@click.option("--local-busy", is_flag=True, help="Treat this machine as off or busy when following the plan.")
@click.option(
    "--managed", is_flag=True, help="Keep it running through preemption and dead servers (README: Managed runs)."
)
@click.option(
    "--shards", type=int, default=1, show_default=True, help="With --managed: spread the items over K servers."
)
@click.option("--profile", default=None, help="With --managed: the GPU profile to rent (default: the plan's).")
@click.option("--max-usd", type=float, default=None, help="With --managed: the run's budget in dollars.")
@click.option("--sync-every", default="2m", show_default=True, help="With --managed: how often journals come home.")
@click.option("--detach", is_flag=True, help="With --managed: run the controller in the background.")
@click.option("--poll", default="10s", hidden=True, help="With --managed: how often the controller looks.")
@click.option("--unreachable-after", default="5m", hidden=True, help="With --managed: replace a silent server after.")
@json_option
@click.pass_context
def run(
    ctx: click.Context,
    experiment: str,
    local: bool,
    on: str | None,
    wait_gpu: float | None,
    follow: bool,
    may_rent: bool,
    local_busy: bool,
    managed: bool,
    shards: int,
    profile: str | None,
    max_usd: float | None,
    sync_every: str,
    detach: bool,
    poll: str,
    unreachable_after: str,
    as_json: bool,
) -> None:
    """Start EXPERIMENT detached (in tmux) and print its run id at once.

    Options up to `--` are tether's (an unknown one is refused); what follows `--` is appended to the
    experiment's command unchanged. Without --local or --on, tether follows
    `tether plan` for the experiment. With --managed, tether stays and drives the run to its end on rented servers
    (and --on hosts), replacing lost ones and resuming by item id; --shards K spreads it over K servers.
    """
    extra = list(ctx.meta.get(EXPERIMENT_ARGS, ()))
    if managed:
        if local:
            raise click.UsageError("--managed runs on servers: give --on HOSTS or nothing, not --local.")
        from tether import managed as managed_core

        opts = managed_core.Options(
            shards=shards,
            profile=profile,
            max_usd=max_usd,
            sync_every=parse_every(sync_every),
            hosts=tuple(h.strip() for h in (on or "").split(",") if h.strip()),
            args=tuple(extra),
            poll_s=parse_every(poll),
            unreachable_after_s=parse_every(unreachable_after),
        )
        _run_managed(ctx, experiment, opts, detach=detach, as_json=as_json, raw=(sync_every, poll, unreachable_after))
        return
    if shards != 1 or max_usd is not None or detach or profile is not None:
        raise click.UsageError("--shards, --profile, --max-usd and --detach go with --managed.")
    if local and on:
        raise click.UsageError("Give either --local or --on HOST, not both.")
    from tether import provision, routing

    with context(ctx, needs="its [experiments.NAME] table") as c:
        c.project.experiment(experiment)
        if local:
            where = LOCAL
        elif on:
            where = on
        else:
            where = routing.choose_target(c, experiment, may_rent=may_rent, local_busy=local_busy)
        target = resolve(c.project, where, c.state)
        if not target.local:
            provision.ensure_pushed(c, target)
        started = runs.start(c, target, experiment, extra, wait_s=wait_gpu)
        rec = started.run
        final = _follow(c.state, target, rec.id, c, live=not as_json) if follow else None
    if as_json:
        emit_json(
            {
                "run_id": rec.id,
                "experiment": rec.experiment,
                "host": rec.host,
                "status": started.status,
                "log": rec.log_path,
                "session": rec.session,
                "final": final.to_json() if final is not None else None,
            }
        )
        return
    click.echo(rec.id)
    if final is not None:
        done = f"{final.completed}/{final.total if final.total is not None else '?'}"
        say(f"Run {rec.id} {final.status} ({done} items, exit code {final.exit_code}).")
        _say_checkpoint_warnings(target, rec)
        if final.status != vocab.COMPLETED:
            raise RunFailed(f"Run {rec.id} {final.status}.", f"See `tether logs {rec.id}`.")
        return
    if vocab.is_final(started.status):
        # It ended before the start was confirmed: say how, and what the experiment's own library said about it
        # (e.g. that its results are from an earlier run, so nothing ran again), not only in the log.
        say(f"Run {rec.id} of {experiment} on {rec.host} {started.status} at once.")
        if not _say_checkpoint_warnings(target, rec):
            say(f"Its output: `tether logs {rec.id}`.")
        return
    say(
        f"Started {experiment} on {rec.host} as {rec.id} ({started.status}). "
        f"Follow it with `tether progress`, `tether logs {rec.id} -f` or `tether attach {rec.id}`."
    )


def _say_checkpoint_warnings(target: Target, rec: RunRecord) -> bool:
    """Repeat on the terminal what the checkpoint library warned about in the run's log; whether it warned."""
    found = runs.checkpoint_warnings(target, rec)
    for sentence in found:
        say(f"{rec.id}: {sentence}")
    return bool(found)


def _run_managed(
    ctx: click.Context,
    experiment: str,
    opts: managed_core.Options,
    *,
    detach: bool,
    as_json: bool,
    raw: tuple[str, str, str],
) -> None:
    from tether import managed as managed_core

    with context(ctx) as c:
        if detach:
            argv = ["run", experiment, "--managed", "--shards", str(opts.shards), "--sync-every", raw[0]]
            argv += ["--poll", raw[1], "--unreachable-after", raw[2]]
            if opts.profile:
                argv += ["--profile", opts.profile]
            if opts.max_usd is not None:
                argv += ["--max-usd", repr(opts.max_usd)]
            if opts.hosts:
                argv += ["--on", ",".join(opts.hosts)]
            if ctx.obj and ctx.obj.get("config"):
                argv = ["--config", str(ctx.obj["config"]), *argv]
            doc = managed_core.detach(c, experiment, [*argv, "--", *opts.args])
            if as_json:
                emit_json(doc)
            else:
                click.echo(doc["id"] or "")
                say(
                    f"Managed run {doc['id']} runs in the background (pid {doc['pid']}, log {doc['log']}). "
                    "Watch it with `tether progress`."
                )
            return
        from tether.cli.live import shown

        with shown(c, f"tether run {experiment} --managed", enabled=not as_json):
            outcome = managed_core.run_managed(c, experiment, opts)
    if as_json and outcome.status == vocab.MANAGED_COMPLETED:
        emit_json(outcome.to_json())
    if outcome.status == vocab.MANAGED_PAUSED:
        raise PolicyRefusal(
            f"Managed run {outcome.id} paused: {outcome.reason}.",
            f"Raise --max-usd (or [policy] limits) and run `tether run {experiment} --managed` again to pick it up; "
            "every finished item is kept.",
        )
    summary = (
        f"Managed run {outcome.id} {outcome.status} in {duration(outcome.wall_s)} for ${outcome.cost_usd:.4f}"
        f" ({sum(s['recoveries'] for s in outcome.shards)} recoveries)"
    )
    if outcome.status == vocab.MANAGED_COMPLETED:
        if not as_json:
            click.echo(outcome.results_path or "")
        say(f"{summary}: results in {outcome.results_path}.")
        return
    raise TetherError(f"{summary}: {outcome.reason}", f"What finished is kept in {outcome.results_path}.")


def _follow(st: State, target: Target, run_id: str, ctx: Ctx, *, live: bool = True) -> vocab.RunInfo:
    """Follow the run until it ends, drawn live on a terminal: its state, items, rate and ETA."""
    from tether.cli.live import shown

    with shown(ctx, "tether run --follow", enabled=live):
        return runs.follow(st, target, run_id, ctx=ctx)


@click.command()
@click.argument("host", required=False)
@click.option("--local", is_flag=True, help="Only this machine.")
@click.option("--all", "every_project", is_flag=True, help="Every project's runs, not only this project's.")
@json_option
@click.pass_context
def progress(ctx: click.Context, host: str | None, local: bool, every_project: bool, as_json: bool) -> None:
    """Every run's completed/total, rate, ETA and state: one round trip per host."""
    from tether.scope import Scope

    with context(ctx) as c:
        scope = Scope.of(c.project, every_project)
        docs = runs.progress(c, LOCAL if local else host, scope)
        managed_views = []
        if not (local or host):
            from tether import managed as managed_core

            mine = scope.managed_ids(c.state)
            managed_views = [v for v in managed_core.views(c) if v.id in mine]
        fresh_tails = set() if as_json else runs.tails_to_show(c.state, docs)
    if as_json:
        emit_json(
            {
                "scope": scope.to_json(),
                "hosts": [d.to_json() for d in docs],
                "managed": [v.to_json() for v in managed_views],
            }
        )
        return
    if (sentence := scope.sentence()) is not None:
        say(sentence)
    for view in managed_views:
        out.print(managed_line(view))
    table = new_table()
    for col in ("host", "run", "state", "progress", "done", "failed", "rate", "ETA"):
        table.add_column(col, justify="right" if col in ("done", "failed", "rate", "ETA") else "left")
    for hd in docs:
        if hd.server_state:
            table.add_row(hd.host, "-", status_text(hd.server_state), hd.error or "", "", "", "", "")
        elif hd.error:
            table.add_row(hd.host, "-", status_text("unreachable"), hd.error, "", "", "", "")
        for r in hd.runs:
            table.add_row(
                hd.host,
                r.id,
                status_text(r.status),
                bar(r.completed, r.total),
                f"{r.completed}/{r.total if r.total is not None else '?'}",
                failed_cell(r),
                f"{r.rate_per_s:.2f}/s" if r.rate_per_s else "-",
                duration(r.eta_s) if r.status == vocab.RUNNING else "-",
            )
    if table.row_count == 0:
        if not managed_views:
            where = "" if scope.every else " in this project (`--all`: every project's)"
            say(f"No runs yet{where}. Start one with `tether run EXPERIMENT --local`.")
        return
    out.print(table)
    for hd in docs:
        for r in hd.runs:
            if r.problem:
                err.print(styled(r.id, "bold"), f"({r.status}): {r.problem}")
            if r.log_tail and r.status in vocab.TROUBLE_STATUSES:
                if (hd.host, r.id) in fresh_tails:  # the first time only; then where to read it
                    err.print(styled(r.id, "bold"), f"({r.status}) log tail:\n{r.log_tail}")
                else:
                    err.print(styled(r.id, "bold"), f"({r.status}): its log: `tether logs {r.id}`.")


def failed_cell(run: vocab.RunInfo) -> str:
    """``37`` or, when the checkpoint says why, ``37 (35 x 429, 2 x 400)``."""
    if not run.failed_by:
        return str(run.failed)
    kinds = sorted(run.failed_by.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"{run.failed} (" + ", ".join(f"{n} x {kind}" for kind, n in kinds) + ")"


def _run_and_target(ctx: click.Context, ref: str) -> tuple[RunRecord, Target]:
    with context(ctx) as c:
        rec = c.state.find_run(ref, c.project.config.experiments)
        return rec, resolve(c.project, rec.host, c.state)


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the run ends (Ctrl-C stops).")
@click.option("-n", "--lines", type=int, default=100, show_default=True, help="How many lines to show.")
@click.pass_context
def logs(ctx: click.Context, run_ref: str, follow: bool, lines: int) -> None:
    """Show the output of RUN (a run id, an experiment name for its latest run, or a prefix of one run id)."""
    rec, target = _run_and_target(ctx, run_ref)
    argv = ["tail", "-n", str(lines), rec.log_path]
    if not follow:
        result = target.transport.run(argv, check=False)
        if result.returncode != 0:
            raise RemoteError(
                f"No log for run {rec.id} on {rec.host} yet ({rec.log_path}).",
                "The run may not have started; see `tether progress`.",
            )
        click.echo(result.text(), nl=False)
        return
    # A run this machine knows has ended has no wrapper to wait for.
    record = runs.record_to_follow(target, rec.id, wait_s=runs.FOLLOW_START_S if vocab.is_live(rec.status) else 0.0)
    follow_argv = ["tail", "-n", str(lines), rec.log_path]
    if record is not None and vocab.is_live(record.status):
        # tail stops following when the run's wrapper exits: the run has ended (or died).
        follow_argv[1:1] = [f"--pid={record.pid}", "-F"]
    final = follow_argv if target.local else target.transport.interactive_argv(follow_argv)
    code = subprocess.call(final)
    ended = runs.read_record(target, rec.id)
    if ended is not None and vocab.is_final(ended.status):
        exit_code = "" if ended.exit_code is None else f" (exit code {ended.exit_code})"
        say(f"Run {rec.id} {ended.status}{exit_code}.")
    raise SystemExit(code)


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.pass_context
def attach(ctx: click.Context, run_ref: str) -> None:
    """Open RUN's tmux window (detach again with Ctrl-B D; the run keeps going)."""
    rec, target = _run_and_target(ctx, run_ref)
    argv = tmux.attach_argv(target.tmux_socket, rec.session)
    probe = target.transport.run(tmux.has_session_argv(target.tmux_socket, rec.session), check=False)
    if probe.returncode != 0:
        raise RemoteError(
            f"Run {rec.id} has no tmux window on {rec.host}: it has ended.",
            f"Its output is kept: `tether logs {rec.id}`.",
        )
    final = argv if target.local else target.transport.interactive_argv(argv)
    if not os.isatty(0):
        raise RemoteError("`tether attach` needs a terminal.", f"Use `tether logs {rec.id} -f` instead.")
    # Inside tmux already: the run's tmux server is another one, so attaching nests (TMUX would make tmux refuse).
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    raise SystemExit(subprocess.call(final, env=env))


@click.command()
@click.argument("run_ref", metavar="RUN")
@json_option
@click.pass_context
def cancel(ctx: click.Context, run_ref: str, as_json: bool) -> None:
    """Stop RUN (SIGTERM to the experiment; the checkpoint journal keeps every finished item).

    RUN may be a managed run (its id, or its experiment's name): every shard stops, its journal comes home, its
    servers are destroyed (verified), and what finished is kept."""
    from tether import managed as managed_core

    with context(ctx) as c:
        found = c.state.resolve_run(run_ref, c.project.config.experiments)
        if isinstance(found, RunRecord):
            rec = found
            outcome = runs.cancel(c.state, resolve(c.project, rec.host, c.state), rec)
        else:
            stopped = managed_core.cancel(c, found)
    if not isinstance(found, RunRecord):
        if as_json:
            emit_json(stopped.to_json())
            return
        say(
            f"Managed run {stopped.id}: {stopped.status} ({stopped.reason}); its servers are destroyed and what "
            f"finished is kept in {stopped.results_path}."
        )
        return
    if as_json:
        emit_json(outcome.to_json())
        return
    say(_cancel_sentence(outcome))


def _cancel_sentence(outcome: runs.Cancelled) -> str:
    """What a cancel did, each fact once (never "cancelled (now cancelled)")."""
    if not outcome.cancelled:
        said = outcome.reason or "nothing to stop"
        return f"Run {outcome.run_id} was not cancelled: {said}" + (
            "." if outcome.status in said else f"; it is {outcome.status}."
        )
    if outcome.status == vocab.CANCELLED:
        return f"Run {outcome.run_id} cancelled; its finished items stay in the journal."
    if vocab.is_final(outcome.status):
        return f"Run {outcome.run_id}: {outcome.reason}; it ended {outcome.status}."
    return f"Run {outcome.run_id}: {outcome.reason}; it is still {outcome.status} (see `tether progress`)."
