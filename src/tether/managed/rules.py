"""The managed run's pure rules: options, budget, recovery, failure signatures, and the decisions."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from tether.config import ExperimentConfig
from tether.providers import STOPPED_STATES

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


def budget_refusal(
    max_usd: float | None,
    spent_usd: float,
    committed: Sequence[tuple[float, float]],
    new_dph: float,
    new_hours: float,
) -> str | None:
    """Why a rental at ``new_dph`` $/hr for about ``new_hours`` would cross ``max_usd``, or None (pure).

    ``committed``: ``(dph, hours)`` of every server the run holds, for its shard's estimated remaining work.
    """
    if max_usd is None:
        return None
    held = sum(dph * hours for dph, hours in committed)
    projected = spent_usd + held + new_dph * new_hours
    if projected <= max_usd + 1e-12:
        return None
    return (
        f"renting a server at ${new_dph:.4f}/hr for about {new_hours * 60:.0f} min would bring the run to "
        f"${projected:.4f} (${spent_usd:.4f} spent, ${held:.4f} committed), past --max-usd ${max_usd:.4f}"
    )


def shard_seconds_left(exp: ExperimentConfig, shards: int, done: int) -> float:
    """Estimated seconds of work left in one shard (pure): ``items``/``item_seconds`` of tether.toml."""
    if exp.items is None or exp.item_seconds is None:
        return UNKNOWN_SHARD_S
    per_shard = -(-exp.items // max(shards, 1))
    return max(0, per_shard - done) * exp.item_seconds / max(exp.concurrency, 1)


def failure_signature(exit_code: int | None, status: str, log_tail: str | None) -> str:
    """What makes two failures "the same" (pure): the status, the exit code and the last line of the log that
    tether did not write (a traceback's last line names the error)."""
    lines = [ln.strip() for ln in (log_tail or "").splitlines() if ln.strip() and not ln.startswith("[tether]")]
    last = lines[-1] if lines else ""
    return f"{status} (exit code {exit_code}): {last}" if last else f"{status} (exit code {exit_code})"


Action = str


def recovery_action(
    instance_state: str | None,
    restarted_before: bool,
    reachable_for: float | None,
    unreachable_after_s: float,
    own_host: bool,
) -> Action:
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
