"""tether's one vocabulary: run statuses, the server layout, and the shapes of the records both sides exchange.

Standard library only and Python 3.8+, because the server side (``python3 -m tether.server``) imports it on servers
with a bare ``python3``. Everything that names a run status, a path under a workspace root, or reads ``run.json``,
the progress scan or the manifest uses this module, so each is defined once.

Run statuses (``run.json``'s ``status``; the progress scan adds ``dead`` and ``broken``):

==============  ======  ==========================================================================================
status          live?   meaning
==============  ======  ==========================================================================================
``starting``    yes     the wrapper wrote its record and is being admitted (GPU registry) or starting the command
``running``     yes     the experiment runs
``completed``   no      it exited 0
``failed``      no      it exited non-zero, or never started (the reason is in its log)
``cancelled``   no      ``tether cancel`` stopped it
``refused``     no      the agent registry refused its GPU memory (exit code 4)
``dead``        no      ``run.json`` says live but neither the wrapper nor the experiment is alive
``broken``      no      ``run.json`` cannot be read as a run record (shown, never fatal for the other runs)
==============  ======  ==========================================================================================
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, Dict, Final, Literal, Tuple

STARTING = "starting"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
REFUSED = "refused"
DEAD = "dead"
BROKEN = "broken"

LIVE_STATUSES = frozenset({STARTING, RUNNING})
"""A run in one of these may be computing: never stop or destroy its server."""
FINAL_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED, REFUSED, DEAD, BROKEN})
"""A run in one of these has ended and will not change by itself."""
TROUBLE_STATUSES = frozenset({FAILED, DEAD, REFUSED, BROKEN})
"""Ended badly: the progress scan attaches the log's last lines."""
ALL_STATUSES = LIVE_STATUSES | FINAL_STATUSES


def is_live(status: str) -> bool:
    return status in LIVE_STATUSES


def is_final(status: str) -> bool:
    return status in FINAL_STATUSES


# ------------------------------------------------------------------------------------------ names
#: What an experiment or host name may be: it becomes part of run ids, folders and file names.
NAME_RULE = "letters, digits, '.', '_' and '-', not starting with '-'"

#: What a project name may be, in words (the rule of :func:`check_project_name`).
PROJECT_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or a digit"


def check_project_name(name: str) -> str | None:
    """Why ``name`` cannot be a project's name (it names the server folder and labels rentals), or None."""
    if not name or not (name[0].isascii() and name[0].isalnum()):
        return f"{name!r} is not a valid project name: it must start with a letter or a digit ({PROJECT_NAME_RULE})"
    bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return f"{name!r} is not a valid project name: {shown} may not be in it ({PROJECT_NAME_RULE})"
    return None


# ------------------------------------------------------------------------------------------ server layout
TETHER_DIR = ".tether"
"""tether's own files under a workspace root."""
RUNS_DIR = TETHER_DIR + "/runs"
LIB_DIR = TETHER_DIR + "/lib"
SETUP_SCRIPT = TETHER_DIR + "/setup.sh"
RENTAL_FILE = TETHER_DIR + "/rental.json"
"""Which rental a rented server's root belongs to (``{"provider", "instance_id", "name"}``), written by `tether up`."""
AGENT_STATUS = "AGENT_STATUS.json"
SETUP_LOG = "SETUP_LOG.txt"
#: In the login user's home on a Vast.ai instance: its presence stops the image's auto-tmux on SSH login.
NO_AUTO_TMUX = ".no_auto_tmux"
RUN_RECORD = "run.json"
RUN_LOG = "log"


def runs_dir(root: str) -> str:
    """``<root>/.tether/runs``: one folder per run."""
    return posixpath.join(root, RUNS_DIR)


def run_dir(root: str, run_id: str) -> str:
    return posixpath.join(root, RUNS_DIR, run_id)


def run_record_path(root: str, run_id: str) -> str:
    return posixpath.join(root, RUNS_DIR, run_id, RUN_RECORD)


def run_log_path(root: str, run_id: str) -> str:
    return posixpath.join(root, RUNS_DIR, run_id, RUN_LOG)


def lib_dir(root: str) -> str:
    return posixpath.join(root, LIB_DIR)


def agent_status_path(root: str) -> str:
    return posixpath.join(root, AGENT_STATUS)


def setup_log_path(root: str) -> str:
    return posixpath.join(root, SETUP_LOG)


# ------------------------------------------------------------------------------------------ record shapes
def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    out = float(value)
    return out if out == out and out not in (float("inf"), float("-inf")) else None


@dataclass(frozen=True)
class RunInfo:
    """One run as the progress scan reports it (its ``--json`` shape is a contract: see the README)."""

    id: str
    experiment: str | None
    status: str
    alive: bool = False
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    log: str | None = None
    results_dir: str | None = None
    completed: int = 0
    failed: int = 0
    total: int | None = None
    rate_per_s: float | None = None
    eta_s: float | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    log_tail: str | None = None
    problem: str | None = None
    """Why a ``broken`` run could not be read."""
    failed_by: dict[str, int] = field(default_factory=dict)
    """Failed items by kind (HTTP status or error type), when the checkpoint reports it."""
    wrapper_alive: bool | None = None
    """For a live run: whether its wrapper still runs (False: killed, while the experiment goes on computing)."""
    announced_by: str | None = None
    """``"server"`` when the run wrapper announced the run's end itself (``tether.server.notify``)."""

    @property
    def live(self) -> bool:
        return is_live(self.status)

    @property
    def final(self) -> bool:
        return is_final(self.status)

    @classmethod
    def from_json(cls, doc: Any) -> RunInfo:
        """Read one scan entry; anything of the wrong type is dropped, never trusted (the server is a third party)."""
        if not isinstance(doc, dict):
            return cls(id="?", experiment=None, status=BROKEN, problem="not a JSON object")
        status = _str(doc.get("status")) or BROKEN
        checkpoints = doc.get("checkpoints")
        failed_by = doc.get("failed_by")
        return cls(
            id=_str(doc.get("id")) or "?",
            experiment=_str(doc.get("experiment")),
            status=status,
            alive=doc.get("alive") is True,
            exit_code=_int(doc.get("exit_code")),
            started=_num(doc.get("started")),
            ended=_num(doc.get("ended")),
            log=_str(doc.get("log")),
            results_dir=_str(doc.get("results_dir")),
            completed=max(0, _int(doc.get("completed")) or 0),
            failed=max(0, _int(doc.get("failed")) or 0),
            total=_int(doc.get("total")),
            rate_per_s=_num(doc.get("rate_per_s")),
            eta_s=_num(doc.get("eta_s")),
            checkpoints=[c for c in checkpoints if isinstance(c, dict)] if isinstance(checkpoints, list) else [],
            log_tail=_str(doc.get("log_tail")),
            problem=_str(doc.get("problem")),
            failed_by=(
                {str(k): n for k, n in failed_by.items() if isinstance(n, int) and not isinstance(n, bool)}
                if isinstance(failed_by, dict)
                else {}
            ),
            wrapper_alive=doc.get("wrapper_alive") if isinstance(doc.get("wrapper_alive"), bool) else None,
            announced_by=_str(doc.get("announced_by")),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "experiment": self.experiment,
            "status": self.status,
            "alive": self.alive,
            "exit_code": self.exit_code,
            "started": self.started,
            "ended": self.ended,
            "log": self.log,
            "results_dir": self.results_dir,
            "completed": self.completed,
            "failed": self.failed,
            "total": self.total,
            "rate_per_s": self.rate_per_s,
            "eta_s": self.eta_s,
            "checkpoints": self.checkpoints,
        }
        if self.failed_by:
            out["failed_by"] = dict(self.failed_by)
        if self.wrapper_alive is not None:
            out["wrapper_alive"] = self.wrapper_alive
        if self.announced_by is not None:
            out["announced_by"] = self.announced_by
        if self.log_tail is not None:
            out["log_tail"] = self.log_tail
        if self.problem is not None:
            out["problem"] = self.problem
        return out


@dataclass(frozen=True)
class Scan:
    """The progress scan of one target: ``{"host", "time", "runs": [...]}``."""

    host: str
    time: float
    runs: list[RunInfo]
    attributed: bool = False
    """The server side gives each run only the checkpoints it wrote (an older one sums its whole results folder:
    its counts of an ended run are not frozen)."""

    def run(self, run_id: str) -> RunInfo | None:
        return next((r for r in self.runs if r.id == run_id), None)

    @classmethod
    def from_json(cls, doc: Any) -> Scan:
        if not isinstance(doc, dict):
            raise ValueError("the progress scan is not a JSON object")
        runs = doc.get("runs")
        return cls(
            host=_str(doc.get("host")) or "?",
            time=_num(doc.get("time")) or 0.0,
            runs=[RunInfo.from_json(r) for r in runs] if isinstance(runs, list) else [],
            attributed=doc.get("attributed") is True,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "time": self.time,
            "runs": [r.to_json() for r in self.runs],
            "attributed": self.attributed,
        }


@dataclass(frozen=True)
class RunRecordFile:
    """``<root>/.tether/runs/<id>/run.json`` as the wrapper writes it (the fields readers rely on)."""

    id: str
    experiment: str | None
    status: str
    pid: int = 0
    pid_start: int | None = None
    boot_id: str = ""
    child_pid: int | None = None
    child_start: int | None = None
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    log: str | None = None
    results_dir: str | None = None
    reason: str | None = None
    announced_by: str | None = None
    """``"server"``: the wrapper announces this run's end itself (written with the final status)."""
    counts: dict[str, Any] | None = None
    """Frozen by the wrapper when the run ended: ``{"completed", "failed", "total", "failed_by"}`` of the
    checkpoints this run wrote (later runs that reuse its results folder never change them)."""

    @classmethod
    def from_json(cls, doc: Any, run_id: str) -> RunRecordFile:
        """Read ``run.json``; raises ValueError naming what is wrong when it is not a run record."""
        if not isinstance(doc, dict):
            raise ValueError("run.json is not a JSON object")
        status = doc.get("status")
        if not isinstance(status, str) or status not in ALL_STATUSES:
            raise ValueError(f"run.json has status {status!r}")
        pid = doc.get("pid", 0)
        if pid is not None and _int(pid) is None:
            raise ValueError(f"run.json has pid {pid!r}")
        for key in ("results_dir", "log", "boot_id", "experiment"):
            value = doc.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"run.json has {key} {value!r}")
        return cls(
            id=_str(doc.get("id")) or run_id,
            experiment=_str(doc.get("experiment")),
            status=status,
            pid=_int(pid) or 0,
            pid_start=_int(doc.get("pid_start")),
            boot_id=_str(doc.get("boot_id")) or "",
            child_pid=_int(doc.get("child_pid")),
            child_start=_int(doc.get("child_start")),
            exit_code=_int(doc.get("exit_code")),
            started=_num(doc.get("started")),
            ended=_num(doc.get("ended")),
            log=_str(doc.get("log")),
            results_dir=_str(doc.get("results_dir")),
            reason=_str(doc.get("reason")),
            announced_by=_str(doc.get("announced_by")),
            counts=_counts(doc.get("counts")),
        )


def _counts(doc: Any) -> dict[str, Any] | None:
    """A run's frozen counts, read defensively (None when absent or not counts)."""
    if not isinstance(doc, dict):
        return None
    completed, failed, total = _int(doc.get("completed")), _int(doc.get("failed")), _int(doc.get("total"))
    if completed is None or failed is None or completed < 0 or failed < 0 or (total is not None and total < 0):
        return None
    failed_by = doc.get("failed_by")
    kinds = (
        {str(k): n for k, n in failed_by.items() if isinstance(n, int) and not isinstance(n, bool)}
        if isinstance(failed_by, dict)
        else {}
    )
    return {"completed": completed, "failed": failed, "total": total, "failed_by": kinds}


ManifestFiles = Dict[str, Tuple[int, float, str]]
"""A manifest's files (``python3 -m tether.server manifest``): relative path -> (size, mtime, sha256)."""


# ------------------------------------------------------------------------------------------ managed runs
# A managed run (``tether run EXP --managed``) and its shards, as local state, ``progress``, ``status`` and the
# dashboard name them. Client side only, but kept here with the other statuses.
ManagedStatus = Literal["running", "paused", "completed", "failed", "cancelled"]
"""Where a managed run stands."""
ShardStatus = Literal[
    "pending",
    "provisioning",
    "running",
    "restarting",
    "retiring",
    "finishing",
    "releasing",
    "completed",
    "failed",
    "paused",
    "cancelled",
]
"""Where one shard of a managed run stands (each value's meaning is on its constant below)."""
Action = Literal["none", "stop", "destroy", "rent", "start", "restart", "sync", "pull", "retire", "release", "say"]
"""What a controller (the autopilot's policies, a managed run's rules) decides to do about a server; one type for
the whole project. ``none``/``stop``/``destroy`` are the idle policies' (:mod:`tether.cost`); a managed shard's rules
add ``rent`` (a server for it), ``start`` (its run on a host the user owns), ``restart`` (its stopped server),
``sync`` (its journal home), ``pull`` (its results home, verified), ``retire`` (destroy its server, verified, before
another), ``release`` (destroy the server of a shard whose results are home) and ``say``."""

MANAGED_RUNNING: Final = "running"
"""A controller drives it (or drove it last: ``tether run EXP --managed`` again picks it up)."""
MANAGED_PAUSED: Final = "paused"
"""A shard needs a server that the budget (or the provider) does not allow now; the others went on."""
MANAGED_COMPLETED: Final = "completed"
MANAGED_FAILED: Final = "failed"
"""A shard failed the same way on two servers in a row, or items failed; what finished is kept and merged."""
MANAGED_CANCELLED: Final = "cancelled"
MANAGED_FINAL = frozenset({MANAGED_COMPLETED, MANAGED_FAILED, MANAGED_CANCELLED})

SHARD_PENDING: Final = "pending"
"""Needs a server (first start, or after its server was lost)."""
SHARD_PROVISIONING: Final = "provisioning"
"""Renting (or adopting) a server, setting it up, pushing code and the last synced journal, starting the shard."""
SHARD_RUNNING: Final = "running"
SHARD_RESTARTING: Final = "restarting"
"""Its stopped (preempted) server is being started again: its disk still holds the journal."""
SHARD_RETIRING: Final = "retiring"
"""Its old server is being destroyed (verified) before another is rented: never two servers for one shard."""
SHARD_FINISHING: Final = "finishing"
"""Completed on its server: the final pull, verified against the server's manifest (bounded retries)."""
SHARD_RELEASING: Final = "releasing"
"""Its results are home and verified; its server is being destroyed (a controller killed here only destroys it)."""
SHARD_COMPLETED: Final = "completed"
SHARD_FAILED: Final = "failed"
SHARD_PAUSED: Final = "paused"
SHARD_CANCELLED: Final = "cancelled"
SHARD_FINAL = frozenset({SHARD_COMPLETED, SHARD_FAILED, SHARD_CANCELLED})
