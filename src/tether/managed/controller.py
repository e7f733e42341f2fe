"""The controller of one managed run: ticks, decisions applied in one place, the end of a run."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, Unpack

from tether import cost, notify, rentals, runs, vocab
from tether.context import Ctx
from tether.errors import (
    CheckpointError,
    CommandFailed,
    NoCapacity,
    PolicyRefusal,
    ProviderError,
    TetherError,
)
from tether.hosts import resolve
from tether.ledger import Candidate
from tether.managed.jobs import (
    Acquired,
    _remote_results,
    acquire_job,
    final_job,
    release_job,
    retire_job,
    watching,
)
from tether.managed.local import Together, apply_sync, bring_together, have_args, run_dir, shard_dir
from tether.managed.rules import (
    JOB_OF,
    MAX_PROVISION_ATTEMPTS,
    START_GRACE_S,
    Decision,
    Ending,
    JobKind,
    JobResult,
    Observation,
    Options,
    decide,
    failure_signature,
    on_job,
    retry_delay,
    run_next,
    shard_budget,
)
from tether.managed.views import shard_json
from tether.progress import Count, Money, Step
from tether.providers import Instance, Provider, provider_for
from tether.renting import observe as observe_instance
from tether.renting import rental_cost
from tether.state import ManagedRunRecord, ManagedShardRecord, ShardUpdate
from tether.vocab import Action

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


def job_result(kind: JobKind, fut: Future[Any]) -> JobResult:
    """How a job ended, as the rules read it (an exception becomes the error it says; a bug is reported, never
    left to leave a server unwatched)."""
    try:
        result = fut.result()
    except PolicyRefusal as exc:
        return JobResult(kind, False, f"{exc.message} {exc.hint or ''}".strip(), refused=True)
    except CommandFailed as exc:
        if kind == "acquire" and exc.message.startswith("Run "):
            # The experiment failed at once on its new server: a failure of the experiment, not of the server.
            signature = failure_signature(exc.returncode, vocab.FAILED, exc.output)
            return JobResult(kind, False, exc.message, run_failure=signature, log_tail=exc.output)
        return JobResult(kind, False, exc.message)
    except CheckpointError as exc:
        return JobResult(kind, False, exc.message, permanent=True)
    except TetherError as exc:
        return JobResult(kind, False, exc.message)
    except Exception as exc:
        return JobResult(kind, False, f"{type(exc).__name__}: {exc}")
    if isinstance(result, Acquired):
        return JobResult(kind, True, adopted=result.adopted, server=result.server)
    return JobResult(kind, True)


class Controller:
    """The loop of one managed run (see the package docstring). ``tick()`` is one look at everything: it gathers
    observations, asks :mod:`tether.managed.rules` for a decision per shard, and applies each in :meth:`apply`,
    the one place where records change and actions run. The clock is the context's."""

    def __init__(self, ctx: Ctx, run: ManagedRunRecord, opts: Options) -> None:
        self.ctx = ctx
        self.project = ctx.project
        self.st = ctx.state
        self.id = run.id
        self.opts = opts
        self.exp = ctx.project.experiment(run.experiment)
        self.pool = ThreadPoolExecutor(max_workers=max(2, run.shards), thread_name_prefix="managed")
        self.jobs: dict[int, tuple[JobKind, Future[Any]]] = {}
        self._provider: Provider | None = None
        self._last_sync: float | None = None
        self._said: dict[int, str] = {}
        self._offer_dph: tuple[float, float] | None = None  # (when, cheapest $/hr)

    # ----------------------------------------------------------------------------------------- plumbing
    @property
    def run(self) -> ManagedRunRecord:
        rec = self.st.managed_run(self.id)
        assert rec is not None
        return rec

    def now(self) -> float:
        return self.ctx.now()

    def provider(self) -> Provider:
        if self._provider is None:
            self._provider = provider_for(self.project)
        return self._provider

    def close(self, *, wait: bool = True) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=not wait)
        if self._provider is not None:
            self._provider.close()
            self._provider = None

    def say(self, text: str) -> None:
        self.ctx.say(f"{self.id}: {text}")

    def say_once(self, shard: int, text: str) -> None:
        if self._said.get(shard) != text:
            self._said[shard] = text
            self.say(text)

    def shard(self, i: int) -> ManagedShardRecord:
        return next(s for s in self.st.managed_shards(self.id) if s.shard == i)

    def update(self, i: int, **changes: Unpack[ShardUpdate]) -> ManagedShardRecord:
        return self.st.update_managed_shard(self.id, i, **changes)

    def spent(self) -> float:
        return self.money()[0]

    def money(self) -> tuple[float, float]:
        """What this run's servers have cost so far, and what they burn now ($/hr)."""
        led = cost.ledger(self.st.event_log(), self.now())
        prefix = self.id + "-s"
        mine = [c for name, c in led.by_instance.items() if name.startswith(prefix)]
        return sum(c.total_usd for c in mine), sum(c.burn_dph for c in mine)

    def rented_names(self) -> list[str]:
        prefix = self.id + "-s"
        return [r.name for r in self.st.instances() if r.name.startswith(prefix) and r.provider == rentals.PROVIDER]

    # ----------------------------------------------------------------------------------------- the loop
    def drive(self) -> Outcome:
        """Tick until every shard is final (or the run pauses or is cancelled); then finish."""
        started = time.monotonic()
        interrupted = False
        try:
            while True:
                try:
                    self.tick()
                except _Cancelled:
                    return self.stop_all(started, cancelled=True)
                shards = self.st.managed_shards(self.id)
                nxt = run_next(shards, len(self.jobs), cancel_requested=False)
                if nxt == "finish":
                    return self.finish(started)
                if nxt == "pause":
                    return self.pause(started, shards)
                pending = [f for _kind, f in self.jobs.values()]
                if pending:
                    wait(pending, timeout=self.opts.poll_s, return_when=FIRST_COMPLETED)
                else:
                    time.sleep(self.opts.poll_s)  # the servers work; nothing local to wait on
        except KeyboardInterrupt:
            interrupted = True  # Ctrl-C: no waiting for a job in flight (the CLI edge says what bills)
            raise
        finally:
            self.close(wait=not interrupted)

    def tick(self) -> None:
        """One look at everything: harvest finished jobs, observe servers, decide and act, sync when due."""
        if self.run.cancel_requested:
            raise _Cancelled
        self.harvest()
        observed = self.observe_instances()
        now = self.now()
        for sh in self.st.managed_shards(self.id):
            if sh.shard in self.jobs or sh.status in vocab.SHARD_FINAL or sh.status == vocab.SHARD_PAUSED:
                continue
            if sh.retry_at is not None and now < sh.retry_at:
                continue
            try:
                obs = self.observe(sh, observed, now)
            except _Skip:
                continue
            self.apply(sh, decide(sh, obs, now, self.opts))
        if self._last_sync is None or now - self._last_sync >= self.run.sync_every:
            self._last_sync = now
            self.sync_all()
        spent, burn = self.money()
        self.st.update_managed_run(self.id, cost_usd=spent)
        self.report_progress(spent, burn)

    def report_progress(self, spent: float, burn: float) -> None:
        """The run as a live display shows it (``ctx.report``): money, and each shard's state, server and items."""
        self.ctx.report(Money(spent, burn))
        for sh in self.st.managed_shards(self.id):
            row = f"shard {sh.shard}"
            why = f" ({sh.reason})" if sh.reason and sh.status != vocab.SHARD_RUNNING else ""
            self.ctx.report(Step(row, f"{sh.status} on {sh.server or '-'}{why}".replace("\n", " ")))
            self.ctx.report(Count(row, sh.completed, sh.total))

    def observe(self, sh: ManagedShardRecord, observed: dict[str, Instance] | None, now: float) -> Observation:
        """What the rules need to decide about ``sh`` (the provider's view, one scan of its server when it runs,
        the budget before a rental). Raises _Skip when the shard waits for the next tick."""
        run_id = runs.new_run_id(self.run.experiment) + f"-s{sh.shard}"
        inst = observed.get(sh.server) if observed is not None and sh.server else None
        state = None if sh.own_host or inst is None else inst.state
        obs = Observation(instance=state, provider_asked=observed is not None, run_id=run_id)
        if sh.status == vocab.SHARD_PENDING and not sh.own_host:
            return replace(obs, budget=self.budget_check(sh))
        if sh.status == vocab.SHARD_FINISHING and sh.server is not None:
            last = self.st.last_pull(sh.server)
            home = last is not None and last.verified and last.ts >= (sh.last_seen or 0.0)
            return replace(obs, home=home)
        if sh.status != vocab.SHARD_RUNNING or sh.server is None:
            return obs
        if not sh.own_host and state != "running":
            return obs
        try:
            target = watching(resolve(self.project, sh.server, self.st))
            found = runs.observe(self.st, target).run(sh.run or "")
        except TetherError:
            return obs
        young = False
        if found is None:
            rec = next((r for r in self.st.runs(host=sh.server) if r.id == sh.run), None)
            young = rec is not None and now - rec.started < START_GRACE_S
        return replace(obs, answered=True, run=found, run_young=young)

    def observe_instances(self) -> dict[str, Instance] | None:
        """The provider's view of every server of this run (one call), keyed by server name; None when the
        provider could not be asked."""
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
            self.say_once(-1, f"could not ask the provider for its servers ({exc.message}); retrying.")
            return None
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

    # ----------------------------------------------------------------------------------------- acting
    def apply(self, sh: ManagedShardRecord, decision: Decision) -> None:
        """The one place a decision takes effect: the record first (so a controller killed next is picked up from
        it), then what to say, then the actions (sync and destroy-after-failure here; the rest as jobs)."""
        server = sh.server  # the server the decision is about (a replacement forgets it in the record)
        if decision.update:
            sh = self.update(sh.shard, **decision.update)
        if decision.say:
            if decision.update or decision.actions:
                self.say(decision.say)
            else:
                self.say_once(sh.shard, decision.say)
        if decision.recovery is not None:
            notify.announce_recovery(self.ctx, self.id, sh.shard, server, *decision.recovery)
        for action in decision.actions:
            if action == "sync":
                self.sync_one(sh)
            elif action == "say":
                continue
            elif action == "destroy":
                assert sh.server is not None
                with contextlib.suppress(TetherError):
                    retire_job(self.project, self.st.path, self.ctx.say, sh.server)
            else:
                self.start_job(sh, action)

    def start_job(self, sh: ManagedShardRecord, action: Action) -> None:
        kind, how = JOB_OF[action]
        run = self.run
        args: tuple[Any, ...]
        fn: Callable[..., Any]
        if kind == "acquire":
            fn, args = acquire_job, (run, sh, how)
        elif kind == "pull":
            fn, args = final_job, (run, sh)
        elif kind == "release":
            assert sh.server is not None
            fn, args = release_job, (sh.server,)
        else:
            assert sh.server is not None
            fn, args = retire_job, (sh.server,)
        extra: dict[str, Any] = {"progress": self.ctx.report} if kind in ("acquire", "pull") else {}  # drawn live
        self.jobs[sh.shard] = (kind, self.pool.submit(fn, self.project, self.st.path, self.ctx.say, *args, **extra))

    def harvest(self) -> None:
        for i, (kind, fut) in list(self.jobs.items()):
            if not fut.done():
                continue
            del self.jobs[i]
            self.apply(self.shard(i), on_job(self.shard(i), job_result(kind, fut), self.now()))

    def budget_check(self, sh: ManagedShardRecord) -> str | None:
        """A first look before renting for ``sh`` (the rental itself is committed under the rent lock, at the exact
        offer's billed price): the cheapest offer's billed price (the bid for bid offers) against the one rule,
        counting every rental held or in flight on this machine (this run's siblings, a concurrent ``tether up``)."""
        run = self.run
        policy = self.project.config.policy
        limits = (run.max_usd, policy.max_hourly_usd, policy.max_daily_usd, policy.max_total_usd)
        if all(limit is None for limit in limits):
            return None
        now = self.now()
        if self._offer_dph is None or now - self._offer_dph[0] > 60:
            try:  # the price a rental is billed at, as the rent path reckons it (the bid for bid offers)
                prof = rentals.profile_for(self.project, run.profile or "api")
                offers = rentals.search(self.provider(), prof)
                price_for = rentals.bid_pricing(prof, offers)
                if not offers:
                    raise NoCapacity(f"No offer matches profile {prof.name} now.")
                cheapest = min(rental_cost(o, price_for(o) if price_for else None) for o in offers)
            except ProviderError as exc:
                self._provider_hiccup(sh, exc)
            self._offer_dph = (now, cheapest)
        candidate = Candidate(self._offer_dph[1], "renting the cheapest offer")
        return rentals.commit_refusal(self.project, self.st, "", candidate, shard_budget(run, self.exp, sh.synced))

    def _provider_hiccup(self, sh: ManagedShardRecord, exc: TetherError) -> NoReturn:
        failures = sh.failures + 1
        if failures >= MAX_PROVISION_ATTEMPTS:
            why = Ending.PROVIDER.said(f"{exc.message}, {failures} attempts")
            self.apply(sh, Decision(ShardUpdate(status=vocab.SHARD_PAUSED, reason=why), (), f"shard paused: {why}"))
            raise _Skip
        self.say(f"shard {sh.shard}: {exc.message} Retrying.")
        self.update(sh.shard, failures=failures, retry_at=self.now() + retry_delay(failures))
        raise _Skip

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
        self.update(sh.shard, synced=synced, last_sync=self.now())
        return True

    # ----------------------------------------------------------------------------------------- the end
    def finish(self, started: float) -> Outcome:
        """Every shard is final: destroy what is left (verified), and bring what finished together in the project's
        results folder, whatever each shard ended in."""
        shards = self.st.managed_shards(self.id)
        self.destroy_all()
        failed = [s for s in shards if s.status == vocab.SHARD_FAILED]
        reasons = [f"shard {s.shard}: {s.reason}" for s in failed]
        try:
            together = self.bring_together()
        except TetherError as exc:
            reasons.append(exc.message)
            return self.close_run(vocab.MANAGED_FAILED, "; ".join(reasons), str(run_dir(self.id)), started)
        if together.complete and not failed:
            return self.close_run(vocab.MANAGED_COMPLETED, None, str(together.path), started)
        if not failed:
            reasons.append(Ending.ITEMS_FAILED.said(together.summary))
        else:
            reasons.append(together.summary)
        self.say(together.summary + ".")
        return self.close_run(vocab.MANAGED_FAILED, "; ".join(reasons), str(together.path), started)

    def bring_together(self) -> Together:
        rel = self.exp.results.strip("/")
        folders = [shard_dir(self.id, i) / rel for i in range(self.run.shards)]
        sharded = self.run.shards > 1 and self.run.mode == "journal"
        together = bring_together(self.project.root / rel, folders, self.id, sharded=sharded)
        if together.complete and sharded:
            self.say(f"merged {self.run.shards} shards into {together.path}.")
        return together

    def close_run(
        self, status: vocab.ManagedStatus, reason: str | None, results: str | None, started: float
    ) -> Outcome:
        spent = self.spent()
        rec = self.st.update_managed_run(
            self.id,
            status=status,
            reason=reason,
            results_path=results,
            ended=self.now(),
            cost_usd=spent,
            controller_pid=None,
        )
        notify.announce_managed(self.ctx, rec.id, rec.experiment, status, reason, spent)
        return Outcome(
            id=rec.id,
            experiment=rec.experiment,
            status=status,
            reason=reason,
            results_path=results,
            cost_usd=spent,
            wall_s=(rec.ended or self.now()) - rec.started,
            shards=[shard_json(s) for s in self.st.managed_shards(self.id)],
        )

    def pause(self, started: float, shards: Sequence[ManagedShardRecord]) -> Outcome:
        """Nothing runs any more: nothing may bill either (a paused shard's server is destroyed, verified; what it
        journaled is home, and the same command resumes from it)."""
        why = "; ".join(f"shard {s.shard}: {s.reason}" for s in shards if s.status == vocab.SHARD_PAUSED)
        with contextlib.suppress(TetherError):
            self.destroy_all()
        rec = self.st.update_managed_run(
            self.id, status=vocab.MANAGED_PAUSED, reason=why, controller_pid=None, cost_usd=self.spent()
        )
        notify.announce_managed(self.ctx, rec.id, rec.experiment, rec.status, why, rec.cost_usd or 0.0)
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
        try:
            together = self.bring_together()
        except TetherError:
            return self.close_run(vocab.MANAGED_CANCELLED, "cancelled", str(run_dir(self.id)), started)
        return self.close_run(vocab.MANAGED_CANCELLED, f"cancelled; {together.summary}", str(together.path), started)


class _Skip(Exception):
    """This shard waits for the next tick (a provider hiccup was recorded)."""
