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
way on two servers in a row stops with its log tail; the others go on. When every shard is complete each shard's
results folder has been pulled and verified against the server's manifest (and its server destroyed, verified),
and the shards' final files are merged into one ``results.json`` in item order, byte for byte what a single run
writes.

Safety: a rental is checked against ``--max-usd`` (and ``[policy]``) before it is made, replacements included; a
rental that would cross it pauses the shard with the reason instead (the run then stops when nothing else runs,
and the same command resumes it). A shard never runs on two servers at once: the old server is verified stopped
or destroyed first. Everything a controller decides is in local state first (``managed_runs``, ``managed_shards``,
the rental's reservation, the run id before the start), so a controller killed at any moment is picked up by the
next ``tether run EXP --managed`` and nothing is rented twice. One controller per experiment at a time (a lock
under ``$TETHER_HOME/managed``); a second one refuses. Local copies live under ``$TETHER_HOME/managed/<id>/``.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from tether import cost, provision, pull, rentals, runs, vocab
from tether.checkpoint import shard as shard_lib
from tether.config import ExperimentConfig, Project
from tether.context import Ctx
from tether.errors import (
    CheckpointError,
    CommandFailed,
    ConfigError,
    PolicyRefusal,
    ProviderError,
    TetherError,
)
from tether.hosts import Target, resolve
from tether.paths import private_dir, tether_home
from tether.providers import STOPPED_STATES, Instance, Provider, provider_for
from tether.renting import observe as observe_instance
from tether.renting import wait_running
from tether.state import ManagedRunRecord, ManagedShardRecord, State, open_state
from tether.transport.base import Backoff
from tether.transport.ssh import SSHTransport

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


# ------------------------------------------------------------------------------------------ paths and locks


def run_dir(run_id: str) -> Path:
    """``$TETHER_HOME/managed/<id>``: the controller's log and each shard's local copies."""
    return tether_home() / "managed" / run_id


def shard_dir(run_id: str, shard: int) -> Path:
    """Where shard ``shard``'s results folder is copied on this machine (same layout as the project: the
    experiment's ``results`` path under it)."""
    return run_dir(run_id) / f"shard-{shard}"


def _lock_path(experiment: str) -> Path:
    return private_dir(tether_home() / "managed") / f"{experiment}.lock"


@contextlib.contextmanager
def controller_lock(experiment: str) -> Iterator[tuple[bool, str]]:
    """Hold the controller lock of ``experiment`` (non-blocking): yields ``(held, holder)``; ``holder`` is what
    the lock file says of the process holding it when ``held`` is False."""
    path = _lock_path(experiment)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            yield False, fh.read().strip()
            return
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}\n")
            fh.flush()
            yield True, ""
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def controller_alive(experiment: str) -> bool:
    """Whether a controller holds ``experiment``'s lock now."""
    with controller_lock(experiment) as (held, _holder):
        return not held


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


# ------------------------------------------------------------------------------------------ checkpoint usage


def _entry_file(project: Project, command: Sequence[str]) -> Path | None:
    """The Python file an experiment's command runs (``python x.py``, ``python -m pkg.mod``), if it names one."""
    root = project.root
    for i, word in enumerate(command):
        if word == "-m" and i + 1 < len(command):
            base = root / Path(*command[i + 1].split("."))
            for candidate in (base.with_suffix(".py"), base / "__main__.py"):
                if candidate.is_file():
                    return candidate
            return None
        if word.endswith(".py"):
            path = (root / word).resolve()
            return path if path.is_file() else None
    return None


def _imports(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return []
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names]
    return found


def uses_checkpoint(project: Project, exp: ExperimentConfig, *, depth: int = 3) -> tuple[bool, str]:
    """Whether the experiment's code imports ``tether.checkpoint`` (its entry file, or the project's modules it
    imports, ``depth`` levels down), and what was looked at (for the message)."""
    entry = _entry_file(project, exp.command)
    if entry is None:
        return False, f"its command `{' '.join(exp.command)}` names no Python file of the project"
    seen: set[Path] = set()
    frontier = [entry]
    for _ in range(depth + 1):
        nxt: list[Path] = []
        for path in frontier:
            if path in seen:
                continue
            seen.add(path)
            for name in _imports(path):
                if name == "tether.checkpoint" or name.startswith("tether.checkpoint."):
                    return True, str(path.relative_to(project.root))
                base = project.root / Path(*name.split("."))
                for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                    if candidate.is_file():
                        nxt.append(candidate)
        frontier = nxt
    rel = str(entry.relative_to(project.root)) if entry.is_relative_to(project.root) else str(entry)
    return False, f"{rel} does not import tether.checkpoint"


# ------------------------------------------------------------------------------------------ creating a run


def new_id(experiment: str) -> str:
    return f"{experiment}-m{secrets.token_hex(3)}"


def server_name(run_id: str, shard: int, attempt: int) -> str:
    """The name of the server rented for ``shard``'s ``attempt``-th server (a [hosts]-style name)."""
    return f"{run_id}-s{shard}-{attempt}"


def unfinished(st: State, experiment: str) -> ManagedRunRecord | None:
    found = [r for r in st.managed_runs(experiment) if r.status not in vocab.MANAGED_FINAL]
    return found[-1] if found else None


def _validate(ctx: Ctx, experiment: str, opts: Options) -> str:
    """Refuse bad options before anything is rented; returns the sync mode (``journal`` or ``folder``)."""
    project = ctx.project
    exp = project.experiment(experiment)
    if opts.shards < 1:
        raise ConfigError(f"--shards {opts.shards} is not a number of servers.", "Give --shards 1 or more.")
    if exp.items is not None and opts.shards > max(exp.items, 1):
        raise ConfigError(
            f"--shards {opts.shards} is more than the {exp.items} items of {experiment} (tether.toml), so "
            f"{opts.shards - exp.items} servers would have nothing to do; nothing was rented.",
            f"Use --shards {max(exp.items, 1)} or fewer.",
        )
    if opts.max_usd is not None and opts.max_usd <= 0:
        raise ConfigError(f"--max-usd {opts.max_usd:g} is not a budget.", "Give a positive amount of dollars.")
    for host in opts.hosts:
        if host not in project.config.hosts:
            raise ConfigError(
                f"--on {host}: {host} is not a [hosts.{host}] entry of {project.path}; nothing was rented.",
                "Managed runs take only servers you own with --on (rented ones come from --profile).",
            )
    if len(opts.hosts) > opts.shards:
        raise ConfigError(
            f"--on names {len(opts.hosts)} hosts for {opts.shards} shards; nothing was started.",
            f"Give --shards {len(opts.hosts)} or name fewer hosts.",
        )
    if len(set(opts.hosts)) != len(opts.hosts):
        raise ConfigError("--on names a host twice; each host takes one shard.", "Name each host once.")
    checkpointed, why = uses_checkpoint(project, exp)
    if opts.shards > 1 and not checkpointed:
        raise ConfigError(
            f"--shards {opts.shards} needs experiment code that uses tether.checkpoint (it gives each shard its "
            f"items by id), and {experiment}'s does not: {why}; nothing was rented.",
            "Run it with --managed alone (one server, restarted from its own results_partial.json), or make it "
            "record results with tether.checkpoint (README: Checkpoints).",
        )
    return "journal" if checkpointed else "folder"


def prepare(ctx: Ctx, experiment: str, opts: Options) -> ManagedRunRecord:
    """The managed run of ``experiment`` to drive: the unfinished one (same options), or a new one (validated).

    The caller holds the experiment's controller lock.
    """
    st = ctx.state
    found = unfinished(st, experiment)
    if found is not None:
        want = (opts.shards, list(opts.args), list(opts.hosts))
        have = (found.shards, found.args, found.hosts)
        if want != have or (opts.profile is not None and opts.profile != found.profile):
            raise ConfigError(
                f"Managed run {found.id} of {experiment} is unfinished with other options (--shards {found.shards}"
                f"{', --on ' + ','.join(found.hosts) if found.hosts else ''}"
                f"{', args ' + ' '.join(found.args) if found.args else ''}); nothing was started.",
                f"Run the same command to pick it up, or `tether cancel {found.id}` first (its results are kept).",
            )
        changes: dict[str, Any] = {"status": vocab.MANAGED_RUNNING, "reason": None, "controller_pid": os.getpid()}
        if opts.max_usd is not None:
            changes["max_usd"] = opts.max_usd
        changes["sync_every"] = opts.sync_every
        rec = st.update_managed_run(found.id, **changes)
        for sh in st.managed_shards(found.id):
            if sh.status == vocab.SHARD_PAUSED:
                st.update_managed_shard(found.id, sh.shard, status=vocab.SHARD_PENDING, reason=None, failures=0)
        ctx.say(f"Picking up managed run {rec.id} ({rec.shards} shards).")
        return rec
    mode = _validate(ctx, experiment, opts)
    profile = opts.profile or _plan_profile(ctx, experiment)
    now = time.time()
    rec = ManagedRunRecord(
        id=new_id(experiment),
        experiment=experiment,
        shards=opts.shards,
        args=list(opts.args),
        profile=profile,
        hosts=list(opts.hosts),
        max_usd=opts.max_usd,
        sync_every=opts.sync_every,
        mode=mode,
        status=vocab.MANAGED_RUNNING,
        reason=None,
        started=now,
        ended=None,
        results_path=None,
        cost_usd=0.0,
        controller_pid=os.getpid(),
        cancel_requested=False,
        updated=now,
    )
    shards = [
        ManagedShardRecord(
            run_id=rec.id,
            shard=i,
            status=vocab.SHARD_PENDING,
            server=opts.hosts[i] if i < len(opts.hosts) else None,
            own_host=i < len(opts.hosts),
            run=None,
            attempt=0,
            recoveries=0,
            restarts=0,
            completed=0,
            total=None,
            synced=0,
            last_sync=None,
            last_seen=None,
            last_failure=None,
            failures=0,
            reason=None,
            retry_at=None,
            updated=now,
        )
        for i in range(opts.shards)
    ]
    st.add_managed_run(rec, shards)
    ctx.say(f"Managed run {rec.id}: {experiment} on {opts.shards} server(s) ({profile}).")
    return rec


def _plan_profile(ctx: Ctx, experiment: str) -> str:
    from tether import plan

    entry = plan.plan_experiment(experiment, ctx.project.experiment(experiment), ctx.project.config.policy)
    return entry.profile or "api"


# ------------------------------------------------------------------------------------------ journals at home


def _head_sha(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except OSError:
        return ""
    return hashlib.sha256(first).hexdigest() if first.endswith(b"\n") else ""


def _record_count(path: Path) -> int:
    """Items with a result in a journal copy (``"ok": true`` records, by id)."""
    done: set[Any] = set()
    try:
        with open(path, "rb") as fh:
            fh.readline()
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("ok") is True:
                    done.add(json.dumps(rec.get("id")))
    except OSError:
        return 0
    return len(done)


def apply_sync(local_dir: Path, doc: dict[str, Any]) -> int:
    """Write what ``python3 -m tether.server journal`` sent into the local copies; returns items journaled."""
    local_dir.mkdir(parents=True, exist_ok=True)
    journals = doc.get("journals") if isinstance(doc.get("journals"), dict) else {}
    assert isinstance(journals, dict)
    for name, delta in journals.items():
        if not _plain_name(name) or not isinstance(delta, dict):
            continue
        path = local_dir / name
        data = base64.b64decode(str(delta.get("data") or ""))
        start = int(delta.get("from") or 0)
        if start == 0:
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        elif data:
            with open(path, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    shards = doc.get("shards") if isinstance(doc.get("shards"), dict) else {}
    assert isinstance(shards, dict)
    for name, b64 in shards.items():
        if _plain_name(name):
            (local_dir / name).write_bytes(base64.b64decode(str(b64)))
    return sum(_record_count(p) for p in local_dir.glob("*" + ".journal.jsonl"))


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and not name.startswith(".") and name != ".."


def have_args(local_dir: Path) -> list[str]:
    """``--have NAME=OFFSET:SHA`` for every journal copy here (what the server need not send again)."""
    out: list[str] = []
    for path in sorted(local_dir.glob("*.journal.jsonl")):
        out += ["--have", f"{path.name}={path.stat().st_size}:{_head_sha(path)}"]
    return out


# ------------------------------------------------------------------------------------------ jobs (threads)


@dataclass(frozen=True)
class Acquired:
    """A shard got a server and its run started there (or was found running there already)."""

    server: str
    run: str
    adopted: bool


def _job_ctx(project: Project, state_path: Path, say: Callable[[str], None]) -> Ctx:
    return Ctx(project, open_state(state_path), say=say)


def watching(target: Target) -> Target:
    """The target with a short connection retry: a controller's look at a server must not block the others for
    long (a server that keeps not answering is handled by the unreachable deadline, not by retries)."""
    if isinstance(target.transport, SSHTransport):
        target.transport.backoff = Backoff(retries=1, first=0.5)
    return target


def _remote_results(target: Target, exp: ExperimentConfig) -> str:
    return f"{target.code_dir}/{exp.results.strip('/')}"


def acquire_job(
    project: Project,
    state_path: Path,
    say: Callable[[str], None],
    run: ManagedRunRecord,
    shard: ManagedShardRecord,
    kind: str,
) -> Acquired:
    """Give ``shard`` its server (``kind``: ``rent``, ``restart`` or ``own``) and start it there (a thread).

    Idempotent: a rental under the shard's server name is adopted or reused (never a second one), and a run whose
    id was recorded before a controller died is found on the server instead of being started twice.
    """
    assert shard.server is not None and shard.run is not None
    ctx = _job_ctx(project, state_path, say)
    try:
        name, exp = shard.server, project.experiment(run.experiment)
        if kind == "rent":
            _await_adopted(project, ctx.state, name, say)
            rentals.ensure_rented(project, ctx.state, name, profile=run.profile or "api", say=say)
        elif kind == "restart":
            rentals.start(project, ctx.state, name, say=say)
        target = resolve(project, name, ctx.state)
        existing = runs.read_record(target, shard.run)
        if existing is not None:
            return Acquired(name, shard.run, adopted=True)
        if kind == "rent":
            provision.up(ctx, target)
        elif kind == "own":
            facts = ctx.state.host_facts(name)
            if facts.server_version is None:
                provision.up(ctx, target)
            else:
                provision.ensure_pushed(ctx, target)
            if shard.recoveries == 0 and shard.synced == 0:
                _refuse_foreign_results(target, exp, run)
        if kind in ("rent", "own"):
            _push_synced(target, exp, run, shard)
        runs.start(
            ctx,
            target,
            run.experiment,
            run.args,
            run_id=shard.run,
            shard=f"{shard.shard}/{run.shards}" if run.shards > 1 else None,
            managed=run.id,
            confirm=False,  # the controller's next look sees a run that failed at once, with its log tail
        )
        return Acquired(name, shard.run, adopted=False)
    finally:
        ctx.state.close()


def _await_adopted(project: Project, st: State, name: str, say: Callable[[str], None]) -> None:
    """A rental a killed controller left loading under ``name`` is adopted and waited for (never destroyed and
    rented again): ``ensure_rented`` takes over once it runs."""
    with provider_for(project) as prov:
        for sentence in rentals.reconcile(project, st, prov):
            say(sentence)
        rec = st.instance(name)
        if rec is None or not rec.instance_id or rec.state == "gone":
            return
        inst = observe_instance(prov, rec.instance_id)
        if inst.state in ("loading", "creating"):
            say(f"{name} (instance {inst.id}) is still loading; waiting for it.")
            vast = project.config.vast
            inst = wait_running(prov, rec.instance_id, vast.wait_minutes * 60, poll_s=vast.poll_seconds)
        rentals.record(st, name, inst, source="managed")


def _refuse_foreign_results(target: Target, exp: ExperimentConfig, run: ManagedRunRecord) -> None:
    """A host of the user's whose results folder holds results of another run would make the shard resume them:
    refuse (the run's own shard file, or an empty folder, is fine)."""
    remote = _remote_results(target, exp)
    result = target.transport.run([*target.server_argv, "journal", "--dir", remote], check=False)
    try:
        doc = json.loads(result.text())
    except ValueError:
        return
    ours = False
    for b64 in (doc.get("shards") or {}).values():
        with contextlib.suppress(ValueError, TypeError):
            ours = ours or json.loads(base64.b64decode(str(b64))).get("run") == run.id
    if (doc.get("journals") or doc.get("finals")) and not ours:
        raise PolicyRefusal(
            f"{target.name} already holds results of {run.experiment} in {remote} from another run; the shard was "
            "not started there.",
            f"Pull and move them away (`tether pull {target.name}`), or leave {target.name} out of --on.",
        )


def _push_synced(target: Target, exp: ExperimentConfig, run: ManagedRunRecord, shard: ManagedShardRecord) -> None:
    """Give a new server the shard's last synced results: the journal copies (or, for an experiment without
    tether.checkpoint, its results folder), so it resumes by item id."""
    local = shard_dir(run.id, shard.shard) / exp.results
    if not local.is_dir():
        return
    remote = _remote_results(target, exp)
    if run.mode == "journal":
        for path in sorted(local.glob("*.journal.jsonl")):
            target.transport.put_bytes(path.read_bytes(), f"{remote}/{path.name}", 0o644)
    elif any(local.iterdir()):
        target.transport.run(["mkdir", "-p", remote])
        target.transport.push(local, remote)


@dataclass(frozen=True)
class Finished:
    verified: bool
    files: int


def final_job(
    project: Project, state_path: Path, say: Callable[[str], None], run: ManagedRunRecord, shard: ManagedShardRecord
) -> Finished:
    """Pull the shard's results folder, verify it against the server's manifest, then destroy the rented server
    (verified gone). A failure raises and leaves the server as it is."""
    assert shard.server is not None
    ctx = _job_ctx(project, state_path, say)
    try:
        exp = project.experiment(run.experiment)
        target = resolve(project, shard.server, ctx.state)
        say(f"{run.id}: shard {shard.shard} completed on {shard.server}; pulling its results.")
        rel = exp.results.strip("/")
        home = shard_dir(run.id, shard.shard)
        manifest = pull.remote_manifest(target, target.code_dir, [rel]).files or {}
        (home / rel).mkdir(parents=True, exist_ok=True)
        target.transport.pull(f"{target.code_dir}/{rel}", home / rel, excludes=[".*.tmp"])
        bad = pull.verify_local(home, manifest)
        ctx.state.add_pull(target.name, [rel], manifest, 0, not bad)
        if bad:
            raise CommandFailed(
                f"Shard {shard.shard}'s results from {shard.server} did not verify ({len(bad)} files differ).",
                "The pull is tried again.",
            )
        if run.shards > 1 and run.mode == "journal" and not list((home / rel).glob("*.shard.json")):
            raise CheckpointError(
                f"Shard {shard.shard} finished on {shard.server} without a shard file: its code ran every item "
                "instead of its shard's (it does not take its items from tether.checkpoint's pending).",
                f"Its results are kept in {home / rel}; run the experiment with --managed alone.",
            )
        if not shard.own_host:
            target.transport.close()  # release the shared connection first: the server is going away
            rentals.destroy(project, ctx.state, shard.server)
        return Finished(True, len(manifest))
    finally:
        ctx.state.close()


def retire_job(project: Project, state_path: Path, say: Callable[[str], None], name: str) -> None:
    """Destroy a rented server (verified gone); nothing when it is gone already or was never made."""
    ctx = _job_ctx(project, state_path, say)
    try:
        rec = ctx.state.instance(name)
        if rec is None or not rec.instance_id or rec.state == "gone":
            if rec is not None and rec.state == "creating" and not rec.instance_id:
                with contextlib.suppress(TetherError), provider_for(project) as prov:
                    rentals.reconcile_after_failure(project, ctx.state, prov, name)
                rec = ctx.state.instance(name)
            if rec is None or not rec.instance_id or rec.state == "gone":
                return
        rentals.destroy(project, ctx.state, name)
    finally:
        ctx.state.close()


# ------------------------------------------------------------------------------------------ the controller


@dataclass
class Outcome:
    """How a managed run ended (or paused), for the CLI to render."""

    id: str
    experiment: str
    status: str
    reason: str | None
    results_path: str | None
    cost_usd: float
    wall_s: float
    shards: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "experiment": self.experiment,
            "status": self.status,
            "reason": self.reason,
            "results": self.results_path,
            "cost_usd": round(self.cost_usd, 6),
            "wall_s": round(self.wall_s, 3),
            "shards": self.shards,
        }


class _Cancelled(Exception):
    pass


JOB_KINDS = ("acquire", "final", "retire")


class Controller:
    """The loop of one managed run (see the module docstring). ``tick()`` is one look at everything."""

    def __init__(self, ctx: Ctx, run: ManagedRunRecord, opts: Options) -> None:
        self.ctx = ctx
        self.project = ctx.project
        self.st = ctx.state
        self.id = run.id
        self.opts = opts
        self.exp = ctx.project.experiment(run.experiment)
        self.pool = ThreadPoolExecutor(max_workers=max(2, run.shards), thread_name_prefix="managed")
        self.jobs: dict[int, tuple[str, Future[Any]]] = {}
        self._provider: Provider | None = None
        self._last_sync = 0.0
        self._said: dict[int, str] = {}
        self._offer_dph: tuple[float, float] | None = None  # (when, cheapest $/hr)

    # ----------------------------------------------------------------------------------------- plumbing
    @property
    def run(self) -> ManagedRunRecord:
        rec = self.st.managed_run(self.id)
        assert rec is not None
        return rec

    def provider(self) -> Provider:
        if self._provider is None:
            self._provider = provider_for(self.project)
        return self._provider

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self._provider is not None:
            self._provider.close()
            self._provider = None

    def say_once(self, shard: int, text: str) -> None:
        if self._said.get(shard) != text:
            self._said[shard] = text
            self.ctx.say(text)

    def shard(self, i: int) -> ManagedShardRecord:
        return next(s for s in self.st.managed_shards(self.id) if s.shard == i)

    def update(self, i: int, **changes: Any) -> ManagedShardRecord:
        return self.st.update_managed_shard(self.id, i, **changes)

    def submit(self, i: int, kind: str, fn: Callable[..., Any], *args: Any) -> None:
        self.jobs[i] = (kind, self.pool.submit(fn, self.project, self.st.path, self.ctx.say, *args))

    def spent(self) -> float:
        led = cost.ledger(self.st.event_log(), time.time())
        prefix = self.id + "-s"
        return sum(c.total_usd for name, c in led.by_instance.items() if name.startswith(prefix))

    def rented_names(self) -> list[str]:
        prefix = self.id + "-s"
        return [r.name for r in self.st.instances() if r.name.startswith(prefix) and r.provider == rentals.PROVIDER]

    # ----------------------------------------------------------------------------------------- the loop
    def drive(self) -> Outcome:
        """Tick until every shard is final (or the run pauses or is cancelled); then finish."""
        started = time.monotonic()
        try:
            while True:
                try:
                    self.tick()
                except _Cancelled:
                    return self.stop_all(started, cancelled=True)
                shards = self.st.managed_shards(self.id)
                if all(s.status in vocab.SHARD_FINAL for s in shards) and not self.jobs:
                    return self.finish(started)
                live = [s for s in shards if s.status not in vocab.SHARD_FINAL and s.status != vocab.SHARD_PAUSED]
                if not live and not self.jobs:
                    return self.pause(started, shards)
                pending = [f for _kind, f in self.jobs.values()]
                if pending:
                    wait(pending, timeout=self.opts.poll_s, return_when=FIRST_COMPLETED)
                else:
                    time.sleep(self.opts.poll_s)  # the servers work; nothing local to wait on
        finally:
            self.close()

    def tick(self) -> None:
        """One look at everything: harvest finished jobs, observe servers, act, sync journals when due."""
        if self.run.cancel_requested:
            raise _Cancelled
        self.harvest()
        observed = self.observe_instances()
        now = time.time()
        for sh in self.st.managed_shards(self.id):
            if sh.shard in self.jobs or sh.status in vocab.SHARD_FINAL:
                continue
            if sh.retry_at is not None and now < sh.retry_at:
                continue
            try:
                self.step(sh, observed, now)
            except _Skip:
                continue
        if time.monotonic() - self._last_sync >= self.run.sync_every:
            self._last_sync = time.monotonic()
            self.sync_all()
        self.st.update_managed_run(self.id, cost_usd=self.spent())

    def observe_instances(self) -> dict[str, Instance]:
        """The provider's view of every server of this run (one call), keyed by server name; {} without one."""
        names = {
            s.server
            for s in self.st.managed_shards(self.id)
            if s.server and not s.own_host and s.status not in vocab.SHARD_FINAL
        }
        if not names:
            return {}
        try:
            listed = self.provider().list_instances(rentals.label_prefix(self.project) + self.id + "-s")
        except TetherError as exc:
            self.say_once(-1, f"{self.id}: could not ask the provider for its servers ({exc.message}); retrying.")
            return {}
        by_id = {i.id: i for i in listed}
        out: dict[str, Instance] = {}
        for name in names:
            rec = self.st.instance(name)
            if rec is None or not rec.instance_id:
                continue
            inst = by_id.get(rec.instance_id)
            if inst is None:
                try:  # not listed: confirm before acting on it
                    inst = observe_instance(self.provider(), rec.instance_id)
                except TetherError:
                    continue
            if inst.state != rec.state:
                rentals.record(self.st, name, inst, source="managed")
            out[name] = inst
        return out

    # ----------------------------------------------------------------------------------------- jobs done
    def harvest(self) -> None:
        for i, (kind, fut) in list(self.jobs.items()):
            if not fut.done():
                continue
            del self.jobs[i]
            sh = self.shard(i)
            try:
                result = fut.result()
            except PolicyRefusal as exc:
                self.on_paused(sh, f"{exc.message} {exc.hint or ''}".strip())
                continue
            except TetherError as exc:
                self.on_job_failed(sh, kind, exc)
                continue
            except Exception as exc:  # a bug must not leave a server unwatched: it is reported, the shard retried
                self.on_job_failed(sh, kind, TetherError(f"{type(exc).__name__}: {exc}"))
                continue
            if kind == "acquire":
                assert isinstance(result, Acquired)
                how = "found running" if result.adopted else "started"
                self.ctx.say(f"{self.id}: shard {i} {how} on {result.server} (run {result.run}).")
                self.update(i, status=vocab.SHARD_RUNNING, last_seen=time.time(), retry_at=None, reason=None)
            elif kind == "final":
                self.ctx.say(f"{self.id}: shard {i} is home and verified.")
                self.update(i, status=vocab.SHARD_COMPLETED, reason=None, completed=sh.total or sh.completed)
            elif kind == "retire":
                self.update(i, status=vocab.SHARD_PENDING, server=None, run=None, reason=sh.reason)

    def on_paused(self, sh: ManagedShardRecord, why: str) -> None:
        self.ctx.say(f"{self.id}: shard {sh.shard} paused: {why}")
        status = vocab.SHARD_PAUSED
        if sh.server and not sh.own_host and sh.status == vocab.SHARD_PROVISIONING:
            # The reservation was dropped (nothing rented); forget the name so a resume rents afresh.
            self.update(sh.shard, status=status, reason=why, server=None, run=None)
        else:
            self.update(sh.shard, status=status, reason=why)

    def on_job_failed(self, sh: ManagedShardRecord, kind: str, exc: TetherError) -> None:
        i = sh.shard
        if kind == "acquire" and isinstance(exc, CommandFailed) and exc.message.startswith("Run "):
            # The experiment failed at once on its new server: a failure of the experiment, not of the server.
            self.on_run_failed(sh, failure_signature(exc.returncode, vocab.FAILED, exc.output), exc.output)
            return
        if kind == "final":
            failures = sh.failures + 1
            if failures >= MAX_FINAL_ATTEMPTS:
                self.fail(sh, f"its results could not be brought home: {exc.message}")
                return
            self.ctx.say(f"{self.id}: shard {i}'s final pull failed ({exc.message}); looking at its server again.")
            self.update(i, status=vocab.SHARD_RUNNING, failures=failures, retry_at=None)
            return
        failures = sh.failures + 1
        delay = min(60.0, 2.0 * 2 ** (failures - 1))
        if failures >= MAX_PROVISION_ATTEMPTS:
            self.on_paused(sh, f"{exc.message} (after {failures} attempts)")
            return
        self.ctx.say(f"{self.id}: shard {i}: {exc.message} Retrying in {delay:.0f} s.")
        if kind == "retire":
            self.update(i, failures=failures, retry_at=time.time() + delay)
        elif kind == "acquire" and sh.status == vocab.SHARD_RESTARTING:
            # The stopped server did not come back: destroy it (verified) and rent another.
            self.update(i, status=vocab.SHARD_RETIRING, failures=failures, restarts=sh.restarts + 1)
        elif kind == "acquire" and not sh.own_host:
            self.update(i, status=vocab.SHARD_RETIRING, failures=failures, retry_at=time.time() + delay)
        else:
            self.update(i, status=vocab.SHARD_PENDING, failures=failures, retry_at=time.time() + delay)

    # ----------------------------------------------------------------------------------------- one shard
    def step(self, sh: ManagedShardRecord, observed: dict[str, Instance], now: float) -> None:
        status = sh.status
        if status == vocab.SHARD_PENDING:
            self.give_server(sh)
        elif status == vocab.SHARD_PROVISIONING:
            kind = "own" if sh.own_host else "rent"
            self.submit(sh.shard, "acquire", acquire_job, self.run, sh, kind)
        elif status == vocab.SHARD_RESTARTING:
            self.submit(sh.shard, "acquire", acquire_job, self.run, sh, "restart")
        elif status == vocab.SHARD_RETIRING:
            assert sh.server is not None
            self.submit(sh.shard, "retire", retire_job, sh.server)
        elif status == vocab.SHARD_FINISHING:
            self.submit(sh.shard, "final", final_job, self.run, sh)
        elif status == vocab.SHARD_RUNNING:
            self.watch(sh, observed, now)

    def give_server(self, sh: ManagedShardRecord) -> None:
        """A pending shard: its own host, or a rental checked against the budget first."""
        run = self.run
        attempt = sh.attempt + (0 if sh.own_host else 1)
        name = sh.server if sh.own_host else server_name(run.id, sh.shard, attempt)
        if not sh.own_host:
            why = self.budget_check(sh)
            if why is not None:
                self.on_paused(sh, why)
                return
        run_id = runs.new_run_id(run.experiment) + f"-s{sh.shard}"
        self.update(sh.shard, status=vocab.SHARD_PROVISIONING, server=name, run=run_id, attempt=attempt)
        sh = self.shard(sh.shard)
        self.submit(sh.shard, "acquire", acquire_job, self.run, sh, "own" if sh.own_host else "rent")

    def budget_check(self, sh: ManagedShardRecord) -> str | None:
        run = self.run
        if run.max_usd is None:
            return None
        now = time.time()
        if self._offer_dph is None or now - self._offer_dph[0] > 60:
            try:
                prof = rentals.profile_for(self.project, run.profile or "api")
                offers = rentals.search(self.provider(), prof)
            except ProviderError as exc:
                self._provider_hiccup(sh, exc)
            self._offer_dph = (now, min(o.dph_total for o in offers))
        dph = self._offer_dph[1]
        committed = []
        for other in self.st.managed_shards(self.id):
            if other.shard == sh.shard or other.own_host or other.status in vocab.SHARD_FINAL or not other.server:
                continue
            rec = self.st.instance(other.server)
            if rec is not None and rec.state != "gone" and rec.dph_total:
                left = shard_seconds_left(self.exp, run.shards, other.completed)
                committed.append((rec.dph_total, (left + RENTAL_OVERHEAD_S) / 3600))
        hours = (shard_seconds_left(self.exp, run.shards, sh.synced) + RENTAL_OVERHEAD_S) / 3600
        why = budget_refusal(run.max_usd, self.spent(), committed, dph, hours)
        return None if why is None else f"{why}; nothing was rented for shard {sh.shard}"

    def _provider_hiccup(self, sh: ManagedShardRecord, exc: TetherError) -> NoReturn:
        failures = sh.failures + 1
        if failures >= MAX_PROVISION_ATTEMPTS:
            self.on_paused(sh, f"the provider kept failing ({exc.message}, {failures} attempts)")
            raise _Skip
        self.ctx.say(f"{self.id}: shard {sh.shard}: {exc.message} Retrying.")
        self.update(sh.shard, failures=failures, retry_at=time.time() + min(60.0, 2.0 * 2 ** (failures - 1)))
        raise _Skip

    def watch(self, sh: ManagedShardRecord, observed: dict[str, Instance], now: float) -> None:
        """A running shard: is its server there, does it answer, how far is its run?"""
        assert sh.server is not None
        inst = observed.get(sh.server)
        state = None if sh.own_host else (inst.state if inst is not None else None)
        if not sh.own_host and state is None:
            return  # the provider could not be asked this tick
        found: vocab.RunInfo | None = None
        answered = False
        if state in (None, "running"):
            try:
                target = watching(resolve(self.project, sh.server, self.st))
                found = runs.observe(self.st, target).run(sh.run or "")
                answered = True
            except TetherError:
                answered = False
        if answered:
            self.update(sh.shard, last_seen=now)
            sh = replace(sh, last_seen=now)
        reachable_for = None if answered else now - (sh.last_seen or sh.updated)
        action = recovery_action(state, sh.restarts > 0, reachable_for, self.opts.unreachable_after_s, sh.own_host)
        if action == "wait":
            if not answered:
                self.say_once(sh.shard, f"{self.id}: shard {sh.shard}: {sh.server} does not answer; waiting.")
            return
        if action != "ok":
            self.recover(sh, action, state or "unreachable")
            return
        if found is None:
            rec = next((r for r in self.st.runs(host=sh.server) if r.id == sh.run), None)
            if rec is not None and time.time() - rec.started < START_GRACE_S:
                return  # just started: its wrapper has not written its record yet
            self.on_run_failed(sh, "its run never started on the server (no run record)", None)
            return
        self.update(sh.shard, completed=found.completed, total=found.total)
        if found.status == vocab.COMPLETED:
            self.update(sh.shard, status=vocab.SHARD_FINISHING, failures=0)
            self.submit(sh.shard, "final", final_job, self.run, self.shard(sh.shard))
        elif found.final:
            self.sync_one(sh)
            self.on_run_failed(sh, failure_signature(found.exit_code, found.status, found.log_tail), found.log_tail)

    def recover(self, sh: ManagedShardRecord, action: Action, state: str) -> None:
        i = sh.shard
        why = {"gone": "vanished", "preempted": "was preempted", "stopped": "was stopped"}.get(state, state)
        self.ctx.say(f"{self.id}: shard {i}'s server {sh.server} {why}; recovering ({action}).")
        if action == "restart":
            run_id = runs.new_run_id(self.run.experiment) + f"-s{i}"
            self.update(
                i, status=vocab.SHARD_RESTARTING, run=run_id, recoveries=sh.recoveries + 1, reason=f"server {why}"
            )
            self.submit(i, "acquire", acquire_job, self.run, self.shard(i), "restart")
        elif action == "replace":
            self.update(
                i,
                status=vocab.SHARD_PENDING,
                server=None,
                run=None,
                recoveries=sh.recoveries + 1,
                restarts=0,
                reason=f"server {why}",
            )
        else:
            self.update(
                i, status=vocab.SHARD_RETIRING, recoveries=sh.recoveries + 1, restarts=0, reason=f"server {why}"
            )
            assert sh.server is not None
            self.submit(i, "retire", retire_job, sh.server)

    def on_run_failed(self, sh: ManagedShardRecord, signature: str, log_tail: str | None) -> None:
        """The experiment itself failed: once, it goes to another server; the same way twice, the shard stops."""
        i = sh.shard
        if sh.last_failure == signature:
            tail = (log_tail or "").rstrip()
            self.fail(
                sh,
                f"it failed the same way on two servers in a row: {signature}"
                + (f"\nIts log ends with:\n{tail}" if tail else ""),
            )
            return
        self.ctx.say(f"{self.id}: shard {i} {signature} on {sh.server}; trying it on another server.")
        if sh.own_host:
            run_id = runs.new_run_id(self.run.experiment) + f"-s{i}"
            self.update(
                i, status=vocab.SHARD_PROVISIONING, run=run_id, last_failure=signature, recoveries=sh.recoveries + 1
            )
            return
        self.update(
            i,
            status=vocab.SHARD_RETIRING,
            last_failure=signature,
            recoveries=sh.recoveries + 1,
            restarts=0,
            reason=signature,
        )
        assert sh.server is not None
        self.submit(i, "retire", retire_job, sh.server)

    def fail(self, sh: ManagedShardRecord, why: str) -> None:
        self.ctx.say(f"{self.id}: shard {sh.shard} stopped: {why}")
        self.update(sh.shard, status=vocab.SHARD_FAILED, reason=why)
        if sh.server and not sh.own_host:
            with contextlib.suppress(TetherError):
                retire_job(self.project, self.st.path, self.ctx.say, sh.server)

    # ----------------------------------------------------------------------------------------- syncing
    def sync_all(self) -> None:
        for sh in self.st.managed_shards(self.id):
            if sh.status == vocab.SHARD_RUNNING and sh.shard not in self.jobs:
                self.sync_one(sh)

    def sync_one(self, sh: ManagedShardRecord) -> bool:
        """Bring the shard's journal home (the lines after the last sync); False when the server did not answer."""
        if not sh.server:
            return False
        local = shard_dir(self.id, sh.shard) / self.exp.results
        try:
            target = watching(resolve(self.project, sh.server, self.st))
            remote = _remote_results(target, self.exp)
            if self.run.mode == "journal":
                result = target.transport.run(
                    [*target.server_argv, "journal", "--dir", remote, *have_args(local)], timeout=120
                )
                synced = apply_sync(local, json.loads(result.text()))
            else:
                local.mkdir(parents=True, exist_ok=True)
                target.transport.pull(remote, local, excludes=[".*.tmp"])
                synced = sh.completed
        except (TetherError, ValueError, OSError):
            return False
        self.update(sh.shard, synced=synced, last_sync=time.time())
        return True

    # ----------------------------------------------------------------------------------------- the end
    def finish(self, started: float) -> Outcome:
        shards = self.st.managed_shards(self.id)
        self.destroy_all()
        failed = [s for s in shards if s.status == vocab.SHARD_FAILED]
        results: str | None = None
        reason: str | None = None
        if not failed:
            try:
                results = str(self.merge())
            except TetherError as exc:
                reason = exc.message
        else:
            reason = "; ".join(f"shard {s.shard}: {s.reason}" for s in failed)
            results = self.keep_partial()
        status = vocab.MANAGED_COMPLETED if results and not failed and reason is None else vocab.MANAGED_FAILED
        return self.close_run(status, reason, results, started)

    def close_run(self, status: str, reason: str | None, results: str | None, started: float) -> Outcome:
        spent = self.spent()
        rec = self.st.update_managed_run(
            self.id,
            status=status,
            reason=reason,
            results_path=results,
            ended=time.time(),
            cost_usd=spent,
            controller_pid=None,
        )
        return Outcome(
            id=rec.id,
            experiment=rec.experiment,
            status=status,
            reason=reason,
            results_path=results,
            cost_usd=spent,
            wall_s=(rec.ended or time.time()) - rec.started,
            shards=[_shard_json(s) for s in self.st.managed_shards(self.id)],
        )

    def pause(self, started: float, shards: Sequence[ManagedShardRecord]) -> Outcome:
        why = "; ".join(f"shard {s.shard}: {s.reason}" for s in shards if s.status == vocab.SHARD_PAUSED)
        rec = self.st.update_managed_run(
            self.id, status=vocab.MANAGED_PAUSED, reason=why, controller_pid=None, cost_usd=self.spent()
        )
        return Outcome(
            rec.id,
            rec.experiment,
            rec.status,
            why,
            None,
            rec.cost_usd or 0.0,
            time.monotonic() - started,
            [_shard_json(s) for s in self.st.managed_shards(self.id)],
        )

    def destroy_all(self) -> None:
        """Every server this run rented is destroyed, verified gone (the safety net after each shard's own)."""
        for name in self.rented_names():
            rec = self.st.instance(name)
            if rec is not None and rec.state != "gone":
                retire_job(self.project, self.st.path, self.ctx.say, name)

    def merge(self) -> Path:
        """The shards' final files as the project's ``results`` (one ``<name>.json`` per checkpoint name, in item
        order); a file already there that differs is moved aside first, never overwritten."""
        rel = self.exp.results.strip("/")
        dest = self.project.root / rel
        dest.mkdir(parents=True, exist_ok=True)
        folders = [shard_dir(self.id, i) / rel for i in range(self.run.shards)]
        if self.run.shards == 1:
            written: Path | None = None
            for path in sorted(folders[0].rglob("*")):
                if path.is_file() and not path.is_symlink():
                    out = dest / path.relative_to(folders[0])
                    out.parent.mkdir(parents=True, exist_ok=True)
                    _place(out, path.read_bytes(), self.id)
                    if path.name == "results.json" or written is None:
                        written = out
            return written or dest
        names = sorted(p.name[: -len(".shard.json")] for p in folders[0].glob("*.shard.json"))
        if not names:
            raise CheckpointError(f"Shard 0 of {self.id} has no shard file; nothing was merged.")
        first: Path | None = None
        for name in names:
            data = shard_lib.merge_shards(folders, name)
            out = dest / f"{name}.json"
            _place(out, data, self.id)
            first = first or out
        assert first is not None
        self.ctx.say(f"{self.id}: merged {self.run.shards} shards into {first}.")
        return first

    def keep_partial(self) -> str | None:
        """What finished so far, as one journal in the project's results folder (a later run resumes from it),
        unless a journal or final file is there already; the shard copies stay under $TETHER_HOME either way."""
        rel = self.exp.results.strip("/")
        dest = self.project.root / rel
        copies = [shard_dir(self.id, i) / rel for i in range(self.run.shards)]
        for name in sorted({p.name for c in copies for p in c.glob("*.journal.jsonl")}):
            lines: list[bytes] = []
            header: bytes | None = None
            for folder in copies:
                path = folder / name
                if not path.is_file():
                    continue
                data = path.read_bytes().splitlines(keepends=True)
                if data:
                    header = header or data[0]
                    lines += data[1:]
            target = dest / name
            if header is None or target.exists() or (dest / name.replace(".journal.jsonl", ".json")).exists():
                continue
            dest.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{name}.tmp")
            tmp.write_bytes(header + b"".join(lines))
            os.replace(tmp, target)
            self.ctx.say(f"{self.id}: kept {len(lines)} journaled results in {target} (a later run resumes them).")
            return str(target)
        return str(run_dir(self.id))

    def stop_all(self, started: float, *, cancelled: bool) -> Outcome:
        """Cancel: wait for jobs in flight, stop every shard's run, bring its journal home, destroy the rented
        servers (verified), keep the results."""
        for _kind, fut in list(self.jobs.values()):
            with contextlib.suppress(Exception):
                fut.result()
        self.jobs.clear()
        for sh in self.st.managed_shards(self.id):
            if sh.status in vocab.SHARD_FINAL or not sh.server:
                if sh.status not in vocab.SHARD_FINAL:
                    self.update(sh.shard, status=vocab.SHARD_CANCELLED)
                continue
            with contextlib.suppress(TetherError):
                target = resolve(self.project, sh.server, self.st)
                rec = next((r for r in self.st.runs(host=sh.server) if r.id == sh.run), None)
                if rec is not None:
                    runs.cancel(self.st, target, rec)
                self.sync_one(sh)
            self.update(sh.shard, status=vocab.SHARD_CANCELLED, reason="cancelled")
        self.destroy_all()
        kept = self.keep_partial()
        return self.close_run(vocab.MANAGED_CANCELLED, "cancelled", kept, started)


class _Skip(Exception):
    """This shard waits for the next tick (a provider hiccup was recorded)."""


def _place(path: Path, data: bytes, run_id: str) -> None:
    """Write ``data`` at ``path`` atomically; a different file already there is moved aside, never lost."""
    if path.exists():
        if path.read_bytes() == data:
            return
        pull.keep_aside(path, hashlib.sha256(data).hexdigest(), run_id)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _shard_json(s: ManagedShardRecord) -> dict[str, Any]:
    return {
        "shard": s.shard,
        "status": s.status,
        "server": s.server,
        "own_host": s.own_host,
        "run": s.run,
        "completed": s.completed,
        "total": s.total,
        "synced": s.synced,
        "recoveries": s.recoveries,
        "reason": s.reason,
    }


# ------------------------------------------------------------------------------------------ entry points


def run_managed(ctx: Ctx, experiment: str, opts: Options) -> Outcome:
    """``tether run EXP --managed``: drive the experiment's managed run to its end (or pause) in this process."""
    ctx.project.experiment(experiment)
    with controller_lock(experiment) as (held, holder):
        if not held:
            found = unfinished(ctx.state, experiment)
            which = f"managed run {found.id}" if found else f"a managed run of {experiment}"
            raise PolicyRefusal(
                f"A controller is already driving {which} ({holder or 'another process'}); this one stops here "
                "and rents nothing.",
                f"Watch it with `tether progress`; stop it with `tether cancel {found.id if found else experiment}`.",
            )
        rec = prepare(ctx, experiment, opts)
        controller = Controller(ctx, rec, replace(opts, sync_every=rec.sync_every))
        outcome = controller.drive()
    return outcome


def detach(ctx: Ctx, experiment: str, argv: Sequence[str]) -> dict[str, Any]:
    """``--detach``: validate, then run the controller as a detached local process (its output in a log file);
    returns its pid, the log and the managed run's id."""
    with controller_lock(experiment) as (held, holder):
        if not held:
            raise PolicyRefusal(
                f"A controller is already driving a managed run of {experiment} ({holder}).",
                "Watch it with `tether progress`.",
            )
    logs = private_dir(tether_home() / "managed")
    log_path = logs / f"{experiment}.controller.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tether", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=str(ctx.project.root),
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = unfinished(ctx.state, experiment)
        if found is not None and found.controller_pid == proc.pid:
            return {"id": found.id, "pid": proc.pid, "log": str(log_path)}
        if proc.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise TetherError("The detached controller stopped at once.", "\n".join(tail))
        time.sleep(0.1)  # the new process validates and records the run
    return {"id": None, "pid": proc.pid, "log": str(log_path)}


def find(st: State, ref: str) -> ManagedRunRecord | None:
    """A managed run by id, unique id prefix, or (an experiment's name) its unfinished or latest managed run."""
    every = st.managed_runs()
    exact = [r for r in every if r.id == ref]
    if exact:
        return exact[0]
    prefixed = [r for r in every if r.id.startswith(ref)]
    if len(prefixed) == 1:
        return prefixed[0]
    by_exp = [r for r in every if r.experiment == ref and r.status not in vocab.MANAGED_FINAL]
    return by_exp[-1] if by_exp else None


def cancel(ctx: Ctx, rec: ManagedRunRecord, *, wait_s: float = 300.0) -> Outcome:
    """Stop a managed run and keep every result: its controller does it when one runs (asked through local state),
    else this process does (holding the controller lock)."""
    if rec.status in vocab.MANAGED_FINAL:
        return Outcome(
            rec.id,
            rec.experiment,
            rec.status,
            f"it is {rec.status} already",
            rec.results_path,
            rec.cost_usd or 0.0,
            0.0,
            [_shard_json(s) for s in ctx.state.managed_shards(rec.id)],
        )
    with controller_lock(rec.experiment) as (held, _holder):
        if held:
            controller = Controller(ctx, rec, Options(shards=rec.shards, sync_every=rec.sync_every))
            try:
                return controller.stop_all(time.monotonic(), cancelled=True)
            finally:
                controller.close()
    ctx.state.update_managed_run(rec.id, cancel_requested=True)
    ctx.say(f"Asked the controller of {rec.id} to stop it.")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        now = ctx.state.managed_run(rec.id)
        assert now is not None
        if now.status in vocab.MANAGED_FINAL:
            return Outcome(
                now.id,
                now.experiment,
                now.status,
                now.reason,
                now.results_path,
                now.cost_usd or 0.0,
                (now.ended or time.time()) - now.started,
                [_shard_json(s) for s in ctx.state.managed_shards(now.id)],
            )
        time.sleep(0.5)  # the controller (another process) is stopping the shards
    raise TetherError(f"The controller of {rec.id} did not stop it within {wait_s:g} s.", "Run `tether cancel` again.")


# ------------------------------------------------------------------------------------------ views


@dataclass(frozen=True)
class ManagedView:
    """One managed run as ``progress``, ``status`` and the dashboard show it (from local state; no remote call)."""

    id: str
    experiment: str
    status: str
    reason: str | None
    shards: list[dict[str, Any]]
    completed: int
    total: int | None
    recoveries: int
    cost_usd: float
    started: float
    ended: float | None
    controller: bool
    results: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "experiment": self.experiment,
            "status": self.status,
            "reason": self.reason,
            "shards": self.shards,
            "completed": self.completed,
            "total": self.total,
            "recoveries": self.recoveries,
            "cost_usd": round(self.cost_usd, 6),
            "started": self.started,
            "ended": self.ended,
            "controller": self.controller,
            "results": self.results,
        }

    def line(self) -> str:
        """``A5-m1a2b3 running 1210/2000 · s0 …-s0-1 412/500 · s1 restarting (server was preempted) · 2
        recoveries · $0.1200``"""
        total = self.total if self.total is not None else "?"
        parts = [f"{self.id} {self.status} {self.completed}/{total}"]
        for s in self.shards:
            where = s["server"] or "-"
            done = f"{s['completed']}/{s['total'] if s['total'] is not None else '?'}"
            extra = f" ({s['reason']})" if s["reason"] and s["status"] not in ("running", "completed") else ""
            parts.append(f"s{s['shard']} {s['status']} {where} {done}{extra}".replace("\n", " "))
        parts.append(f"{self.recoveries} recoveries")
        parts.append(f"${self.cost_usd:.4f}")
        if not self.controller and self.status not in vocab.MANAGED_FINAL:
            parts.append(f"no controller: `tether run {self.experiment} --managed` picks it up")
        return " · ".join(parts)


def views(ctx: Ctx, *, finished_within_s: float = 86400.0) -> list[ManagedView]:
    """Every unfinished managed run and those that ended within ``finished_within_s``, oldest first."""
    st = ctx.state
    now = ctx.now()
    led = cost.ledger(st.event_log(), time.time())
    out: list[ManagedView] = []
    for rec in st.managed_runs():
        if rec.status in vocab.MANAGED_FINAL and rec.ended is not None and now - rec.ended > finished_within_s:
            continue
        shards = st.managed_shards(rec.id)
        prefix = rec.id + "-s"
        spent = sum(c.total_usd for name, c in led.by_instance.items() if name.startswith(prefix))
        totals = [s.total for s in shards]
        out.append(
            ManagedView(
                id=rec.id,
                experiment=rec.experiment,
                status=rec.status,
                reason=rec.reason,
                shards=[_shard_json(s) for s in shards],
                completed=sum(s.completed for s in shards),
                total=sum(t for t in totals if t is not None) if all(t is not None for t in totals) else None,
                recoveries=sum(s.recoveries for s in shards),
                cost_usd=spent,
                started=rec.started,
                ended=rec.ended,
                controller=rec.status not in vocab.MANAGED_FINAL and controller_alive(rec.experiment),
                results=rec.results_path,
            )
        )
    return out
