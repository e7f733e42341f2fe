"""Notifications from this machine: one line per event to every configured URL, sent with Apprise.

URLs come from ``[notify] urls`` in tether.toml and ``TETHER_NOTIFY_URLS`` (comma or space separated). They hold
tokens, so they are secrets: never printed (only :func:`redact`'s ``scheme://host/***``), never in ``--json``, logs
or the dashboard, and they reach a server only as ``<root>/.tether/notify.json`` (0600, through stdin).

Who sends what, so that each event is sent once:

- **the server** (:mod:`tether.server.notify`): the end of a run (completed, failed), announced by its wrapper to
  the URLs a server speaks (json, form, ntfy, Slack, Discord); the wrapper marks the run ``announced_by: server``
  in the same write that records its end. A server the watchdog stops is announced by the watchdog;
- **this machine**: everything else, and a run's end when the server did not announce it (a run that died, a
  local run, a server without notify.json) or to the URLs a server cannot send to. Every event sent from here
  is claimed in local state first (:meth:`tether.state.State.claim_notification`), so two tether processes that
  see the same end announce it once.

A failure to notify never reaches the caller: it is said once on stderr, the URL redacted.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, get_args

from tether import vocab
from tether.server import notify as server_notify

if TYPE_CHECKING:
    from tether.config import Project
    from tether.context import Ctx

EventKind = Literal[
    "run_completed",
    "run_failed",
    "run_died",
    "server_preempted",
    "server_replaced",
    "server_stopped",
    "server_idle",
    "managed_done",
    "managed_paused",
    "budget_warning",
    "budget_reached",
    "destroy_refused",
    "test",
]
KINDS: tuple[str, ...] = get_args(EventKind)
ENV_URLS = "TETHER_NOTIFY_URLS"
redact = server_notify.redact

_warned: set[str] = set()
_F = TypeVar("_F", bound=Callable[..., None])


def _never_raises(func: _F) -> _F:
    """An announcement never breaks the command that makes it: trouble is said on stderr, once per kind."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except Exception as exc:
            print(f"tether: could not notify ({func.__name__}: {type(exc).__name__}).", file=sys.stderr)

    return cast(_F, wrapper)


@dataclass(frozen=True)
class Event:
    """One notification: its ``kind``, the ``project``, the ``subject`` (experiment, run or server) and ``text``,
    one line saying what happened and what to do (``"completed 40/40 items; `tether pull lab1`"``)."""

    kind: EventKind
    project: str
    subject: str
    text: str

    @property
    def title(self) -> str:
        return server_notify.title(self.project, self.kind)

    @property
    def line(self) -> str:
        return server_notify.line(self.project, self.subject, " ".join(self.text.split()))


@dataclass(frozen=True)
class Answer:
    """What one URL did with a notification: ``url`` redacted, ``answered``, and why not (secret parts removed)."""

    url: str
    answered: bool
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "answered": self.answered, "error": self.error}


def split_urls(text: str) -> list[str]:
    return [u for u in re.split(r"[,\s]+", text) if u]


def configured_urls(project: Project | None) -> list[str]:
    """The project's ``[notify] urls`` and then ``TETHER_NOTIFY_URLS``, each once, in order."""
    urls = list(project.config.notify.urls) if project is not None else []
    urls += split_urls(os.environ.get(ENV_URLS, ""))
    return list(dict.fromkeys(u.strip() for u in urls if u.strip()))


def _send_one(url: str, event: Event) -> Answer:
    """Send ``event`` to one URL through Apprise; never raises. Apprise's own log (which may hold the URL) is
    collected, scrubbed of the URL's secret parts, and becomes the answer's error."""
    import logging

    class _Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                self.lines.append(record.getMessage())

    logger = logging.getLogger("apprise")
    collect = _Collect()
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers, logger.propagate = [collect], False
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # Apprise's imports warn of deprecations in the standard library
            warnings.simplefilter("ignore", DeprecationWarning)
            import apprise

            app = apprise.Apprise()
            if not app.add(url):
                return Answer(redact(url), False, "not a notification URL Apprise knows (see its list of services)")
            kind = apprise.NotifyType(server_notify.notify_type(event.kind))
            ok = bool(app.notify(body=event.line, title=event.title, notify_type=kind))
    except Exception as exc:  # a notification never breaks the command that sends it
        return Answer(redact(url), False, server_notify.scrub(f"{type(exc).__name__}: {exc}", [url]))
    finally:
        logger.handlers, logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
    if ok:
        return Answer(redact(url), True)
    why = collect.lines[-1] if collect.lines else "no answer"
    return Answer(redact(url), False, server_notify.scrub(why, [url])[:300])


def send(urls: Iterable[str], event: Event) -> list[Answer]:
    """Send ``event`` to each URL and say, once per URL and process, on stderr which did not answer."""
    answers = []
    for url in urls:
        answer = _send_one(url, event)
        answers.append(answer)
        if not answer.answered and url not in _warned:
            _warned.add(url)
            print(f"tether: could not notify {answer.url}: {answer.error}", file=sys.stderr)
    return answers


def notify(
    target: Ctx | Project,
    event: Event,
    *,
    once: str | None = None,
    only: Callable[[str], bool] | None = None,
) -> list[Answer]:
    """Send ``event`` to every configured URL (those ``only`` accepts, when given). ``once`` is the event's key: a
    :class:`~tether.context.Ctx` records it in local state first and sends nothing when it was sent before (by
    any process). Never raises."""
    from tether.context import Ctx

    project = target.project if isinstance(target, Ctx) else target
    try:
        urls = [u for u in configured_urls(project) if only is None or only(u)]
        if not urls:
            return []
        ctx = target if isinstance(target, Ctx) else None
        first = ctx is None or once is None or ctx.state.claim_notification(once, event.kind, event.subject, ctx.now())
        if not first:
            return []
        return send(urls, event)
    except Exception as exc:  # configuration or state trouble: said, never raised into the caller
        print(f"tether: could not notify ({type(exc).__name__}).", file=sys.stderr)
        return []


def send_test(project: Project | None) -> list[Answer]:
    """``tether notify --test``: one test notification to every configured URL, and what each answered."""
    name = project.name if project is not None else "tether"
    event = Event("test", name, "notify", "a test from `tether notify --test`; nothing to do")
    return [_send_one(url, event) for url in configured_urls(project)]


# ------------------------------------------------------------------------------------------ runs
def run_event(project: str, host: str, run: vocab.RunInfo) -> Event | None:
    """The event of a run's end as this machine words it; None for an end nobody is told about (cancelled)."""
    exp = run.experiment or "run"
    counts = f" ({run.completed}/{run.total} items)" if run.total is not None else ""
    where = f" on {host}" if host else ""
    if run.status == vocab.COMPLETED:
        pull = f"`tether pull {host}`" if host and host != "local" else "results are in place"
        return Event("run_completed", project, exp, f"run {run.id} completed{where}{counts}; {pull}")
    if run.status in (vocab.FAILED, vocab.REFUSED):
        return Event(
            "run_failed",
            project,
            exp,
            f"run {run.id} {run.status}{where} (exit code {run.exit_code}){counts}; `tether logs {run.id}`",
        )
    if run.status in (vocab.DEAD, vocab.BROKEN):
        return Event(
            "run_died",
            project,
            exp,
            f"run {run.id} died{where}{counts}: its process is gone; `tether run {exp}` resumes it",
        )
    return None


@_never_raises
def announce_run_ends(ctx: Ctx, host: str, ended: Iterable[vocab.RunInfo]) -> None:
    """Announce the runs a scan just found ended (first seen final here). A run the server announced itself is
    sent only to the URLs a server cannot reach; others go to every URL. Each end once (claimed in state)."""
    for run in ended:
        event = run_event(ctx.project.name, host, run)
        if event is None:
            continue
        only: Callable[[str], bool] | None = None
        if run.announced_by == "server":
            only = lambda url: not server_notify.supports(url)  # noqa: E731
        notify(ctx, event, once=f"run:{run.id}:end", only=only)


def server_document(project: Project, host: str, code_dir: str) -> bytes:
    """The ``notify.json`` a server gets: the URLs (maybe none: then the server announces nothing) and whose."""
    import json

    urls = configured_urls(project)
    doc = {"project": project.name, "host": host, "code_dir": code_dir, "urls": urls}
    return (json.dumps(doc, indent=2) + "\n").encode()


# ------------------------------------------------------------------------------------------ servers and money
@_never_raises
def announce_refused_destroy(ctx: Ctx, name: str, last_verified_pull: float | None, why: str) -> None:
    """A destroy refused because results are not home: once per server until a pull verifies."""
    event = Event("destroy_refused", ctx.project.name, name, f"destroy refused: {why}")
    notify(ctx, event, once=f"destroy_refused:{name}:{last_verified_pull}")


@_never_raises
def announce_status(ctx: Ctx, report: Any) -> None:
    """What one observation of everything (:func:`tether.status.report`, also the dashboard's poll) has to say,
    each once: a preempted server (per preemption), a server idle and billing past its stop timer (per idle
    stretch), spending at ``budget_warn_fraction`` and at 100 % of ``max_total_usd`` (per limit) and of
    ``max_hourly_usd`` (per limit and day)."""
    import time

    from tether.fmt import duration

    project = ctx.project.name
    for row in report.servers:
        if row.state == "preempted":
            announce_preempted(ctx, row.name, row.since)
        elif row.state == "running" and row.idle_s is not None and row.decision.action != "none":
            began = round(report.now - row.idle_s)
            rate = f" at ${row.dph_now:.3f}/hr" if row.dph_now else ""
            text = (
                f"idle {duration(row.idle_s)} and billing{rate}, past its stop timer ({row.decision.reason}); "
                f"`tether down {row.name}`, or keep `tether autopilot` running"
            )
            notify(ctx, Event("server_idle", project, row.name, text), once=f"idle:{row.name}:{began}")
    ledger, policy = report.ledger, ctx.project.config.policy
    if ledger is None:
        return
    day = time.strftime("%Y-%m-%d", time.gmtime(report.now))
    limits = [
        ("max_total_usd", policy.max_total_usd, ledger.total_usd, f"${ledger.total_usd:.2f} spent", ""),
        ("max_hourly_usd", policy.max_hourly_usd, ledger.burn_dph, f"burning ${ledger.burn_dph:.3f}/hr", f":{day}"),
    ]
    for key, limit, value, said, period in limits:
        if limit is None or limit <= 0:
            continue
        steps: tuple[tuple[EventKind, float, str], ...] = (
            ("budget_reached", 1.0, "new rentals are refused; raise it in tether.toml or `tether down` a server"),
            ("budget_warning", policy.budget_warn_fraction, "`tether cost` shows where it goes"),
        )
        for kind, share, what in steps:
            if value >= share * limit:
                text = f"{said} of {key} ${limit:.2f} ({value / limit:.0%}); {what}"
                notify(ctx, Event(kind, project, key, text), once=f"budget:{key}:{limit:g}:{kind}{period}")
                break


@_never_raises
def announce_preempted(ctx: Ctx, name: str, since: float | None = None) -> None:
    """A server the provider stopped (outbid), once per preemption: ``since`` is when it entered that state
    (:func:`tether.state.entered_state_at`, what ``ls``, ``progress`` and ``status`` show; read from the
    ledger when not given)."""
    from tether.fmt import iso

    if since is None:
        from tether.state import entered_state_at

        rec = ctx.state.instance(name)
        if rec is None or rec.state != "preempted":
            return
        since = entered_state_at(ctx.state, rec)

    text = f"preempted (outbid) at {iso(since)}: its disk is kept and billed; `tether up {name}` starts it again"
    notify(ctx, Event("server_preempted", ctx.project.name, name, text), once=f"preempted:{name}:{since}")


@_never_raises
def announce_recovery(ctx: Ctx, run_id: str, shard: int, server: str | None, state: str, action: str) -> None:
    """What a managed run's recovery of a lost server has to say: a preemption (once, as ``tether status`` says
    it), and a server given up for a new one (``action`` replace or retire)."""
    if server is None:
        return
    if state == "preempted":
        announce_preempted(ctx, server)
    if action in ("replace", "retire"):
        why = {"gone": "vanished", "preempted": "was preempted", "stopped": "was stopped"}.get(state, state)
        announce_replaced(ctx, run_id, shard, server, f"server {why}")


@_never_raises
def announce_replaced(ctx: Ctx, run_id: str, shard: int, server: str, why: str) -> None:
    """A managed run's shard leaves its server for a new one (``why``: "server vanished", a failure signature)."""
    text = f"shard {shard} of managed run {run_id} leaves {server} ({why}) for a new server; nothing to do"
    notify(ctx, Event("server_replaced", ctx.project.name, server, text), once=f"replaced:{run_id}:{shard}:{server}")


@_never_raises
def announce_managed(ctx: Ctx, run_id: str, experiment: str, status: str, why: str | None, cost_usd: float) -> None:
    """A managed run done (completed, failed) or paused, with why; once per run and status (a paused run picked
    up and paused again for another reason is said again)."""
    if status == vocab.MANAGED_PAUSED:
        kind: EventKind = "managed_paused"
        text = f"managed run {run_id} paused: {why}; `tether run {experiment} --managed` picks it up"
    elif status == vocab.MANAGED_COMPLETED:
        kind = "managed_done"
        text = f"managed run {run_id} completed for ${cost_usd:.2f}; its merged results are in the results folder"
    elif status == vocab.MANAGED_FAILED:
        kind = "managed_done"
        text = f"managed run {run_id} failed: {why}; `tether progress` shows what finished"
    else:
        return
    notify(ctx, Event(kind, ctx.project.name, experiment, text), once=f"managed:{run_id}:{status}:{why}")
