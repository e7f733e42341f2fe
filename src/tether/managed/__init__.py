"""Managed runs: ``tether run EXP --managed [--shards K]``, an experiment that survives preemption and dead servers.

A controller (:class:`Controller`, the loop ``tether run --managed`` runs in the foreground) rents K servers
cheapest first within the budget (or takes the user's own ``--on`` hosts), sets each up and starts shard ``i`` of
K there (the run wrapper sets ``TETHER_SHARD=i/K``; :mod:`tether.checkpoint.shard` gives the shard its items by a
stable hash of their ids). Every tick it asks the provider for the state of every server of the run (one call) and
scans each server once; every ``sync_every`` it brings each shard's journal home, incrementally (the lines after
the last sync, one round trip: ``python3 -m tether.server journal``). When a server is preempted or stopped it is
started again (its disk holds the journal; faster and cheaper than a new one); when it exited, vanished, or stays
unreachable past ``unreachable_after_s``, it is destroyed (verified gone) and a new one is rented, set up, given
the code and the last synced journal, and the shard resumes by item id. A shard whose experiment fails the same
way on two servers in a row stops with its log tail; the others go on. A completed shard's results folder is pulled
with the one verified pull (:func:`tether.pull.pull`), the shard is recorded home (``releasing``), and only then is
its server destroyed (verified). When every shard is final, what they finished is merged into the project's
results folder in item order, byte for byte what a single run writes; with failed or missing items, the finished
ones all the same (``"failed": n``) plus a journal from which the same command resumes every finished item.

Decide, then act: :mod:`.rules` holds the pure decisions (one per shard status, and one per ended job) over
typed statuses, updates and actions; :class:`Controller` gathers observations and applies decisions in one place;
:mod:`.jobs` are the I/O jobs it runs in threads; :mod:`.local` the files on this machine and the lock;
:mod:`.launch` creating, picking up and cancelling runs; :mod:`.views` what progress and status show. Every
server a run rents carries the run as its owner (``meta.owner``): the autopilot, ``stop`` and ``destroy`` leave it
alone while that run's controller lives.

Safety: a rental is checked against ``--max-usd`` (and ``[policy]``) before it is made, replacements included; a
rental that would cross it pauses the shard with the reason instead (the run then stops when nothing else runs,
and the same command resumes it). A shard never runs on two servers at once: the old server is verified stopped
or destroyed first. Everything a controller decides is in local state first (``managed_runs``, ``managed_shards``,
the rental's reservation, the run id before the start), so a controller killed at any moment is picked up by the
next ``tether run EXP --managed`` and nothing is rented twice. One controller per experiment at a time (a lock
under ``$TETHER_HOME/managed``); a second one refuses. Local copies live under ``$TETHER_HOME/managed/<id>/``.
"""

from tether.managed.controller import Controller, Outcome
from tether.managed.jobs import Acquired, Finished, acquire_job, final_job, retire_job
from tether.managed.launch import cancel, detach, find, prepare, run_managed, unfinished, uses_checkpoint
from tether.managed.local import apply_sync, controller_alive, controller_lock, have_args, run_dir, shard_dir
from tether.managed.rules import (
    Options,
    budget_refusal,
    failure_signature,
    new_id,
    recovery_action,
    server_name,
    shard_seconds_left,
)
from tether.managed.views import ManagedView, shard_json, views

__all__ = [
    "Acquired",
    "Controller",
    "Finished",
    "ManagedView",
    "Options",
    "Outcome",
    "acquire_job",
    "apply_sync",
    "budget_refusal",
    "cancel",
    "controller_alive",
    "controller_lock",
    "detach",
    "failure_signature",
    "final_job",
    "find",
    "have_args",
    "new_id",
    "prepare",
    "recovery_action",
    "retire_job",
    "run_dir",
    "run_managed",
    "server_name",
    "shard_dir",
    "shard_json",
    "shard_seconds_left",
    "unfinished",
    "uses_checkpoint",
    "views",
]
