"""Starting, watching and stopping runs on a target (this machine or a server), the same way everywhere.

A run is the server-side wrapper (``python3 -m tether.server run``) in a detached tmux session named
``tether-<run id>``; the wrapper keeps the run's record on the target under ``<root>/.tether/runs/<id>/``, so the
record survives this machine going away. Local state keeps a copy that :func:`progress` refreshes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tether import vocab
from tether.context import Ctx
from tether.errors import CommandFailed, ConfigError, RemoteError, TetherError
from tether.hosts import LOCAL, Target, resolve
from tether.scope import Scope
from tether.state import RunRecord, State, entered_state_at
from tether.transport import tmux

if TYPE_CHECKING:
    from tether.config import ExperimentConfig

START_CHECK_S = 3.0
START_GRACE_S = 0.5
CANCEL_WAIT_S = 10.0


def new_run_id(experiment: str, now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), UTC).strftime("%Y%m%d-%H%M%S")
    return f"{experiment}-{stamp}-{os.urandom(2).hex()}"  # secrets.token_hex(2), without importing secrets


def session_name(run_id: str) -> str:
    """tmux session of a run (tmux refuses '.' and ':' in names)."""
    return "tether-" + "".join(c if c.isalnum() or c in "_-" else "_" for c in run_id)


def wrapper_argv(
    target: Target,
    run_id: str,
    name: str,
    exp: ExperimentConfig,
    argv: Sequence[str],
    *,
    wait_s: float | None = None,
    shard: str | None = None,
    managed: str | None = None,
) -> list[str]:
    """The argv of the run wrapper for one run (pure); ``shard`` (``i/K``) and ``managed`` for a managed run."""
    out = [
        *target.server_argv,
        "run",
        "--root",
        target.root,
        "--run-id",
        run_id,
        "--experiment",
        name,
        "--cwd",
        target.code_dir,
        "--results",
        exp.results,
        "--gpu-gb",
        f"{exp.gpu_gb:g}",
    ]
    if target.registry is not None:
        out += ["--registry", target.registry]
    if wait_s is not None:
        out += ["--wait", f"{wait_s:g}"]
    if shard is not None:
        out += ["--shard", shard]
    if managed is not None:
        out += ["--managed", managed]
    return [*out, "--", *argv]


@dataclass(frozen=True)
class Started:
    run: RunRecord
    status: str


def start(
    ctx: Ctx,
    target: Target,
    name: str,
    extra_args: Sequence[str] = (),
    *,
    wait_s: float | None = None,
    run_id: str | None = None,
    shard: str | None = None,
    managed: str | None = None,
    confirm: bool = True,
) -> Started:
    """Start experiment ``name`` detached on ``target`` and return at once with its run id.

    ``run_id`` is the id to use (a managed run records it before the start, so a controller killed meanwhile
    finds the run again); ``shard`` and ``managed`` go to the wrapper (:func:`wrapper_argv`). ``confirm=False``
    returns as soon as the session is started (a managed run's controller watches the run anyway).

    Waits up to a few seconds for the wrapper to report: a command that does not exist, or a GPU admission refusal,
    is reported as a failure here (with the log tail), not as a run that looks alive.
    """
    exp = ctx.project.experiment(name)
    run_id = run_id or new_run_id(name, ctx.now())
    argv = [*exp.command, *extra_args]
    session = session_name(run_id)
    target.transport.run(["mkdir", "-p", vocab.runs_dir(target.root)])
    record = RunRecord(
        id=run_id,
        experiment=name,
        host=target.name,
        argv=argv,
        cwd=target.code_dir,
        results_dir=f"{target.code_dir}/{exp.results}",
        log_path=vocab.run_log_path(target.root, run_id),
        session=session,
        started=ctx.now(),
        ended=None,
        exit_code=None,
        status=vocab.STARTING,
        project=str(ctx.project.root) if ctx.project.found else None,
    )
    # Recorded before it starts: a run tether started is never unknown to it, even if this process dies now.
    ctx.state.add_run(record)
    tmux.TmuxSessions(target.transport, target.root).start(
        session,
        wrapper_argv(target, run_id, name, exp, argv, wait_s=wait_s, shard=shard, managed=managed),
        cwd=target.code_dir,
    )
    if not confirm:
        return Started(record, vocab.STARTING)
    status = _await_start(ctx.state, target, record, ctx)
    return Started(ctx.state.find_run(run_id), status)


def read_record(target: Target, run_id: str) -> vocab.RunRecordFile | None:
    """The run's ``run.json`` on the target, or None when it is missing or not a run record."""
    result = target.transport.run(["cat", vocab.run_record_path(target.root, run_id)], check=False)
    if result.returncode != 0:
        return None
    try:
        return vocab.RunRecordFile.from_json(json.loads(result.text()), run_id)
    except ValueError:
        return None


def _await_start(state: State, target: Target, run: RunRecord, ctx: Ctx | None = None) -> str:
    """Wait a few seconds for the wrapper's first word; a run that never started is recorded failed, with why.
    A run that already ended is announced here (with ``ctx``): this is where its end is first recorded."""
    deadline = time.monotonic() + START_CHECK_S
    delay = 0.05
    record: vocab.RunRecordFile | None = None
    running_since: float | None = None
    while time.monotonic() < deadline:
        record = read_record(target, run.id)
        if record is not None and record.status == vocab.RUNNING:
            # A command that fails at once (not found, bad arguments) is still reported as failed here.
            running_since = running_since or time.monotonic()
            if time.monotonic() - running_since >= START_GRACE_S:
                break
        elif record is not None and record.status != vocab.STARTING:
            break
        time.sleep(delay)  # polling a remote file; nothing local to wait on
        delay = min(delay * 2, 0.5)
    if record is None:
        sessions = tmux.TmuxSessions(target.transport, target.root)
        if sessions.exists(run.session):
            return vocab.STARTING
        # The wrapper exited without writing its record (it refused its arguments, or python3 is missing).
        state.update_run(run.id, status=vocab.FAILED, ended=time.time(), exit_code=None)
        raise CommandFailed(
            f"Run {run.id} on {target.name} never started: tether's run wrapper exited before writing its record.",
            f"Run `tether up {target.name}` again to reinstall tether's server side there."
            if not target.local
            else "Check that this Python can run `python -m tether.server`.",
        )
    state.update_run(run.id, status=record.status, ended=record.ended, exit_code=record.exit_code)
    if ctx is not None and vocab.is_final(record.status):
        from tether import notify

        ended: vocab.RunInfo | None = None
        with contextlib.suppress(TetherError):  # the counts are a nicety; the announcement is not
            ended = scan(target).run(run.id)
        fallback = vocab.RunInfo(id=run.id, experiment=run.experiment, status=record.status, exit_code=record.exit_code)
        notify.announce_run_ends(ctx, target.name, [ended or fallback])
    if record.status in (vocab.FAILED, vocab.REFUSED):
        log = target.transport.run(["tail", "-n", "20", record.log or run.log_path], check=False).text()
        state.claim_tails([(target.name, run.id)])  # shown in this error: `progress` then points to `logs`
        raise CommandFailed(
            f"Run {run.id} on {target.name} {record.status} at once (exit code {record.exit_code}).",
            "Its log ends with:\n" + log.rstrip(),
            returncode=record.exit_code,
            output=log,
        )
    return record.status


def scan(target: Target) -> vocab.Scan:
    """Every run on ``target`` with its progress, in one round trip (on this machine: in this process)."""
    if target.in_process:
        from tether.server import progress as server_progress

        return vocab.Scan.from_json(json.loads(json.dumps(server_progress.scan(target.root))))
    result = target.transport.run([*target.server_argv, "progress", "--root", target.root])
    try:
        return vocab.Scan.from_json(json.loads(result.text()))
    except ValueError:
        raise RemoteError(
            f"The progress scan on {target.name} printed something that is not a progress document.",
            "Run `tether up` again to reinstall tether's server side there.",
        ) from None


def refresh(state: State, target: Target, found: vocab.Scan) -> vocab.Scan:
    """Copy the statuses a scan found into local state and return the scan as the views show it
    (:func:`refresh_ended` also says which runs were first seen ended here).

    A run seen ended (any final status but ``broken``, which a repaired run.json can undo) is frozen the first
    time: its status, end, exit code and counts as its own record says (the wrapper froze them into run.json). A
    server side older than that (``attributed`` false: it sums a shared results folder) freezes nothing until
    ``tether up`` installs the current one.
    From then on the views show the frozen record, never what its results folder (reused by later runs) says.
    """
    return refresh_ended(state, target, found)[0]


def refresh_ended(state: State, target: Target, found: vocab.Scan) -> tuple[vocab.Scan, list[vocab.RunInfo]]:
    """:func:`refresh`, and the runs first seen ended here (what the notifications announce)."""
    known = {r.id: r for r in state.runs(host=target.name)}
    shown: list[vocab.RunInfo] = []
    ended: list[vocab.RunInfo] = []
    for run in found.runs:
        rec = known.get(run.id)
        if rec is not None and run.final and not vocab.is_final(rec.status):
            ended.append(run)
        if rec is not None and rec.frozen is None and run.final and run.status != vocab.BROKEN and found.attributed:
            rec = state.freeze_run(
                rec.id,
                status=run.status,
                ended=run.ended,
                exit_code=run.exit_code,
                completed=run.completed,
                failed=run.failed,
                total=run.total,
            )
        elif rec is not None and rec.frozen is None and (rec.status != run.status or rec.exit_code != run.exit_code):
            state.update_run(rec.id, status=run.status, ended=run.ended, exit_code=run.exit_code)
        shown.append(frozen_view(rec, run) if rec is not None else run)
    return replace(found, runs=shown), ended


def frozen_view(rec: RunRecord, run: vocab.RunInfo) -> vocab.RunInfo:
    """``run`` as the views show it: a frozen run's own record (status, end, exit code, counts) over the scan's."""
    if rec.frozen is None:
        return run
    same = run.failed == rec.failed and run.completed == rec.completed
    return replace(
        run,
        status=rec.status,
        ended=rec.ended,
        exit_code=rec.exit_code,
        completed=rec.completed or 0,
        failed=rec.failed or 0,
        total=rec.total,
        rate_per_s=None,
        eta_s=None,
        failed_by=run.failed_by if same else {},
        wrapper_alive=None,
    )


def observe(state: State, target: Target, *, ctx: Ctx | None = None) -> vocab.Scan:
    """Scan ``target`` and record what was found: what ``progress``, ``--follow``, ``cancel`` and ``status`` see
    (a finished run as its frozen record). With ``ctx`` (its project's notification URLs), the runs first seen
    ended here are announced (:func:`tether.notify.announce_run_ends`: once, and not again what the server
    announced)."""
    shown, ended = refresh_ended(state, target, scan(target))
    if ended and ctx is not None:
        from tether import notify

        notify.announce_run_ends(ctx, target.name, ended)
    return shown


def follow(
    state: State,
    target: Target,
    run_id: str,
    *,
    on_update: Callable[[vocab.RunInfo | None], None] = lambda _run: None,
    period: float | None = None,
    ctx: Ctx | None = None,
) -> vocab.RunInfo:
    """Poll the run's target until the run ends; ``on_update`` sees each observation, and ``ctx.report`` its
    state, items, rate and ETA (row ``run_id``). Returns the final one."""
    every = period if period is not None else (0.5 if target.local else 5.0)
    while True:
        run = observe(state, target, ctx=ctx).run(run_id)
        on_update(run)
        if ctx is not None:
            report_run(ctx, run_id, run, target.name)
        if run is not None and run.final:
            return run
        time.sleep(every)  # polling the target; the run lives in another process, maybe another machine


def report_run(ctx: Ctx, row: str, run: vocab.RunInfo | None, host: str) -> None:
    """A run's state, items, rate and ETA (its own progress) as :mod:`tether.progress` events on ``row``."""
    from tether.progress import Count, Step

    if run is None:
        ctx.report(Step(row, f"starting on {host}"))
        return
    ctx.report(Step(row, f"{run.status} on {host}"))
    ctx.report(Count(row, run.completed, run.total, rate_per_s=run.rate_per_s, eta_s=run.eta_s))


@dataclass(frozen=True)
class Cancelled:
    run_id: str
    cancelled: bool
    reason: str
    status: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.run_id, "cancelled": self.cancelled, "reason": self.reason, "status": self.status}


def cancel(state: State, target: Target, run: RunRecord, *, wait_s: float = CANCEL_WAIT_S) -> Cancelled:
    """SIGTERM the run on its target, then wait (up to ``wait_s``) until it is recorded ended."""
    result = target.transport.run(
        [*target.server_argv, "cancel", "--root", target.root, "--run-id", run.id], check=False
    )
    try:
        doc: dict[str, Any] = json.loads(result.text())
    except ValueError:
        raise CommandFailed(f"Could not cancel run {run.id} on {target.name}.", result.output_tail()) from None
    cancelled = doc.get("cancelled") is True
    status = run.status
    deadline = time.monotonic() + wait_s
    while cancelled and time.monotonic() < deadline:
        found = observe(state, target).run(run.id)
        status = found.status if found is not None else status
        if vocab.is_final(status):
            break
        time.sleep(0.2)  # the wrapper is stopping the experiment on the target
    return Cancelled(run.id, cancelled, str(doc.get("reason") or ""), status)


#: How long ``logs -f`` waits for a just-started run's wrapper to say who it is.
FOLLOW_START_S = 30.0


def record_to_follow(target: Target, run_id: str, *, wait_s: float = FOLLOW_START_S) -> vocab.RunRecordFile | None:
    """The run's record once its wrapper is known (a pid: ``logs -f`` follows until that process exits) or the run
    has ended (nothing to follow); None when it said neither within ``wait_s`` (0: look once)."""
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        record = read_record(target, run_id)
        if record is not None and (record.pid or not vocab.is_live(record.status)):
            return record
        if time.monotonic() >= deadline:
            return None
        time.sleep(delay)  # polling the target's run record; the wrapper writes it from another process
        delay = min(delay * 2, 1.0)


def checkpoint_warnings(target: Target, run: RunRecord, lines: int = 200) -> list[str]:
    """What the checkpoint library warned about in the end of the run's log (e.g. that its results are from an
    earlier run, so nothing ran again), each once, in order."""
    import re

    tail = target.transport.run(["tail", "-n", str(lines), run.log_path], check=False).text()
    return list(dict.fromkeys(m.group(1).strip() for m in re.finditer(r"CheckpointWarning: (.+)", tail)))


@dataclass(frozen=True)
class HostProgress:
    """One host's runs as ``tether progress`` shows them (``error``: why the host could not be read)."""

    host: str
    runs: list[vocab.RunInfo]
    error: str | None = None
    server_state: str | None = None
    """A rented server that is not running (e.g. ``preempted``): its state, the runs last known, and ``since``."""
    since: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "runs": [r.to_json() for r in self.runs],
            "error": self.error,
            "server_state": self.server_state,
            "since": self.since,
        }


def hosts_with_runs(state: State, scope: Scope | None = None) -> list[str]:
    """Every host with runs in ``scope`` (default: every project's) except rented servers already destroyed; this
    machine when there are none."""
    names = (scope or Scope(None)).hosts(state)
    gone = {r.name for r in state.instances() if r.state == "gone"}
    return [n for n in names if n not in gone] or [LOCAL]


def target_of(ctx: Ctx, name: str) -> Target:
    """Host ``name`` as this project knows it; one only another project's ``tether.toml`` names (its runs are seen
    with ``--all``) through the project that started a run there."""
    try:
        return resolve(ctx.project, name, ctx.state)
    except ConfigError:
        from pathlib import Path

        from tether import config

        for root in sorted({r.project for r in ctx.state.runs(host=name) if r.project} - {str(ctx.project.root)}):
            path = Path(root) / config.CONFIG_NAME
            if path.is_file():
                with contextlib.suppress(TetherError):
                    return resolve(config.discover(path), name, ctx.state)
        raise


def tails_to_show(state: State, hosts: Sequence[HostProgress]) -> set[tuple[str, str]]:
    """The ``(host, run id)`` of the runs in trouble whose log tail the terminal shows now: each run's the first
    time only (claimed in state); afterwards a view points to ``tether logs RUN`` instead."""
    wanted = [(hp.host, r.id) for hp in hosts for r in hp.runs if r.log_tail and r.status in vocab.TROUBLE_STATUSES]
    return state.claim_tails(wanted) if wanted else set()


def _rented_down(ctx: Ctx, name: str) -> HostProgress | None:
    """A rented server tether knows is not running (stopped, preempted...): nothing to ask it; why, and since when
    (the ledger's first record of that state)."""
    rec = ctx.state.instance(name)
    if rec is None or rec.state in ("running", "gone", "creating") or name in ctx.project.config.hosts:
        return None
    from tether.fmt import iso

    since = entered_state_at(ctx.state, rec)
    why = {"preempted": "the provider stopped it (outbid)"}.get(rec.state, "it is not running")
    return HostProgress(
        name,
        [],
        f"{name} is {rec.state} since {iso(since)}: {why}; `tether up {name}` starts it again.",
        rec.state,
        since,
    )


def progress(ctx: Ctx, host: str | None = None, scope: Scope | None = None) -> list[HostProgress]:
    """Every run in ``scope`` (default: :meth:`Scope.of` the project) on ``host`` (or on every host with such
    runs), one round trip per host.

    Asked for one host, an unreachable host raises; otherwise its row carries the error and the others go on.
    """
    scope = scope or Scope.of(ctx.project)
    out: list[HostProgress] = []
    for name in [host] if host else hosts_with_runs(ctx.state, scope):
        down = _rented_down(ctx, name)
        if down is not None:
            out.append(down)
            continue
        try:
            target = target_of(ctx, name)
            found = observe(ctx.state, target, ctx=ctx)
            out.append(HostProgress(name, scope.select(ctx.state, name, target.code_dir, found.runs)))
        except TetherError as exc:
            if host:
                raise
            out.append(HostProgress(name, [], str(exc)))
    return out
