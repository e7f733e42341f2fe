"""The I/O jobs a controller runs in threads: give a shard its server and start it, bring a finished shard
home, retire a server."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether import fmt, provision, pull, rentals, runs
from tether.config import ExperimentConfig, Project
from tether.context import Ctx
from tether.errors import (
    CheckpointError,
    CommandFailed,
    PolicyRefusal,
    TetherError,
)
from tether.hosts import Target, resolve
from tether.managed.local import owner_of, shard_dir
from tether.managed.rules import shard_budget
from tether.progress import End, Report, ignore
from tether.providers import provider_for
from tether.renting import observe as observe_instance
from tether.renting import wait_running
from tether.state import ManagedRunRecord, ManagedShardRecord, State, open_state
from tether.transport.base import Backoff
from tether.transport.ssh import SSHTransport

# ------------------------------------------------------------------------------------------ jobs (threads)


@dataclass(frozen=True)
class Acquired:
    """A shard got a server and its run started there (or was found running there already)."""

    server: str
    run: str
    adopted: bool


def _job_ctx(project: Project, state_path: Path, say: Callable[[str], None], progress: Report = ignore) -> Ctx:
    return Ctx(project, open_state(state_path), say=say, report=progress)


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
    *,
    progress: Report = ignore,
) -> Acquired:
    """Give ``shard`` its server (``kind``: ``rent``, ``restart`` or ``own``) and start it there (a thread).

    Idempotent: a rental under the shard's server name is adopted or reused (never a second one), and a run whose
    id was recorded before a controller died is found on the server instead of being started twice.
    """
    assert shard.server is not None and shard.run is not None
    ctx = _job_ctx(project, state_path, say, progress)
    try:
        name, exp = shard.server, project.experiment(run.experiment)
        passed: dict[str, Any] | None = None
        if kind == "rent":
            _await_adopted(project, ctx.state, name, say)
            budget = shard_budget(run, exp, shard.synced)
            _rented, passed, _failed = provision.rent_a_working_host(  # the preflight, as `up` does
                ctx,
                name,
                profile=run.profile or "api",
                offer_id=None,
                image=None,
                disk_gb=None,
                max_price=None,
                budget=budget,
            )
            ctx.state.set_instance_owner(name, owner_of(run.id))  # the autopilot, stop and destroy leave it alone
        elif kind == "restart":
            rentals.start(project, ctx.state, name, say=say)
        target = resolve(project, name, ctx.state)
        existing = runs.read_record(target, shard.run)
        if existing is not None:
            return Acquired(name, shard.run, adopted=True)
        if kind == "rent":
            t0 = time.time()
            provision.up(ctx, target)
            provision.remember_passed(ctx.state, passed, (time.time() - t0) / 60)
        elif kind == "own":
            facts = ctx.state.host_facts(name)
            if facts.server_version is None:
                provision.up(ctx, target)
            else:
                provision.ensure_pushed(ctx, target)
            if shard.recoveries == 0 and shard.last_sync is None:
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
        ctx.report(End(shard.server))  # its set-up steps leave the display
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
    project: Project,
    state_path: Path,
    say: Callable[[str], None],
    run: ManagedRunRecord,
    shard: ManagedShardRecord,
    *,
    progress: Report = ignore,
) -> Finished:
    """Pull the shard's results folder into its local copy with the one verified pull (:func:`tether.pull.pull`:
    checked against the server's manifest, never written through a link). A failure raises and leaves the server
    as it is; the server is destroyed by the next step (``release``), once the shard's record says its results are
    home."""
    assert shard.server is not None
    ctx = _job_ctx(project, state_path, say, progress)
    try:
        exp = project.experiment(run.experiment)
        target = resolve(project, shard.server, ctx.state)
        rel = exp.results.strip("/")
        home = shard_dir(run.id, shard.shard)
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        report = pull.pull(ctx, target, [run.experiment], into=home)
        if not report.verified:
            raise CommandFailed(
                f"Shard {shard.shard}'s results from {shard.server} did not verify "
                f"({fmt.count(len(report.mismatched), 'file')} differ).",
                "The pull is tried again.",
            )
        if run.shards > 1 and run.mode == "journal" and not list((home / rel).glob("*.shard.json")):
            raise CheckpointError(
                f"Shard {shard.shard} finished on {shard.server} without a shard file: its code ran every item "
                "instead of its shard's (it does not take its items from tether.checkpoint's pending).",
                f"Its results are kept in {home / rel}; run the experiment with --managed alone.",
            )
        return Finished(report.verified, report.files)
    finally:
        ctx.state.close()


def release_job(project: Project, state_path: Path, say: Callable[[str], None], name: str) -> None:
    """Destroy the server of a shard whose results are home (verified gone): its shared connection is released
    first, as the server is going away."""
    ctx = _job_ctx(project, state_path, say)
    try:
        with contextlib.suppress(TetherError):
            resolve(project, name, ctx.state).transport.close()
    finally:
        ctx.state.close()
    retire_job(project, state_path, say, name)


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
