"""Creating, picking up, detaching, finding and cancelling managed runs; what code can be sharded."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tether import vocab
from tether.config import ExperimentConfig, Project
from tether.context import Ctx
from tether.errors import (
    ConfigError,
    PolicyRefusal,
    TetherError,
)
from tether.managed.controller import Controller, Outcome
from tether.managed.local import controller_lock, seed_from_kept, shard_dir
from tether.managed.rules import Options, new_id, resume_paused
from tether.managed.views import shard_json
from tether.paths import private_dir, tether_home
from tether.state import ManagedRunRecord, ManagedShardRecord, State

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
                inst = st.instance(sh.server) if sh.server else None
                exists = inst is not None and inst.state != "gone"
                st.update_managed_shard(found.id, sh.shard, **resume_paused(sh, exists))
        ctx.say(f"Picking up managed run {rec.id} ({rec.shards} shards).")
        return rec
    mode = _validate(ctx, experiment, opts)
    profile = opts.profile or _plan_profile(ctx, experiment)
    now = ctx.now()
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
    if mode == "journal":
        rel = ctx.project.experiment(experiment).results.strip("/")
        copies = [shard_dir(rec.id, i) / rel for i in range(opts.shards)]
        seeded = seed_from_kept(ctx.project.root / rel, copies, opts.shards)
        for i, count in enumerate(seeded):
            if count:
                st.update_managed_shard(rec.id, i, synced=count)
        if any(seeded):
            ctx.say(f"Resuming from the {sum(seeded)} results kept in {ctx.project.root / rel} by an earlier run.")
    return rec


def _plan_profile(ctx: Ctx, experiment: str) -> str:
    from tether import plan

    entry = plan.plan_experiment(experiment, ctx.project.experiment(experiment), ctx.project.config.policy)
    return entry.profile or "api"


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
            [shard_json(s) for s in ctx.state.managed_shards(rec.id)],
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
                (now.ended or ctx.now()) - now.started,
                [shard_json(s) for s in ctx.state.managed_shards(now.id)],
            )
        time.sleep(0.5)  # the controller (another process) is stopping the shards
    raise TetherError(f"The controller of {rec.id} did not stop it within {wait_s:g} s.", "Run `tether cancel` again.")
