"""The controller of one managed run: ticks, decisions applied in one place, the end of a run."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from tether import cost, rentals, runs, vocab
from tether.checkpoint import shard as shard_lib
from tether.context import Ctx
from tether.errors import (
    CheckpointError,
    CommandFailed,
    PolicyRefusal,
    ProviderError,
    TetherError,
)
from tether.hosts import resolve
from tether.managed.jobs import Acquired, _remote_results, acquire_job, final_job, retire_job, watching
from tether.managed.local import _place, apply_sync, have_args, run_dir, shard_dir
from tether.managed.rules import (
    MAX_FINAL_ATTEMPTS,
    MAX_PROVISION_ATTEMPTS,
    RENTAL_OVERHEAD_S,
    START_GRACE_S,
    Action,
    Options,
    budget_refusal,
    failure_signature,
    recovery_action,
    server_name,
    shard_seconds_left,
)
from tether.managed.views import shard_json
from tether.providers import Instance, Provider, provider_for
from tether.renting import observe as observe_instance
from tether.state import ManagedRunRecord, ManagedShardRecord

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
            shards=[shard_json(s) for s in self.st.managed_shards(self.id)],
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
            [shard_json(s) for s in self.st.managed_shards(self.id)],
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
