"""The managed run's pure rules: options, budget, recovery, failure signatures, and the decisions.

Decide, then act: :func:`decide` turns (a shard's record, what the controller observed of it, the clock, the
options) into a :class:`Decision` (a typed partial update of the record, the actions to run, what to say), and
:func:`on_job` does the same for a job that ended; :func:`run_next` says what the run as a whole does next. Nothing
here does I/O or reads the clock: :class:`tether.managed.controller.Controller` applies decisions and runs actions
in one place, and the model test drives these functions through random event orders.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tether import vocab
from tether.config import ExperimentConfig
from tether.ledger import Budget, Candidate, Commitment, Limits, refusal
from tether.plan import estimate_duration
from tether.providers import STOPPED_STATES
from tether.state import ManagedRunRecord, ManagedShardRecord, ShardUpdate
from tether.transport.base import Backoff

#: A rental is budgeted for the shard's estimated remaining work plus this (set-up, the final pull).
RENTAL_OVERHEAD_S = 300.0
#: A rental whose shard has no estimate (no ``items``/``item_seconds`` in tether.toml) is budgeted for this long.
UNKNOWN_SHARD_S = 3600.0
#: Failed attempts at getting a shard a server (provider errors, set-up failures) before the shard pauses.
MAX_PROVISION_ATTEMPTS = 5
#: Failed final pulls of a shard (its server answered, the pull did not) before the shard fails.
MAX_FINAL_ATTEMPTS = 5
#: A run started this recently may not have written its record yet: its absence is not a failure.
START_GRACE_S = 20.0
#: The one backoff of a shard's retries (provider errors, set-up failures, final pulls, destroys).
RETRY = Backoff(retries=max(MAX_PROVISION_ATTEMPTS, MAX_FINAL_ATTEMPTS), first=2.0, factor=2.0, cap=60.0)


def retry_delay(failures: int) -> float:
    """Seconds before a shard's next try after ``failures`` failed ones in a row (the shared backoff)."""
    delays = RETRY.delays()
    return delays[max(0, min(failures, len(delays)) - 1)]


@dataclass(frozen=True)
class Options:
    """What ``tether run EXP --managed`` was asked (the CLI's flags), and the controller's timings."""

    shards: int = 1
    profile: str | None = None
    max_usd: float | None = None
    sync_every: float = 120.0
    hosts: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    poll_s: float = 10.0
    """How often the controller looks at every server (one provider call, one scan per server)."""
    unreachable_after_s: float = 300.0
    """A running server that does not answer for this long is destroyed and replaced."""


# ------------------------------------------------------------------------------------------ pure rules

Recovery = Literal["ok", "wait", "restart", "replace", "retire"]
"""What to do about a shard's server that may not be running (:func:`recovery_action`)."""


def budget_refusal(
    max_usd: float | None,
    spent_usd: float,
    committed: Sequence[tuple[float, float]],
    new_dph: float,
    new_hours: float,
) -> str | None:
    """Why a rental at ``new_dph`` $/hr for about ``new_hours`` would cross ``max_usd``, or None (pure; the one
    commitment rule of :mod:`tether.ledger`).

    ``committed``: ``(dph, hours)`` of every server the run holds, for its shard's estimated remaining work.
    """
    held = [Commitment("", "run", dph, hours, 0.0, dph, True) for dph, hours in committed]
    spent = Commitment("", "run", 0.0, 0.0, spent_usd, 0.0, False)
    return refusal(
        Candidate(new_dph, "renting a server"), [spent, *held], Limits(), budget=Budget("run", max_usd, new_hours)
    )


def shard_budget(run: ManagedRunRecord, exp: ExperimentConfig, done: int) -> Budget:
    """What one rental of ``run`` may commit: the run's ``--max-usd`` over all its rentals (scope: the run id),
    each committed for its shard's estimated remaining work plus the overhead."""
    return Budget(run.id, run.max_usd, (shard_seconds_left(exp, run.shards, done) + RENTAL_OVERHEAD_S) / 3600)


def shard_seconds_left(exp: ExperimentConfig, shards: int, done: int) -> float:
    """Estimated seconds of work left in one shard (pure): the one duration estimate
    (:func:`tether.plan.estimate_duration`) of the shard's items not done yet."""
    if exp.items is None:
        return UNKNOWN_SHARD_S
    per_shard = -(-exp.items // max(shards, 1))
    seconds = estimate_duration(exp, max(0, per_shard - done))
    return UNKNOWN_SHARD_S if seconds is None else seconds


def failure_signature(exit_code: int | None, status: str, log_tail: str | None) -> str:
    """What makes two failures "the same" (pure): the status, the exit code and the last line of the log that
    tether did not write (a traceback's last line names the error)."""
    lines = [ln.strip() for ln in (log_tail or "").splitlines() if ln.strip() and not ln.startswith("[tether]")]
    last = lines[-1] if lines else ""
    return f"{status} (exit code {exit_code}): {last}" if last else f"{status} (exit code {exit_code})"


def recovery_action(
    instance_state: str | None,
    restarted_before: bool,
    reachable_for: float | None,
    unreachable_after_s: float,
    own_host: bool,
) -> Recovery:
    """What to do about a shard's server that is not plainly running (pure).

    ``instance_state``: the provider's state (None for a host the user owns); ``reachable_for``: seconds since
    the server last answered (None: it answers). Returns ``wait``, ``restart`` (start the stopped server again),
    ``replace`` (it is gone: rent another), ``retire`` (destroy it, verified, then rent another) or ``ok``.
    """
    if own_host:
        return "ok" if reachable_for is None else "wait"  # never replaced: tether cannot verify it stopped
    if instance_state == "gone":
        return "replace"
    if instance_state in STOPPED_STATES:
        return "retire" if restarted_before else "restart"
    if instance_state in ("exited", "unknown"):
        return "retire"
    if instance_state in ("loading", "creating"):
        return "wait"
    if reachable_for is not None and reachable_for > unreachable_after_s:
        return "retire"
    return "ok" if reachable_for is None else "wait"


def new_id(experiment: str) -> str:
    return f"{experiment}-m{secrets.token_hex(3)}"


def server_name(run_id: str, shard: int, attempt: int) -> str:
    """The name of the server rented for ``shard``'s ``attempt``-th server (a [hosts]-style name)."""
    return f"{run_id}-s{shard}-{attempt}"


# ------------------------------------------------------------------------------------------ decisions


class Ending(enum.Enum):
    """Why a shard or a run stops (paused, failed or cancelled), each with the sentence it is told in."""

    BUDGET = "a rental would cross the budget"
    PROVIDER = "the provider kept failing"
    SAME_FAILURE_TWICE = "it failed the same way on two servers in a row"
    FINAL_PULL = "its results could not be brought home"
    RELEASE = "its results are home but its server could not be destroyed"
    ITEMS_FAILED = "items failed"
    CANCELLED = "cancelled"

    def said(self, detail: str = "") -> str:
        return f"{self.value}: {detail}" if detail else self.value


JobKind = Literal["acquire", "pull", "retire", "release", "discard"]
"""The I/O jobs a controller runs in threads; each :data:`vocab.Action` that is not ``sync``/``say`` maps to one."""

JOB_OF: dict[vocab.Action, tuple[JobKind, str]] = {
    "rent": ("acquire", "rent"),
    "start": ("acquire", "own"),
    "restart": ("acquire", "restart"),
    "pull": ("pull", ""),
    "retire": ("retire", ""),
    "release": ("release", ""),
    "destroy": ("discard", ""),
}


@dataclass(frozen=True)
class Observation:
    """What the controller saw of one shard this tick (gathered before deciding)."""

    instance: str | None = None
    """The provider's state of its rented server (None: a host the user owns, or not known this tick)."""
    provider_asked: bool = True
    """False when the provider could not be asked this tick (nothing is concluded from silence)."""
    answered: bool = False
    """Its server answered the progress scan."""
    run: vocab.RunInfo | None = None
    """Its current run, as the scan saw it (None: not on the server)."""
    run_young: bool = False
    """Its run was started less than START_GRACE_S ago (its record may not be written yet)."""
    budget: str | None = None
    """Why a rental now would cross the budget (asked only for a pending shard that rents)."""
    run_id: str = ""
    """A fresh run id, for a decision that starts a run."""
    home: bool = False
    """A finishing shard's results were pulled home and verified from its server after its run completed (a
    controller killed before it recorded that must not pull from a server that is gone, nor rent another)."""


@dataclass(frozen=True)
class JobResult:
    """How a job of a shard ended."""

    kind: JobKind
    ok: bool
    error: str = ""
    refused: bool = False
    """A refusal by policy (the budget, a host holding foreign results): the shard pauses with it."""
    permanent: bool = False
    """An error that the same try again cannot cure (e.g. a shard's code ran every item)."""
    run_failure: str | None = None
    """The experiment failed at once on its new server: its failure signature."""
    log_tail: str | None = None
    adopted: bool = False
    server: str | None = None


@dataclass(frozen=True)
class Decision:
    """What to change in a shard's record, the actions to run (in order), and what to tell the user."""

    update: ShardUpdate = field(default_factory=lambda: ShardUpdate())
    actions: tuple[vocab.Action, ...] = ()
    say: str | None = None
    recovery: tuple[str, str] | None = None
    """A lost server being recovered: (the provider's state, what is done about it), for the notification."""


NOTHING = Decision()


def decide(sh: ManagedShardRecord, obs: Observation, now: float, opts: Options) -> Decision:
    """The next step of a shard that has no job in flight (pure)."""
    if sh.status in vocab.SHARD_FINAL or sh.status == vocab.SHARD_PAUSED:
        return NOTHING
    if sh.retry_at is not None and now < sh.retry_at:
        return NOTHING
    return _BY_STATUS[sh.status](sh, obs, now, opts)


def _pending(sh: ManagedShardRecord, obs: Observation, now: float, opts: Options) -> Decision:
    if sh.own_host:
        return Decision(ShardUpdate(status=vocab.SHARD_PROVISIONING, run=obs.run_id), ("start",))
    if obs.budget is not None:
        return _paused(sh, Ending.BUDGET.said(f"{obs.budget}; nothing was rented for shard {sh.shard}"))
    attempt = sh.attempt + 1
    update = ShardUpdate(
        status=vocab.SHARD_PROVISIONING, server=server_name(sh.run_id, sh.shard, attempt), run=obs.run_id
    )
    update["attempt"] = attempt
    return Decision(update, ("rent",))


def _provisioning(sh: ManagedShardRecord, obs: Observation, now: float, opts: Options) -> Decision:
    return Decision(actions=("start",) if sh.own_host else ("rent",))


def _restarting(sh: ManagedShardRecord, obs: Observation, now: float, opts: Options) -> Decision:
    return Decision(actions=("restart",))


def _retiring(sh: ManagedShardRecord, obs: Observation, now: float, opts: Options) -> Decision:
    return Decision(actions=("retire",))


def _releasing(sh: ManagedShardRecord, obs: Observation, now: float, opts: Options) -> Decision:
    if sh.own_host or not sh.server:
        return Decision(ShardUpdate(status=vocab.SHARD_COMPLETED))
    return Decision(actions=("release",))


def _finishing(sh: ManagedShardRecord, obs: Observation, now: float, opts: Options) -> Decision:
    """Its run completed: pull its results (again, after a failed try), unless its server was lost meanwhile."""
    if obs.home:
        update = ShardUpdate(status=vocab.SHARD_RELEASING, failures=0, retry_at=None)
        update["synced"] = sh.completed  # all of it is home
        return Decision(update, () if sh.own_host else ("release",), f"shard {sh.shard} is home and verified.")
    if sh.own_host or obs.instance in (None, "running"):
        return Decision(actions=("pull",))
    if not obs.provider_asked:
        return NOTHING
    action = recovery_action(obs.instance, sh.restarts > 0, None, opts.unreachable_after_s, sh.own_host)
    if action in ("ok", "wait"):
        return NOTHING
    return _recover(sh, action, obs.instance, obs, ShardUpdate())


def _running(sh: ManagedShardRecord, obs: Observation, now: float, opts: Options) -> Decision:
    """Is its server there, does it answer, how far is its run?"""
    state = None if sh.own_host else obs.instance
    if not sh.own_host and (state is None or not obs.provider_asked):
        return NOTHING  # the provider could not be asked this tick
    update = ShardUpdate()
    last_seen = sh.last_seen
    if obs.answered:
        update["last_seen"] = last_seen = now
    reachable_for = None if obs.answered else now - (last_seen or sh.updated)
    action = recovery_action(state, sh.restarts > 0, reachable_for, opts.unreachable_after_s, sh.own_host)
    if action == "wait":
        said = None if obs.answered else f"shard {sh.shard}: {sh.server} does not answer; waiting."
        return Decision(update, say=said)
    if action != "ok":
        return _recover(sh, action, state or "unreachable", obs, update)
    if obs.run is None:
        if obs.run_young:
            return Decision(update)
        return _run_failed(sh, "its run never started on the server (no run record)", None, obs, update)
    update["completed"] = obs.run.completed
    update["total"] = obs.run.total
    if obs.run.status == vocab.COMPLETED:
        update["status"] = vocab.SHARD_FINISHING
        return Decision(update, ("pull",), f"shard {sh.shard} completed; pulling its results.")
    if obs.run.final:
        signature = failure_signature(obs.run.exit_code, obs.run.status, obs.run.log_tail)
        failed = _run_failed(sh, signature, obs.run.log_tail, obs, update)
        return Decision(failed.update, ("sync", *(a for a in failed.actions if a != "sync")), failed.say)
    return Decision(update)


_BY_STATUS = {
    vocab.SHARD_PENDING: _pending,
    vocab.SHARD_PROVISIONING: _provisioning,
    vocab.SHARD_RESTARTING: _restarting,
    vocab.SHARD_RETIRING: _retiring,
    vocab.SHARD_FINISHING: _finishing,
    vocab.SHARD_RELEASING: _releasing,
    vocab.SHARD_RUNNING: _running,
}


def _recover(sh: ManagedShardRecord, action: Recovery, state: str, obs: Observation, update: ShardUpdate) -> Decision:
    why = {"gone": "vanished", "preempted": "was preempted", "stopped": "was stopped"}.get(state, state)
    said = f"shard {sh.shard}'s server {sh.server} {why}; recovering ({action})."
    update = ShardUpdate(**update, recoveries=sh.recoveries + 1, reason=f"server {why}")
    if action == "restart":
        update.update({"status": vocab.SHARD_RESTARTING, "run": obs.run_id})
        return Decision(update, ("restart",), said, (state, action))
    update["restarts"] = 0
    if action == "replace":
        update.update({"status": vocab.SHARD_PENDING, "server": None, "run": None})
        return Decision(update, (), said, (state, action))
    update["status"] = vocab.SHARD_RETIRING
    return Decision(update, ("retire",), said, (state, action))


def _run_failed(
    sh: ManagedShardRecord, signature: str, log_tail: str | None, obs: Observation, update: ShardUpdate
) -> Decision:
    """The experiment itself failed: once, it goes to another server; the same way twice, the shard stops."""
    if sh.last_failure == signature:
        tail = (log_tail or "").rstrip()
        why = Ending.SAME_FAILURE_TWICE.said(signature) + (f"\nIts log ends with:\n{tail}" if tail else "")
        return _failed(sh, why, update)
    said = f"shard {sh.shard} {signature} on {sh.server}; trying it on another server."
    update = ShardUpdate(**update, last_failure=signature, recoveries=sh.recoveries + 1)
    if sh.own_host:
        update.update({"status": vocab.SHARD_PROVISIONING, "run": obs.run_id})
        return Decision(update, ("start",), said)
    update.update({"status": vocab.SHARD_RETIRING, "restarts": 0, "reason": signature})
    return Decision(update, ("retire",), said)


def _failed(sh: ManagedShardRecord, why: str, update: ShardUpdate | None = None) -> Decision:
    """The shard stops: what it journaled comes home, its rented server is destroyed (verified)."""
    update = ShardUpdate(**(update or ShardUpdate()), status=vocab.SHARD_FAILED, reason=why, retry_at=None)
    actions: tuple[vocab.Action, ...] = ("sync",) if sh.server else ()
    if sh.server and not sh.own_host:
        actions += ("destroy",)
    return Decision(update, actions, f"shard {sh.shard} stopped: {why}")


def _paused(sh: ManagedShardRecord, why: str, *, nothing_rented: bool = False) -> Decision:
    """The shard waits for the same command again. ``nothing_rented``: the rental was refused before it was made
    (its name is forgotten, a resume rents afresh); otherwise a server under its name may exist, and a resume
    destroys it first (:func:`resume_paused`)."""
    update = ShardUpdate(status=vocab.SHARD_PAUSED, reason=why)
    if nothing_rented and sh.server and not sh.own_host:
        update.update({"server": None, "run": None})
    return Decision(update, (), f"shard {sh.shard} paused: {why}")


def on_job(sh: ManagedShardRecord, job: JobResult, now: float) -> Decision:
    """A shard's job ended (pure): what its record becomes."""
    i = sh.shard
    if job.kind == "discard":
        return NOTHING
    if job.ok:
        if job.kind == "acquire":
            how = "found running" if job.adopted else "started"
            update = ShardUpdate(status=vocab.SHARD_RUNNING, last_seen=now, retry_at=None, reason=None, failures=0)
            return Decision(update, (), f"shard {i} {how} on {job.server or sh.server} (run {sh.run}).")
        if job.kind == "pull":
            update = ShardUpdate(status=vocab.SHARD_RELEASING, reason=None, failures=0, retry_at=None)
            update["completed"] = update["synced"] = sh.total or sh.completed  # all of it is home now
            return Decision(update, (), f"shard {i} is home and verified.")
        if job.kind == "release":
            return Decision(ShardUpdate(status=vocab.SHARD_COMPLETED, failures=0, retry_at=None))
        return Decision(ShardUpdate(status=vocab.SHARD_PENDING, server=None, run=None, failures=0, retry_at=None))
    if job.refused:
        return _paused(sh, job.error, nothing_rented=job.kind == "acquire" and sh.status == vocab.SHARD_PROVISIONING)
    if job.kind == "acquire" and job.run_failure is not None:
        return _run_failed(sh, job.run_failure, job.log_tail, Observation(run_id=sh.run or ""), ShardUpdate())
    failures = sh.failures + 1
    delay = retry_delay(failures)
    if job.kind == "pull":
        # Bounded: the count is not reset by seeing the run completed again, only by a pull that verified.
        if job.permanent or failures >= MAX_FINAL_ATTEMPTS:
            tries = "" if job.permanent else f" ({failures} tries)"
            return _failed(sh, Ending.FINAL_PULL.said(f"{job.error}{tries}; what was synced is kept"))
        said = f"shard {i}'s final pull failed ({job.error}); trying again in {delay:.0f} s."
        return Decision(ShardUpdate(failures=failures, retry_at=now + delay), (), said)
    if job.kind == "release":
        if failures >= MAX_PROVISION_ATTEMPTS:
            why = Ending.RELEASE.said(f"{sh.server}: {job.error}; destroy it with `tether destroy {sh.server}`")
            return _paused(sh, why)
        said = f"shard {i}: destroying {sh.server} failed ({job.error}); trying again in {delay:.0f} s."
        return Decision(ShardUpdate(failures=failures, retry_at=now + delay), (), said)
    if failures >= MAX_PROVISION_ATTEMPTS:
        why = f"{job.error} (after {failures} attempts)"
        if sh.server and not sh.own_host and job.kind == "retire":
            why += f"; {sh.server} may still exist: `tether destroy {sh.server}`"
        return _paused(sh, why)
    said = f"shard {i}: {job.error} Retrying in {delay:.0f} s."
    if job.kind == "retire":
        return Decision(ShardUpdate(failures=failures, retry_at=now + delay), (), said)
    if sh.status == vocab.SHARD_RESTARTING:
        # The stopped server did not come back: destroy it (verified) and rent another.
        update = ShardUpdate(status=vocab.SHARD_RETIRING, failures=failures, restarts=sh.restarts + 1)
        return Decision(update, (), said)
    if not sh.own_host:
        return Decision(ShardUpdate(status=vocab.SHARD_RETIRING, failures=failures, retry_at=now + delay), (), said)
    return Decision(ShardUpdate(status=vocab.SHARD_PENDING, failures=failures, retry_at=now + delay), (), said)


def resume_paused(sh: ManagedShardRecord, server_exists: bool) -> ShardUpdate:
    """A paused shard picked up by the same command (pure): one whose results are home only destroys its server;
    one whose server may still exist destroys it (verified) before another is rented; the rest need a server."""
    update = ShardUpdate(reason=None, failures=0, retry_at=None)
    if (sh.reason or "").startswith(Ending.RELEASE.value):
        update["status"] = vocab.SHARD_RELEASING
    elif sh.server and not sh.own_host and server_exists:
        update["status"] = vocab.SHARD_RETIRING
    else:
        update["status"] = vocab.SHARD_PENDING
    return update


RunNext = Literal["go", "finish", "pause", "cancel"]


def run_next(shards: Sequence[ManagedShardRecord], jobs_in_flight: int, cancel_requested: bool) -> RunNext:
    """What the run as a whole does after a tick (pure)."""
    if cancel_requested:
        return "cancel"
    if jobs_in_flight:
        return "go"
    if all(s.status in vocab.SHARD_FINAL for s in shards):
        return "finish"
    if not [s for s in shards if s.status not in vocab.SHARD_FINAL and s.status != vocab.SHARD_PAUSED]:
        return "pause"
    return "go"
