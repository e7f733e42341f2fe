"""The agent registry: ``AGENT_STATUS.json`` made safe for many agents on one server (stdlib only, Python 3.8+).

The file
    A JSON list, one entry per line so ``cat`` still reads well. Each entry keeps the runbook's keys ``id``,
    ``experiment``, ``gpu_gb``, ``status``, ``started`` and adds what liveness and placement need::

        [
          {"id": "agent-1", "experiment": "A5", "gpu_gb": 20, "status": "running", "started": "2026-02-11T10:00:00Z",
           "pid": 4242, "pid_start": 81234, "boot_id": "7b04...", "host": "gpu-box", "heartbeat": "...",
           "lease_s": null, "gpus": [0], "ended": null, "note": null}
        ]

    ``status`` is ``running``, ``queued`` (waiting for room, in file order), ``completed``, ``failed`` or ``lost``
    (its owner died or stopped heart-beating; ``note`` says why). ``gpus`` are nvidia-smi indices; a request spread
    over k GPUs holds ``gpu_gb / k`` on each. Keys this module does not know are kept as they are.

Every change happens under an exclusive ``flock`` on the sidecar ``<path>.lock`` (bounded wait, then a
:class:`~tether.errors.RegistryError` naming the holder) and is written to a temporary file that is
``os.replace``-d over the old one, so a reader never sees half a file. (It is not fsynced: after a power loss
every owner is gone anyway, and the boot id tells.) The lock file must stay in place; if it is removed or replaced
anyway, a process that locked the old file re-locks the one the path names before it goes on, and a holder whose
lock file went away while it worked writes nothing (a RegistryError says so), so the change made meanwhile under
the new lock file is not overwritten.

Liveness
    An entry owned by a process stores ``pid`` + ``pid_start`` (``/proc/<pid>/stat`` field 22) + ``boot_id``; it is
    live only while all three still match, so a reused pid is not taken for the owner (without ``/proc`` the pid's
    existence is used). An entry with ``lease_s`` is also lost when its ``heartbeat`` (else ``started``) is older
    than the lease; :meth:`Registry.register` gives an entry without an owner process (``tether agents register``
    without ``--pid``) a lease of :data:`DEFAULT_PIDLESS_LEASE_S` unless told otherwise. Only a lease expires an
    entry by age: one with neither ``pid`` nor ``lease_s`` (the runbook's own shape) is never taken for dead; it
    counts until a person marks it done or removes it. Listings say what ends each hold (``held_until``) and warn
    about such an entry once it is older than :data:`DEFAULT_PIDLESS_LEASE_S`. Lost entries are marked at the next
    locked operation and hold nothing. Finished entries stay as history for ``history_s`` seconds.

Admission (one step under the lock)
    ``gpu_gb == 0`` (API-only) is always admitted, with no GPU visible. Otherwise, per GPU, each live running entry
    counts at max(declared share, measured use) (measured from ``nvidia-smi --query-compute-apps`` when its pids are
    visible), and memory the GPU reports as used but no live entry accounts for counts too, so a process outside
    the registry is not overrun; without per-process figures this is max(sum of reservations, used). The request
    goes on the fullest single GPU it fits on, else on the fewest GPUs with equal shares; the job gets those
    indices as ``CUDA_VISIBLE_DEVICES``. A refusal (:class:`NoRoom`) says what is free, what was asked, and who
    holds the rest. With ``wait`` the request queues: a queued request is admitted only when nothing queued before
    it is still waiting, so a large job is not starved by a stream of small ones (small requests do not overtake
    it either); requests without ``wait`` are refused while anyone queues.

Bad input never loses data: a file that is not a JSON list is never overwritten (a copy is kept aside as
``<path>.bad-<UTC time>`` and every operation refuses until :meth:`Registry.repair` rebuilds it from the entries
still readable in it and from the live processes of this registry: those whose environment carries an agent's
``TETHER_AGENT_ID`` and ``TETHER_AGENT_STATUS`` naming this very file, as every admitted job's does); odd entries are
kept, reported and counted conservatively, and a change to an entry rewrites only the fields it changes (an odd
value, or a key this module does not know, stays as it was written):

- ``gpu_gb`` missing, or not a JSON number (``"12"``, ``"lots"``, ``null``, ``true``), negative, NaN or infinite:
  the entry counts as the whole of every GPU it may be on (its ``gpus``, else all of them) until a person fixes it
  or marks it done; listings show ``gpu_gb`` as null with ``gpu_gb_counted`` saying so.
- ``gpu_gb`` above :data:`MAX_GPU_GB`: it counts as what it says (at most 10^9 GB), so nothing fits beside it.
- an unknown ``status`` counts as ``running``; unusable ``gpus`` count on every GPU.

Layout: :mod:`~tether.server.registry.entries` (the entry format and validation),
:mod:`~tether.server.registry.capacity` (GPU use, placement and refusals: pure functions),
:mod:`~tether.server.registry.store` (the lock, load, reclaim and atomic save, as one transaction),
:mod:`~tether.server.registry.repair` (rebuilding a damaged file) and :mod:`~tether.server.registry.core`
(:class:`Registry`, whose every operation is one transaction of the store).
"""

from __future__ import annotations

from tether.errors import NoRoom
from tether.server.procinfo import pid_start
from tether.server.registry.capacity import GpuUse, compute_use, place
from tether.server.registry.core import AdmitRequest, Attempt, Listing, Registry
from tether.server.registry.entries import (
    DEFAULT_HISTORY_S,
    DEFAULT_LOCK_TIMEOUT_S,
    DEFAULT_PATH,
    DEFAULT_PIDLESS_LEASE_S,
    ENV_EXPERIMENT,
    ENV_GPU_GB,
    ENV_ID,
    ENV_PATH,
    FILENAME,
    FINAL_STATUSES,
    LIVE_STATUSES,
    MAX_GPU_GB,
    MAX_ID_LEN,
    NO_PID,
    PATH_ENV,
    STATUSES,
    Entry,
    agent_env,
    default_path,
    floor_gb,
    fmt_gb,
    iso,
    parse_iso,
    resolve_path,
)

__all__ = [
    "DEFAULT_HISTORY_S",
    "DEFAULT_LOCK_TIMEOUT_S",
    "DEFAULT_PATH",
    "DEFAULT_PIDLESS_LEASE_S",
    "ENV_EXPERIMENT",
    "ENV_GPU_GB",
    "ENV_ID",
    "ENV_PATH",
    "FILENAME",
    "FINAL_STATUSES",
    "LIVE_STATUSES",
    "MAX_GPU_GB",
    "MAX_ID_LEN",
    "NO_PID",
    "PATH_ENV",
    "STATUSES",
    "AdmitRequest",
    "Attempt",
    "Entry",
    "GpuUse",
    "Listing",
    "NoRoom",
    "Registry",
    "agent_env",
    "compute_use",
    "default_path",
    "floor_gb",
    "fmt_gb",
    "iso",
    "parse_iso",
    "pid_start",
    "place",
    "resolve_path",
]
